"""The HDF5 run format (v1): the only module that imports h5py.

A run file holds the config, the split and weights, metrics, parameter checkpoints and
keyframes (Adam state), laid out as the README's "Run files" section describes.

Crash safety. The writer never modifies the file between commits: HDF5 writes go through
`journal.JournaledFile`, and a commit (at every keyframe) is atomic. So a run killed at
any moment leaves a file that opens, holding everything up to its last keyframe.

    >>> with open_run("data/runs/run.h5") as run:
    ...     run.metrics["test_acc"], run.checkpoint_epochs, run.params_at(10_000)
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from . import __version__
from .config import Config, from_dict
from .data import Split
from .journal import JournaledFile, RunFileError, _journal_path, _try_lock, recover, \
    writer_active
from .model import MLP, build_model, param_shapes
from .optim import needs_max_moment
from .train import METRICS, OPTIONAL_METRICS, Callback, Snapshot, Trainer, Window

FORMAT = "zgdyn.run"
FORMAT_VERSION = 1


# -- writing ----------------------------------------------------------------------------------


def _utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _ext_dataset(group: h5py.Group, name: str, shape: tuple[int, ...], dtype: Any, *,
                 checksum: bool = False) -> None:
    """An empty dataset that grows along axis 0, chunked one record (or 1024 scalars) a chunk."""
    chunk = (1, *shape) if shape else (1024,)
    group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                         chunks=chunk, fletcher32=checksum)


def _append(ds: h5py.Dataset, value: Any) -> None:
    n = ds.shape[0]
    ds.resize(n + 1, axis=0)
    ds[n] = value


def _extend(ds: h5py.Dataset, values: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + len(values), axis=0)
    ds[n:] = values


def _metric_datasets(group: h5py.Group) -> None:
    """One empty, growing dataset per metric in `group`."""
    for name in METRICS:
        _ext_dataset(group, name, (), np.int64 if name in ("epoch", "phase") else np.float64)


# one row per collapse window: integer columns, then float columns
WINDOW_INDEX = ("trigger", "start", "end", "first_record", "n_records")
WINDOW_LOSSES = ("base_loss", "trigger_loss")
WINDOW_FIELDS = WINDOW_INDEX + WINDOW_LOSSES


def _moments(config: Config) -> tuple[str, ...]:
    """The optimizer-state groups of a run's keyframes: Adam's (or SGD's) two moments, and
    AMSGrad's running maximum of v if any phase uses it (zeros before it is in use)."""
    extra = ("max_exp_avg_sq",) if any(needs_max_moment(o) for o in config.optimizers) else ()
    return ("exp_avg", "exp_avg_sq", *extra)


def _create_skeleton(path: Path, config: Config, trainer: Trainer) -> None:
    """Write a new run file with its config, split, weights and empty datasets, atomically."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    shapes = param_shapes(config.data.p, config.model.hidden)
    np_dtype = np.float32 if config.model.dtype == "float32" else np.float64
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({
                "format": FORMAT, "format_version": FORMAT_VERSION,
                "config": config.to_json(), "zgdyn_version": __version__,
                "torch_version": str(torch.__version__), "created": _utc_now(),
                "device": config.device, "threads": torch.get_num_threads(),
                "status": "running", "epochs_done": -1, "switch_epoch": -1,
                "n_params": int(sum(int(np.prod(s)) for s in shapes.values())),
            })
            f.create_dataset("split/train_idx", data=trainer.split.train_idx)
            f.create_dataset("split/test_idx", data=trainer.split.test_idx)
            for i, w in enumerate(trainer.phase_weights):
                f.create_dataset(f"weights/phase{i}", data=w.numpy())
                f["weights"].attrs[f"phase{i}_zipf_s"] = trainer.phase_s[i]
            _metric_datasets(f.require_group("metrics"))
            ck = f.create_group("checkpoints")
            _ext_dataset(ck, "epoch", (), np.int64)
            kf = f.create_group("keyframes")
            for name in ("epoch", "step", "phase", "switch_epoch"):
                _ext_dataset(kf, name, (), np.int64)
            for name, shape in shapes.items():
                _ext_dataset(ck, name, shape, np_dtype, checksum=True)
                for moment in _moments(config):
                    _ext_dataset(kf.require_group(moment), name, shape, np_dtype,
                                 checksum=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _Writable:
    """A run file opened for writing through a `JournaledFile` (holding the write lock)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RunFileError(f"{self.path}: no such run file")
        self.jfile = JournaledFile(self.path)  # rolls back an interrupted commit first
        h5 = None
        try:
            _check_hdf5(self.path)
            h5 = h5py.File(self.jfile, "r+")
            _validate(h5, self.path)
            self.h5 = h5
        except BaseException as e:
            if h5 is not None:  # whatever HDF5 writes on close goes nowhere
                h5.close()
            self.jfile.discard()
            self.jfile.close()
            if isinstance(e, OSError):
                raise RunFileError(f"{self.path}: cannot be opened as a zgdyn run ({e})") \
                    from None
            raise
        self._closed = False

    def commit(self) -> None:
        """Make every write so far durable, atomically; a failed write keeps the last commit."""
        try:
            self.h5.flush()
            self.jfile.commit()
        except OSError as e:
            raise RunFileError(f"{self.path}: writing failed ({e.strerror or e}); the file keeps "
                               "everything up to its last commit, and zgdyn train --resume "
                               "continues from there") from None

    def close(self, *, commit: bool = False) -> None:
        """Close the file; without `commit`, everything since the last commit is dropped."""
        if self._closed:
            return
        self._closed = True
        try:
            self.h5.close()
            if commit:
                self.jfile.commit()
        except OSError as e:
            if commit:
                raise RunFileError(f"{self.path}: writing failed ({e.strerror or e}); the file "
                                   "keeps everything up to its last commit") from None
        finally:
            self.jfile.discard()
            self.jfile.close()


class RunWriter(_Writable, Callback):
    """Records a Trainer's events into a run file; commits at every keyframe.

    Create with `RunWriter.create` (new file) or `RunWriter.resume` (existing file).
    """

    @classmethod
    def create(cls, path: str | Path, config: Config, trainer: Trainer, *,
               force: bool = False) -> RunWriter:
        path = Path(path)
        if path.exists() and not force:
            raise RunFileError(f"{path}: already exists; pass --force to replace it (zgdyn "
                               "train: or --resume to continue it)")
        if path.exists():  # refuse to replace a file another process is writing
            with open(path, "rb") as fh:
                _try_lock(fh.fileno(), path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_skeleton(path, config, trainer)
        jpath = _journal_path(path)
        if jpath.exists():  # a stale journal of the replaced file
            jpath.unlink()
        return cls(path)

    @classmethod
    def resume(cls, path: str | Path) -> RunWriter:
        path = Path(path)
        if not path.exists():
            raise RunFileError(f"{path}: no such run file to resume")
        return cls(path)

    # state read back for resuming
    @property
    def config(self) -> Config:
        return _config_of(self.h5, self.path)

    def last_snapshot(self, device: str = "cpu") -> Snapshot | None:
        return _snapshot(self.h5, -1, device) if len(self.h5["keyframes/epoch"]) else None

    def snapshot_before(self, epoch: int, device: str = "cpu") -> Snapshot | None:
        """The last keyframe at or before `epoch` (None if there is none)."""
        rows = np.flatnonzero(self.h5["keyframes/epoch"][:] <= epoch)
        return _snapshot(self.h5, int(rows[-1]), device) if len(rows) else None

    @property
    def watch_state(self) -> dict[str, float] | None:
        """The collapse detector's state at the last keyframe; its count of collapses is
        the number of windows in files from before it was stored."""
        raw = self.h5.attrs.get("watch_state")
        if raw is None:
            return None
        state = json.loads(raw)
        if "fired" not in state:
            state["fired"] = len(self.h5["windows/trigger"]) if "windows" in self.h5 else 0
        return state

    def set_config(self, config: Config, *, at_epoch: int) -> None:
        """Store a changed config, keeping the history of changes in attribute `history`."""
        old = json.loads(self.h5.attrs["config"])
        new = config.to_dict()
        history = json.loads(self.h5.attrs.get("history", "[]"))
        history.append({"epoch": at_epoch, "from": old, "to": json.loads(json.dumps(new))})
        self.h5.attrs["history"] = json.dumps(history)
        self.h5.attrs["config"] = config.to_json()

    @property
    def status(self) -> str:
        return str(self.h5.attrs["status"])

    def mark(self, status: str, **attrs: Any) -> None:
        """Set the run's status (and any attributes) and commit."""
        self.h5.attrs["status"] = status
        self.h5.attrs.update(attrs)
        self.commit()

    # -- callback events ---------------------------------------------------------------

    def on_start(self, trainer: Trainer) -> None:
        self.h5.attrs["status"] = "running"

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        g = self.h5["metrics"]
        for name in METRICS:
            if name in g:  # a file from an earlier version may lack an optional metric
                _append(g[name], metrics[name])

    def on_switch(self, trainer: Trainer) -> None:
        self.h5.attrs["switch_epoch"] = trainer.switch_epoch

    def on_checkpoint(self, trainer: Trainer) -> None:
        g = self.h5["checkpoints"]
        if len(g["epoch"]) and g["epoch"][-1] == trainer.epoch:
            return
        _append(g["epoch"], trainer.epoch)
        for name, value in trainer.params.items():
            _append(g[name], value.detach().cpu().numpy())

    def on_keyframe(self, trainer: Trainer) -> None:
        g = self.h5["keyframes"]
        snap = trainer.snapshot()
        for name, value in (("epoch", snap.epoch), ("step", snap.step), ("phase", snap.phase),
                            ("switch_epoch", snap.switch_epoch)):
            _append(g[name], value)
        for moment in ("exp_avg", "exp_avg_sq"):
            for name, value in getattr(snap, moment).items():
                _append(g[moment][name], value.cpu().numpy())
        if "max_exp_avg_sq" in g:
            for name, value in snap.exp_avg_sq.items():
                held = snap.max_exp_avg_sq
                _append(g["max_exp_avg_sq"][name], (torch.zeros_like(value) if held is None
                                                    else held[name]).cpu().numpy())
        self.h5.attrs["epochs_done"] = trainer.epoch
        if trainer.watch is not None:
            self.h5.attrs["watch_state"] = json.dumps(trainer.watch.state())
        self.commit()

    def on_window(self, trainer: Trainer, window: Window) -> None:
        """Append a collapse window's records (committed with the keyframe that follows)."""
        if "windows" not in self.h5:
            g = self.h5.create_group("windows")
            for name in (*WINDOW_INDEX, "epoch"):
                _ext_dataset(g, name, (), np.int64)
            for name in WINDOW_LOSSES:
                _ext_dataset(g, name, (), np.float64)
            _metric_datasets(g.require_group("metrics"))
            ck = self.h5["checkpoints"]
            for name in trainer.params:
                _ext_dataset(g.require_group("params"), name, ck[name].shape[1:],
                             ck[name].dtype, checksum=True)
        g = self.h5["windows"]
        first = len(g["epoch"])
        for name, value in (("trigger", window.trigger), ("start", window.epochs[0]),
                            ("end", window.epochs[-1]), ("first_record", first),
                            ("n_records", len(window.epochs)),
                            ("base_loss", window.base_loss),
                            ("trigger_loss", window.trigger_loss)):
            _append(g[name], value)
        _extend(g["epoch"], np.asarray(window.epochs, np.int64))
        for name in METRICS:
            _extend(g["metrics"][name], np.array([m[name] for m in window.metrics]))
        views = trainer.step.views
        for name in trainer.params:
            stack = torch.stack([views(th)[name] for th in window.thetas])
            _extend(g["params"][name], stack.cpu().numpy())

    def on_end(self, trainer: Trainer) -> None:
        self.h5.attrs["status"] = "interrupted" if trainer.stopped_early else "complete"
        self.commit()

# -- analysis results -----------------------------------------------------------------------


class AnalysisWriter(_Writable):
    """Writes one subgroup `analysis/<group>` of a run file; crash-safe, commits as it goes.

    Holds the run's write lock, so it refuses a file that is training.
    """

    def __init__(self, path: str | Path, group: str) -> None:
        super().__init__(path)
        self.name = f"analysis/{group}"

    def reader(self) -> Run:
        """The run, read through this writer's handle (sees its uncommitted writes)."""
        return Run(self.path, _h5=self.h5)

    @property
    def settings(self) -> dict[str, Any] | None:
        g = self.h5.get(self.name)
        return None if g is None else json.loads(g.attrs["settings"])

    def done_epochs(self) -> np.ndarray:
        g = self.h5.get(self.name)
        return np.zeros(0, np.int64) if g is None or "epoch" not in g else g["epoch"][:]

    def reset(self, settings: dict[str, Any]) -> None:
        """Drop any earlier results of this group and start afresh with `settings`."""
        if self.name in self.h5:
            del self.h5[self.name]
        self.h5.create_group(self.name).attrs["settings"] = json.dumps(settings)

    def append(self, row: dict[str, Any]) -> None:
        """Append one record: {name: scalar or array}; datasets are created on first use."""
        g = self.h5[self.name]
        for name, value in row.items():
            value = np.asarray(value)
            if name not in g:
                _ext_dataset(g, name, value.shape, value.dtype)
            _append(g[name], value)

    def put(self, name: str, value: Any) -> None:
        """Replace dataset `name` (a path below the group) with `value`."""
        full = f"{self.name}/{name}"
        if full in self.h5:
            del self.h5[full]
        self.h5.create_dataset(full, data=np.asarray(value))

    def put_attrs(self, attrs: dict[str, Any]) -> None:
        self.h5[self.name].attrs.update({k: json.dumps(v) for k, v in attrs.items()})

# -- reading ----------------------------------------------------------------------------------


def _check_hdf5(path: Path) -> None:
    if not path.is_file():
        raise RunFileError(f"{path}: no such run file")
    if not h5py.is_hdf5(path):
        raise RunFileError(f"{path}: not an HDF5 file, so not a zgdyn run")


def _validate(f: h5py.File, path: Path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise RunFileError(f"{path}: an HDF5 file but not a zgdyn run (no format={FORMAT!r} "
                           "attribute)")
    version = f.attrs.get("format_version")
    if version != FORMAT_VERSION:
        raise RunFileError(f"{path}: run format version {version}, this zgdyn reads version "
                           f"{FORMAT_VERSION}")
    for group in ("split", "metrics", "checkpoints", "keyframes"):
        if group not in f:
            raise RunFileError(f"{path}: damaged run file, group '{group}' is missing")


def _config_of(f: h5py.File, path: Path) -> Config:
    try:
        return from_dict(json.loads(f.attrs["config"]))
    except (KeyError, ValueError, TypeError) as e:
        raise RunFileError(f"{path}: damaged run file, its config cannot be read ({e})") from None


def _snapshot(f: h5py.File, row: int, device: str) -> Snapshot:
    kf = f["keyframes"]
    epoch = int(kf["epoch"][row])
    ck_epochs = f["checkpoints/epoch"][:]
    ck_row = int(np.flatnonzero(ck_epochs == epoch)[-1])
    as_t = lambda ds, r: torch.from_numpy(np.asarray(ds[r])).to(device)
    cfg = json.loads(f.attrs["config"])
    names = list(param_shapes(cfg["data"]["p"], tuple(cfg["model"]["hidden"])))  # layer order
    phase = int(kf["phase"][row])
    optim = _config_of(f, Path(f.filename)).phase_optim(phase)
    return Snapshot(
        epoch=epoch,
        params={n: as_t(f["checkpoints"][n], ck_row) for n in names},
        exp_avg={n: as_t(kf["exp_avg"][n], row) for n in names},
        exp_avg_sq={n: as_t(kf["exp_avg_sq"][n], row) for n in names},
        step=int(kf["step"][row]), phase=phase,
        switch_epoch=int(kf["switch_epoch"][row]),
        max_exp_avg_sq={n: as_t(kf["max_exp_avg_sq"][n], row) for n in names}
        if needs_max_moment(optim.name) and "max_exp_avg_sq" in kf else None,
    )


class Run:
    """A run file opened for reading. Use as a context manager, or call `close()`."""

    def __init__(self, path: str | Path, *, _h5: h5py.File | None = None) -> None:
        self.path = Path(path)
        self._owns = _h5 is None
        self.h5 = self._open() if _h5 is None else _h5
        try:
            _validate(self.h5, self.path)
            self.config = _config_of(self.h5, self.path)
            self.metrics: dict[str, np.ndarray] = {k: self.h5["metrics"][k][:]
                                                   for k in self.h5["metrics"]}
            self.checkpoint_epochs: np.ndarray = self.h5["checkpoints/epoch"][:]
            self.keyframe_epochs: np.ndarray = self.h5["keyframes/epoch"][:]
            w = self.h5.get("windows")
            # one row per collapse window (WINDOW_FIELDS), and the epoch of every window record
            self.windows: dict[str, np.ndarray] = {
                k: w[k][:] if w is not None else np.zeros(0, np.int64) for k in WINDOW_FIELDS}
            self.window_epochs: np.ndarray = (w["epoch"][:] if w is not None
                                              else np.zeros(0, np.int64))
        except BaseException:
            self.close()
            raise

    def _open(self) -> h5py.File:
        recover(self.path)  # before looking at the file: it may be mid-commit
        _check_hdf5(self.path)
        try:
            return h5py.File(self.path, "r", locking=False)
        except OSError as e:
            raise RunFileError(f"{self.path}: cannot be opened ({e})") from None

    def _read(self, fn: Callable[[], Any]) -> Any:
        """fn(), read again from a freshly opened file if a writer committed under us.

        HDF5 caches metadata, so a handle held across another process's commit can find
        addresses past the end of the file it knows; records are only ever appended, so a
        fresh handle reads the same rows. A second failure is real (checksum, I/O).
        """
        try:
            return fn()
        except OSError:
            if not (self._owns and writer_active(self.path)):
                raise
            self.h5.close()
            self.h5 = self._open()
            return fn()

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns:
            self.h5.close()

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: (v.item() if isinstance(v, np.generic) else v)
                for k, v in self.h5.attrs.items()}

    @property
    def split(self) -> Split:
        return Split(p=self.config.data.p, train_idx=self.h5["split/train_idx"][:],
                     test_idx=self.h5["split/test_idx"][:])

    @property
    def param_epochs(self) -> np.ndarray:
        """Every epoch with stored parameters: checkpoints and window records, sorted."""
        return np.union1d(self.checkpoint_epochs, self.window_epochs)

    def _ckpt_row(self, epoch: int) -> tuple[str, int]:
        rows = np.flatnonzero(self.checkpoint_epochs == epoch)
        if len(rows):
            return "checkpoints", int(rows[-1])
        rows = np.flatnonzero(self.window_epochs == epoch)
        if len(rows):
            return "windows/params", int(rows[-1])
        have = self.param_epochs
        near = have[np.argsort(np.abs(have - epoch))[:3]]
        raise RunFileError(f"{self.path}: no checkpoint at epoch {epoch}; nearest: "
                           f"{', '.join(str(int(e)) for e in sorted(near)) or 'none'}")

    def params_at(self, epoch: int, *, device: str = "cpu") -> dict[str, Tensor]:
        """Named parameters at `epoch`: a checkpoint, or a record of a collapse window."""
        group, row = self._ckpt_row(epoch)
        shapes = param_shapes(self.config.data.p, self.config.model.hidden)
        try:
            return self._read(lambda: {n: torch.from_numpy(self.h5[group][n][row])
                                       .to(device) for n in shapes})
        except OSError as e:
            raise RunFileError(f"{self.path}: checkpoint at epoch {epoch} is corrupt ({e})") \
                from None

    def model_at(self, epoch: int, *, device: str = "cpu") -> MLP:
        """The MLP with the parameters of checkpoint `epoch`."""
        m = self.config.model
        model = build_model(self.config.data.p, m.hidden, init=m.init, seed=0, dtype=m.dtype,
                            device=device)
        params = self.params_at(epoch, device=device)
        with torch.no_grad():
            for name, t in model.named_parameters():
                t.copy_(params[name])
        return model

    def dense_metrics(self) -> dict[str, np.ndarray]:
        """The evaluations merged with every collapse window's per-epoch metrics, by epoch."""
        w = self.h5.get("windows/metrics")
        if w is None or not len(self.window_epochs):
            return dict(self.metrics)
        merged = {k: np.concatenate([self.metrics[k], w[k][:]]) for k in self.metrics if k in w}
        _, first = np.unique(merged["epoch"], return_index=True)
        return {k: v[first] for k, v in merged.items()}

    def checkpoints(self, *, device: str = "cpu") -> Iterator[tuple[int, dict[str, Tensor]]]:
        """(epoch, named parameters) for every checkpoint, in order."""
        for e in self.checkpoint_epochs:
            yield int(e), self.params_at(int(e), device=device)

    def snapshot_at(self, epoch: int, *, device: str = "cpu") -> Snapshot:
        """The full training state (parameters and Adam state) at keyframe `epoch`."""
        rows = np.flatnonzero(self.keyframe_epochs == epoch)
        if not len(rows):
            raise RunFileError(f"{self.path}: no keyframe at epoch {epoch}; keyframes: "
                               f"{', '.join(str(int(e)) for e in self.keyframe_epochs[-5:])}")
        try:
            return self._read(lambda: _snapshot(self.h5, int(rows[-1]), device))
        except OSError as e:
            raise RunFileError(f"{self.path}: keyframe at epoch {epoch} is corrupt ({e})") \
                from None

    def analysis(self, group: str) -> dict[str, Any] | None:
        """{dataset path: array} of `analysis/<group>`, plus its attributes under "attrs"."""
        g = self.h5.get(f"analysis/{group}")
        if g is None:
            return None
        out: dict[str, Any] = {"attrs": {k: json.loads(v) for k, v in g.attrs.items()}}
        g.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) else None)
        return out

    def summary(self) -> dict[str, Any]:
        """What `zgdyn info` shows."""
        m, a = self.metrics, self.attrs
        test = m.get("test_acc", np.array([]))
        above = np.flatnonzero(test >= 0.95)
        last = {k: float(v[-1]) for k, v in m.items() if len(v)}
        return {
            "path": str(self.path),
            "status": a["status"],
            "format_version": a["format_version"],
            "config": self.config.to_dict(),
            "epochs_done": int(a["epochs_done"]),
            "switch_epoch": None if a["switch_epoch"] < 0 else int(a["switch_epoch"]),
            "n_params": int(a["n_params"]),
            "n_evals": int(len(test)),
            "n_checkpoints": int(len(self.checkpoint_epochs)),
            "n_keyframes": int(len(self.keyframe_epochs)),
            "n_windows": int(len(self.windows["trigger"])),
            "n_window_records": int(len(self.window_epochs)),
            "window_triggers": [int(e) for e in self.windows["trigger"]],
            "first_epoch_test_acc_95": int(m["epoch"][above[0]]) if len(above) else None,
            "frac_evals_test_acc_95": float(len(above) / len(test)) if len(test) else None,
            "final": {k: last.get(k) for k in ("epoch", "train_loss", "train_acc", "test_loss",
                                               "test_acc")},
            "file_bytes": self.path.stat().st_size,
            "created": a["created"], "zgdyn_version": a["zgdyn_version"],
            "torch_version": a["torch_version"], "threads": int(a["threads"]),
        }


