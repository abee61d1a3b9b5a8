"""Reading run files: `open_run` and `Run`, which check a file's format, layout and
journal before they read it, and `verify_run`.

A reader takes a shared lock for each read, so it sees one commit whole while a writer
goes on; a reader held across commits re-opens the file when it changed.

    >>> with open_run("data/runs/run.h5") as run:
    ...     run.metrics["test_acc"], run.checkpoint_epochs, run.params_at(10_000)
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from ..core.config import Config, from_dict
from ..core.data import Split
from ..core.model import MLP, build_model, param_shapes
from ..core.optim import needs_max_moment
from ..core.train import Snapshot
from .integrity import HDF5_ERRORS, check_attrs, check_layout, damaged, verify
from .journal import RunFileError, open_for_reading
from .locks import lock_shared, stamp, unlock
from .pagefile import ReadOnlyFile

FORMAT = "zgdyn.run"
FORMAT_VERSION = 1
# one row per collapse window: integer columns, then float columns
WINDOW_INDEX = ("trigger", "start", "end", "first_record", "n_records")
WINDOW_LOSSES = ("base_loss", "trigger_loss")
WINDOW_FIELDS = WINDOW_INDEX + WINDOW_LOSSES



def check_path(path: Path) -> None:
    if path.is_dir():
        raise RunFileError(f"{path}: is a directory, not a run file")
    if not path.is_file():
        raise RunFileError(f"{path}: no such run file")


def is_hdf5(fd: int) -> bool:
    """Whether an HDF5 signature is where HDF5 looks for one (byte 0, 512, 1024, ...)."""
    size, at = os.fstat(fd).st_size, 0
    while at + 8 <= size:
        if os.pread(fd, 8, at) == b"\x89HDF\r\n\x1a\n":
            return True
        at = 512 if at == 0 else 2 * at
    return False


def validate(f: h5py.File, path: Path) -> None:
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


def config_of(f: h5py.File, path: Path) -> Config:
    try:
        return from_dict(json.loads(f.attrs["config"]))
    except (KeyError, ValueError, TypeError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else str(e)
        raise RunFileError(f"{path}: damaged run file, its config cannot be read ({what})") \
            from None


def read_snapshot(f: h5py.File, row: int, device: str, path: Path) -> Snapshot:
    kf = f["keyframes"]
    epoch = int(kf["epoch"][row])
    ck_rows = np.flatnonzero(f["checkpoints/epoch"][:] == epoch)
    if not len(ck_rows):
        raise damaged(path, f"the keyframe at epoch {epoch} has no checkpoint")
    ck_row = int(ck_rows[-1])
    as_t = lambda ds, r: torch.from_numpy(np.asarray(ds[r])).to(device)
    cfg = config_of(f, path)
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
        hook_state={g[5:]: {n: as_t(kf[g][n], row) for n in names}
                    for g in kf if g.startswith("hook_")} or None,
    )


def plain_attrs(f: h5py.File) -> dict[str, Any]:
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
        check_path(self.path)
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
            if not is_hdf5(fd):
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
            validate(self.h5, self.path)
            if self._owns:
                check_attrs(self.h5, self.path)
            self.config = config_of(self.h5, self.path)
            if self._owns:
                check_layout(self.h5, self.path, self.config, self._size)
            self._attrs = plain_attrs(self.h5)
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
        return dict(self._attrs) if self._owns else plain_attrs(self.h5)

    @property
    def split(self) -> Split:
        p = self.config.data.p
        tr, te = self._read(lambda: (self.h5["split/train_idx"][:],
                                     self.h5["split/test_idx"][:]))
        for idx in (tr, te):
            if len(idx) and (idx.min() < 0 or idx.max() >= p * p):
                raise damaged(self.path, f"its split holds pair indices outside [0, {p * p})")
        return Split(p=p, train_idx=tr, test_idx=te)

    def weights(self, phase: int = 0) -> np.ndarray:
        """The training loss's weights (n_train,) in `phase` (0, or 1 after the switch), as
        the run stored them."""
        n = len(self.split.train_idx)
        name = f"weights/phase{phase}"
        w = self._read(lambda: self.h5[name][:] if name in self.h5 else None)
        if w is None:
            raise ValueError(f"{self.path}: no loss weights of phase {phase}")
        if w.shape != (n,):
            raise damaged(self.path, f"its {name} holds {w.shape} weights, not ({n},)")
        return w

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

    @property
    def last_keyframe(self) -> int:
        """The epoch of the last keyframe, where analyses start by default."""
        if not len(self.keyframe_epochs):
            raise RunFileError(f"{self.path}: has no keyframes")
        return int(self.keyframe_epochs[-1])

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
            return self._read(lambda: read_snapshot(self.h5, int(rows[-1]), device, self.path))
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
    check_path(path)
    fd, rolled_back = open_for_reading(path)  # before looking at the file: it may be mid-commit
    out = {"path": str(path), "ok": False, "rolled_back": rolled_back, "problems": [],
           "checked": {"checkpoints": 0, "keyframes": 0, "datasets": 0}}
    try:
        if not is_hdf5(fd):
            raise RunFileError(f"{path}: not an HDF5 file, so not a zgdyn run")
        fobj = ReadOnlyFile(fd)
        try:
            f = h5py.File(fobj, "r")
        except HDF5_ERRORS as e:
            out["problems"] = [f"cannot be opened: {e}"]
            return out
        with f:
            try:
                validate(f, path)
                cfg = config_of(f, path)
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


__all__ = ["FORMAT", "FORMAT_VERSION", "WINDOW_INDEX", "WINDOW_LOSSES", "WINDOW_FIELDS", "Run",
           "open_run", "verify_run", "check_path", "is_hdf5", "validate", "config_of",
           "read_snapshot", "plain_attrs"]
