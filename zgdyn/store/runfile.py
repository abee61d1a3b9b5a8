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
import errno
import json
import os
import secrets
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from .. import __version__
from ..core.config import Config, from_dict
from ..core.data import Split
from .integrity import ATTRS_CRC, HDF5_ERRORS, attrs_checksum, check_attrs, check_layout, \
    damaged, moment_groups, parse_watch_state, verify
from .journal import JournaledFile, ReadOnlyFile, RunFileError, _check_journal_path, \
    _journal_path, _try_lock, lock_shared, open_for_reading, stamp, unlock
from .journal import recover, writer_active  # noqa: F401 (part of this module's interface)
from ..core.model import MLP, build_model, param_shapes
from ..core.optim import needs_max_moment
from ..core.train import METRICS, Callback, Snapshot, Trainer, Window

FORMAT = "zgdyn.run"
FORMAT_VERSION = 1
# HDF5's own formats for what zgdyn writes: superblock, object headers and chunk indexes
# carry checksums (HDF5 >= 1.10 reads them), so a flipped bit there is an error, not a
# silent change; objects of files written before keep their older, unchecked formats
LIBVER = ("v110", "latest")


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


def _create_skeleton(path: Path, config: Config, trainer: Trainer, *, replace: bool) -> int:
    """Write a new run file with its config, split, weights and empty datasets, atomically;
    returns a descriptor of it that holds the write lock (see `_publish`)."""
    tmp = path.with_name(f".zgdyn-{os.getpid()}-{secrets.token_hex(4)}.tmp")
    shapes = param_shapes(config.data.p, config.model.hidden)
    np_dtype = np.float32 if config.model.dtype == "float32" else np.float64
    try:
        with h5py.File(tmp, "w", libver=LIBVER) as f:
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
                for moment in moment_groups(config):
                    _ext_dataset(kf.require_group(moment), name, shape, np_dtype,
                                 checksum=True)
            f.attrs[ATTRS_CRC] = attrs_checksum(f)
        return _publish(tmp, path, replace=replace)
    finally:
        if tmp.exists():
            tmp.unlink()


def _publish(tmp: Path, path: Path, *, replace: bool) -> int:
    """Give the finished file `tmp` the name `path`, locked before anyone can see it.

    Without `replace`, exclusively (a hard link fails if the name exists), so of several
    processes creating one file, exactly one wins; with `replace`, refusing a file that is
    being written. Returns the locked descriptor."""
    fd = os.open(tmp, os.O_RDWR)
    try:
        _try_lock(fd, path)  # a fresh inode: nobody else holds it
        os.fsync(fd)
        if replace:
            _refuse_if_written(path)
            os.replace(tmp, path)
        else:
            _link_exclusively(tmp, path)
        if stamp(path)[:2] != stamp(fd)[:2]:
            raise RunFileError(f"{path}: was replaced by another process while this one "
                               "created it")
        if _check_journal_path(path, _journal_path(path)) is not None:
            _journal_path(path).unlink()  # a journal of an earlier file of this name
        return fd
    except BaseException:
        os.close(fd)
        raise


def _exists_error(path: Path) -> RunFileError:
    return RunFileError(f"{path}: already exists; pass --force to replace it (zgdyn "
                        "train: or --resume to continue it)")


def _link_exclusively(tmp: Path, path: Path) -> None:
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _exists_error(path) from None
    except OSError as e:  # a file system without hard links: claim the name first
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            raise _exists_error(path) from None
        os.replace(tmp, path)