def verify_run(path: str | Path) -> dict[str, Any]:
    """Check a run file's integrity: format, groups, consistent record counts, and every
    checksummed record readable. Returns {"path", "ok", "problems": [...], "checked": {...}}.

    Never raises for a damaged file (a missing one or a non-HDF5 one is a RunFileError).
    """
    path = Path(path)
    rolled_back = recover(path)  # before looking at the file: it may be mid-commit
    _check_hdf5(path)
    problems: list[str] = []
    checked = {"checkpoints": 0, "keyframes": 0, "datasets": 0}
    try:
        f = h5py.File(path, "r", locking=False)
    except OSError as e:
        return {"path": str(path), "ok": False, "rolled_back": rolled_back,
                "problems": [f"cannot be opened: {e}"], "checked": checked}
    with f:
        try:
            _validate(f, path)
            cfg = _config_of(f, path)
        except RunFileError as e:
            return {"path": str(path), "ok": False, "rolled_back": rolled_back,
                    "problems": [str(e).split(": ", 1)[1]], "checked": checked}
        shapes = param_shapes(cfg.data.p, cfg.model.hidden)

        def rows(name: str) -> int | None:
            try:
                return int(f[name].shape[0])
            except (KeyError, OSError) as e:
                problems.append(f"{name}: missing or unreadable ({e})")
                return None

        def read_all(name: str, n: int) -> None:
            for i in range(n):
                try:
                    f[name][i]
                except OSError as e:
                    problems.append(f"{name}[{i}]: unreadable, checksum or I/O error ({e})")
            checked["datasets"] += 1

        n_eval = {m: rows(f"metrics/{m}") for m in METRICS
                  if m not in OPTIONAL_METRICS or f"metrics/{m}" in f}
        if len(set(n_eval.values())) > 1:
            problems.append(f"metrics: datasets of different lengths {n_eval}")
        n_ck = rows("checkpoints/epoch")
        n_kf = rows("keyframes/epoch")
        for name, shape in shapes.items():
            for group, n in (("checkpoints", n_ck),
                             *((f"keyframes/{mo}", n_kf) for mo in _moments(cfg))):
                ds = f"{group}/{name}"
                got = rows(ds)
                if got is None or n is None:
                    continue
                if got != n:
                    problems.append(f"{ds}: {got} records, expected {n}")
                elif f[ds].shape[1:] != shape:
                    problems.append(f"{ds}: shape {f[ds].shape[1:]}, expected {shape}")
                else:
                    read_all(ds, n)
        if "windows" in f:
            n_rec = rows("windows/epoch")
            n_win = rows("windows/trigger")
            for name in WINDOW_FIELDS:
                if rows(f"windows/{name}") != n_win:
                    problems.append(f"windows/{name}: not one record per window")
            for name in (*[f"metrics/{m}" for m in METRICS],
                         *[f"params/{n}" for n in shapes]):
                got = rows(f"windows/{name}")
                if got is not None and n_rec is not None and got != n_rec:
                    problems.append(f"windows/{name}: {got} records, expected {n_rec}")
                elif name.startswith("params/") and got:
                    read_all(f"windows/{name}", got)
            if n_win and n_rec is not None and \
                    int(f["windows/n_records"][:].sum()) != n_rec:
                problems.append("windows: the index does not account for every record")
            checked["window_records"] = n_rec or 0
        if n_ck:
            checked["checkpoints"] = n_ck
        if n_kf:
            checked["keyframes"] = n_kf
            ck = set(f["checkpoints/epoch"][:].tolist()) if n_ck else set()
            missing = [e for e in f["keyframes/epoch"][:].tolist() if e not in ck]
            if missing:
                problems.append(f"keyframes at epochs {missing[:5]} have no checkpoint")
            done = int(f.attrs.get("epochs_done", -1))
            if int(f["keyframes/epoch"][-1]) != done:
                problems.append(f"epochs_done={done} but the last keyframe is at epoch "
                                f"{int(f['keyframes/epoch'][-1])}")
    return {"path": str(path), "ok": not problems, "rolled_back": rolled_back,
            "problems": problems, "checked": checked}


def open_run(path: str | Path) -> Run:
    """Open a run file for reading (rolls back an interrupted commit first)."""
    return Run(path)