def _refuse_if_written(path: Path) -> None:
    """Refuse to replace a file that another process is writing."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return
    try:
        _try_lock(fd, path)
    finally:
        os.close(fd)


def _reason(e: OSError) -> str:
    """The cause of an OSError in a few words (h5py's messages carry it inside)."""
    text = str(e)
    if "error message = '" in text:
        return text.split("error message = '", 1)[1].split("'", 1)[0]
    return e.strerror or text


class _Writable:
    """A run file opened for writing through a `JournaledFile` (holding the write lock)."""

    def __init__(self, path: str | Path, *, fd: int | None = None) -> None:
        self.path = Path(path)
        if fd is None:
            _check_path(self.path)
        self.jfile = JournaledFile(self.path, fd=fd)  # rolls back an interrupted commit
        h5 = None
        try:
            if not _is_hdf5(self.jfile.fd):
                raise RunFileError(f"{self.path}: not an HDF5 file, so not a zgdyn run")
            h5 = h5py.File(self.jfile, "r+", libver=LIBVER)
            _validate(h5, self.path)
            check_attrs(h5, self.path)
            check_layout(h5, self.path, _config_of(h5, self.path), self.jfile.size)
            self.h5 = h5
        except BaseException as e:
            if h5 is not None:  # whatever HDF5 writes on close goes nowhere
                h5.close()
            self.jfile.discard()
            self.jfile.close()
            if isinstance(e, HDF5_ERRORS):
                raise RunFileError(f"{self.path}: cannot be opened as a zgdyn run ({e})") \
                    from None
            raise
        self._closed = False

    def _seal(self) -> None:
        """Store the checksum of the attributes, if they changed."""
        crc = attrs_checksum(self.h5)
        if self.h5.attrs.get(ATTRS_CRC) != crc:
            self.h5.attrs[ATTRS_CRC] = crc

    def commit(self) -> None:
        """Make every write so far durable, atomically; a failed write keeps the last commit."""
        try:
            self._seal()
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
            if commit:
                self._seal()
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
        if path.is_dir():
            raise RunFileError(f"{path}: is a directory; give the run file's name")
        if path.exists() and not force:
            raise _exists_error(path)
        _refuse_if_written(path)
        _check_journal_path(path, _journal_path(path))  # refuses a planted non-file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _create_skeleton(path, config, trainer, replace=force)
        except OSError as e:
            raise RunFileError(f"{path}: cannot be created ({_reason(e)})") from None
        return cls(path, fd=fd)

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
        n = len(self.h5["keyframes/epoch"])
        return _snapshot(self.h5, n - 1, device, self.path) if n else None

    def snapshot_before(self, epoch: int, device: str = "cpu") -> Snapshot | None:
        """The last keyframe at or before `epoch` (None if there is none)."""
        rows = np.flatnonzero(self.h5["keyframes/epoch"][:] <= epoch)
        return _snapshot(self.h5, int(rows[-1]), device, self.path) if len(rows) else None

    @property
    def watch_state(self) -> dict[str, float] | None:
        """The collapse detector's state at the last keyframe (checked: numbers by name);
        its count of collapses is the number of windows in files from before it was stored."""
        raw = self.h5.attrs.get("watch_state")
        if raw is None:
            return None
        try:
            state = parse_watch_state(raw)
        except (ValueError, TypeError) as e:
            raise damaged(self.path, f"its attribute watch_state cannot be read ({e})") \
                from None
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

def _check_path(path: Path) -> None:
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a run file")
    if not path.is_file():
        raise RunFileError(f"{path}: no such run file")


def _is_hdf5(fd: int) -> bool:
    """Whether an HDF5 signature is where HDF5 looks for one (byte 0, 512, 1024, ...)."""
    size, at = os.fstat(fd).st_size, 0
    while at + 8 <= size:
        if os.pread(fd, 8, at) == b"\x89HDF\r\n\x1a\n":
            return True
        at = 512 if at == 0 else 2 * at
    return False


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
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise RunFileError(f"{path}: damaged run file, its config cannot be read ({what})") \
            from None


def _snapshot(f: h5py.File, row: int, device: str, path: Path) -> Snapshot:
    kf = f["keyframes"]
    epoch = int(kf["epoch"][row])
    ck_rows = np.flatnonzero(f["checkpoints/epoch"][:] == epoch)
    if not len(ck_rows):
        raise damaged(path, f"the keyframe at epoch {epoch} has no checkpoint")
    ck_row = int(ck_rows[-1])
    as_t = lambda ds, r: torch.from_numpy(np.asarray(ds[r])).to(device)
    cfg = _config_of(f, path)
    names = list(param_shapes(cfg.data.p, cfg.model.hidden))  # layer order
    phase = int(kf["phase"][row])
    optim = cfg.phase_optim(phase)
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


def _plain_attrs(f: h5py.File) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}


def _close_reader(h5: h5py.File, fd: int) -> None:
    try:
        h5.close()
    finally:
        os.close(fd)


def _epoch_rows(epochs: np.ndarray, epoch: int) -> np.ndarray:
    """The rows of `epochs` equal to `epoch` (none for an epoch no int64 holds)."""
    if not -2**63 <= int(epoch) < 2**63:
        return np.zeros(0, np.int64)
    return np.flatnonzero(epochs == epoch)


class Run:
    """A run file opened for reading. Use as a context manager, or call `close()`.

    It shows the run as of one commit: the index (metrics, checkpoint and keyframe epochs,
    windows, attributes) is read under the commit lock when it opens, and every record it
    lists stays readable while a writer goes on (records are only appended); after a
    commit by another process it re-opens the file before reading.
    """

    def __init__(self, path: str | Path, *, _h5: h5py.File | None = None) -> None:
        self.path = Path(path)
        self._owns = _h5 is None
        self._closer: weakref.finalize | None = None
        if _h5 is not None:
            self.h5 = _h5
            self._load()
            return
        _check_path(self.path)
        self._fd, self.rolled_back = open_for_reading(self.path)  # commit lock held
        try:
            self._open_h5()
            self._load()
        except BaseException:
            self.close()
            raise
        self._file_bytes = self._size  # as of the commit it opened at
        unlock(self._fd)

    def _open_h5(self) -> None:
        """Open HDF5 on `_fd` (its commit lock held by the caller)."""
        fd = self._fd
        try:
            if not _is_hdf5(fd):
                raise RunFileError(f"{self.path}: not an HDF5 file, so not a zgdyn run")
            fobj = ReadOnlyFile(fd)
            self.h5 = h5py.File(fobj, "r")
        except BaseException as e:
            os.close(fd)
            if isinstance(e, HDF5_ERRORS):
                raise RunFileError(f"{self.path}: cannot be opened ({e})") from None
            raise
        self._size = fobj.size
        self._stamp = stamp(fd)
        self._closer = weakref.finalize(self, _close_reader, self.h5, fd)  # even at exit

    def _load(self) -> None:
        """Read the index and check the layout: one consistent view, or a RunFileError."""
        try:
            _validate(self.h5, self.path)
            if self._owns:
                check_attrs(self.h5, self.path)
            self.config = _config_of(self.h5, self.path)
            if self._owns:
                check_layout(self.h5, self.path, self.config, self._size)
            self._attrs = _plain_attrs(self.h5)
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
        except HDF5_ERRORS as e:
            raise damaged(self.path, f"it cannot be read ({type(e).__name__}: {e})") \
                from None

    def _reopen(self) -> None:
        """Open the file afresh (under the commit lock): another process committed."""
        created = self._attrs.get("created")
        self._closer()
        self._fd, _ = open_for_reading(self.path)
        self._open_h5()
        if self.h5.attrs.get("created") != created:
            raise RunFileError(f"{self.path}: was replaced by another run while open; open "
                               "it again")

    def _read(self, fn: Callable[[], Any]) -> Any:
        """fn(), under the commit lock, on a handle that has seen every commit so far."""
        if not self._owns:
            return fn()
        lock_shared(self._fd)
        try:
            try:
                changed = stamp(self.path) != self._stamp
            except FileNotFoundError:  # deleted: our descriptor still reads it
                changed = False
            if changed:
                self._reopen()
            return fn()
        finally:
            if self._closer is not None and self._closer.alive:
                unlock(self._fd)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._owns and self._closer is not None:
            self._closer()

    @property
    def attrs(self) -> dict[str, Any]:
        """The root attributes, as of the commit the run was opened at."""
        return dict(self._attrs) if self._owns else _plain_attrs(self.h5)

    @property
    def split(self) -> Split:
        p = self.config.data.p
        tr, te = self._read(lambda: (self.h5["split/train_idx"][:],
                                     self.h5["split/test_idx"][:]))
        for idx in (tr, te):
            if len(idx) and (idx.min() < 0 or idx.max() >= p * p):
                raise damaged(self.path, f"its split holds pair indices outside [0, {p * p})")
        return Split(p=p, train_idx=tr, test_idx=te)

    @property
    def param_epochs(self) -> np.ndarray:
        """Every epoch with stored parameters: checkpoints and window records, sorted."""
        return np.union1d(self.checkpoint_epochs, self.window_epochs)

    def _ckpt_row(self, epoch: int) -> tuple[str, int]:
        rows = _epoch_rows(self.checkpoint_epochs, epoch)
        if len(rows):
            return "checkpoints", int(rows[-1])
        rows = _epoch_rows(self.window_epochs, epoch)
        if len(rows):
            return "windows/params", int(rows[-1])
        have = self.param_epochs
        near = have[np.argsort(np.abs(have - epoch))[:3]] if abs(epoch) < 2**62 else have[-3:]
        raise RunFileError(f"{self.path}: no checkpoint at epoch {epoch}; nearest: "
                           f"{', '.join(str(int(e)) for e in sorted(near)) or 'none'}")

    def params_at(self, epoch: int, *, device: str = "cpu") -> dict[str, Tensor]:
        """Named parameters at `epoch`: a checkpoint, or a record of a collapse window."""
        group, row = self._ckpt_row(epoch)
        shapes = param_shapes(self.config.data.p, self.config.model.hidden)
        try:
            return self._read(lambda: {n: torch.from_numpy(self.h5[group][n][row])
                                       .to(device) for n in shapes})
        except HDF5_ERRORS as e:
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
        n = len(self.window_epochs)
        if not n:
            return dict(self.metrics)

        def window_metrics() -> dict[str, np.ndarray]:
            w = self.h5.get("windows/metrics")
            return {} if w is None else {k: w[k][:n] for k in self.metrics if k in w}

        try:
            w = self._read(window_metrics)
        except HDF5_ERRORS as e:
            raise damaged(self.path, f"its window metrics cannot be read ({e})") from None
        if not w:
            return dict(self.metrics)
        merged = {k: np.concatenate([self.metrics[k], w[k]]) for k in w}
        _, first = np.unique(merged["epoch"], return_index=True)
        return {k: v[first] for k, v in merged.items()}

    def checkpoints(self, *, device: str = "cpu") -> Iterator[tuple[int, dict[str, Tensor]]]:
        """(epoch, named parameters) for every checkpoint, in order."""
        for e in self.checkpoint_epochs:
            yield int(e), self.params_at(int(e), device=device)

    def snapshot_at(self, epoch: int, *, device: str = "cpu") -> Snapshot:
        """The full training state (parameters and Adam state) at keyframe `epoch`."""
        rows = _epoch_rows(self.keyframe_epochs, epoch)
        if not len(rows):
            raise RunFileError(f"{self.path}: no keyframe at epoch {epoch}; keyframes: "
                               f"{', '.join(str(int(e)) for e in self.keyframe_epochs[-5:])}")
        try:
            return self._read(lambda: _snapshot(self.h5, int(rows[-1]), device, self.path))
        except HDF5_ERRORS as e:
            raise RunFileError(f"{self.path}: keyframe at epoch {epoch} is corrupt ({e})") \
                from None

    def analysis(self, group: str) -> dict[str, Any] | None:
        """{dataset path: array} of `analysis/<group>`, plus its attributes under "attrs"."""
        def read() -> dict[str, Any] | None:
            g = self.h5.get(f"analysis/{group}")
            if g is None:
                return None
            out: dict[str, Any] = {"attrs": {k: json.loads(v) for k, v in g.attrs.items()}}
            g.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                         if isinstance(obj, h5py.Dataset) else None)
            return out

        try:
            return self._read(read)
        except (*HDF5_ERRORS, RecursionError) as e:
            raise damaged(self.path, f"analysis/{group} cannot be read ({e})") from None

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
            "file_bytes": self._file_bytes if self._owns else self.path.stat().st_size,
            "created": a["created"], "zgdyn_version": a["zgdyn_version"],
            "torch_version": a["torch_version"], "threads": int(a["threads"]),
        }


def verify_run(path: str | Path) -> dict[str, Any]:
    """Check a run file's integrity: its layout against its config, every dataset read
    (`analysis/` too), every chunk stored once, parameters finite, record counts and
    epochs consistent (see `integrity.verify`). It reads one commit: no commit by another
    process runs meanwhile. Returns {"path", "ok", "rolled_back", "problems": [...],
    "checked": {...}}.

    Never raises for a damaged file (a missing one or a non-HDF5 one is a RunFileError).
    """
    path = Path(path)
    _check_path(path)
    fd, rolled_back = open_for_reading(path)  # before looking at the file: it may be mid-commit
    out = {"path": str(path), "ok": False, "rolled_back": rolled_back, "problems": [],
           "checked": {"checkpoints": 0, "keyframes": 0, "datasets": 0}}
    try:
        if not _is_hdf5(fd):
            raise RunFileError(f"{path}: not an HDF5 file, so not a zgdyn run")
        fobj = ReadOnlyFile(fd)
        try:
            f = h5py.File(fobj, "r")
        except HDF5_ERRORS as e:
            out["problems"] = [f"cannot be opened: {e}"]
            return out
        with f:
            try:
                _validate(f, path)
                cfg = _config_of(f, path)
            except RunFileError as e:
                out["problems"] = [str(e).split(": ", 1)[1]]
                return out
            except HDF5_ERRORS as e:
                out["problems"] = [f"damaged: the root group ({e})"]
                return out
            out["problems"], out["checked"] = verify(f, path, cfg, fobj.size)
    finally:
        os.close(fd)  # releases the commit lock
    out["ok"] = not out["problems"]
    return out


def open_run(path: str | Path) -> Run:
    """Open a run file for reading (rolls back an interrupted commit first)."""
    return Run(path)
