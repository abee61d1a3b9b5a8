"""Writing run files in the HDF5 run format (v1): `RunWriter`, the callback that records a
training run, and `AnalysisWriter`, which stores an analysis beside it.

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
import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from .. import __version__
from ..core.config import Config
from ..core.model import param_shapes
from ..core.train import METRICS, Callback, Snapshot, Trainer
from ..core.watch import Window
from .integrity import ATTRS_CRC, HDF5_ERRORS, attrs_checksum, check_attrs, check_layout, \
    damaged, moment_groups, parse_watch_state
from .journal import RunFileError, check_journal_path, journal_path, lock_for_writing, \
    written_error
from .locks import stamp
from .pagefile import JournaledFile
from .reader import FORMAT, FORMAT_VERSION, WINDOW_INDEX, WINDOW_LOSSES, Run, check_path, \
    config_of, is_hdf5, read_snapshot, validate

# HDF5's own formats for what zgdyn writes: superblock, object headers and chunk indexes
# carry checksums (HDF5 >= 1.10 reads them), so a flipped bit there is an error, not a
# silent change; objects of files written before keep their older, unchecked formats
LIBVER = ("v110", "latest")
REPLACE_WAIT = 0.5  # seconds a replacement waits on a lock that may be another's probe


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




def _create_skeleton(path: Path, config: Config, trainer: Trainer, *,
                     replace: tuple[int, int] | None) -> int:
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


def _publish(tmp: Path, path: Path, *, replace: tuple[int, int] | None) -> int:
    """Give the finished file `tmp` the name `path`, locked before anyone can see it.

    Without `replace`, exclusively (a hard link fails if the name exists), so of several
    processes creating one file, exactly one wins; with `replace`, the (device, inode) of the
    file this process saw there when it began, replaced under that file's write lock
    (`_replace_locked`), so that of several replacers exactly one wins and a file that is
    being written is refused. Returns the locked descriptor."""
    fd = os.open(tmp, os.O_RDWR)
    try:
        lock_for_writing(fd, path)  # a fresh inode: nobody else holds it
        os.fsync(fd)
        if replace is not None:
            _replace_locked(tmp, path, replace)
        else:
            _link_exclusively(tmp, path)
        if stamp(path)[:2] != stamp(fd)[:2]:
            raise RunFileError(f"{path}: was replaced by another process while this one "
                               "created it")
        if check_journal_path(path, journal_path(path)) is not None:
            journal_path(path).unlink()  # a journal of an earlier file of this name
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


def _refuse_if_written(path: Path) -> tuple[int, int] | None:
    """Refuse to replace a file that another process is writing; returns the (device, inode)
    of the file at `path`, None if there is none. The probe takes the write lock shared, so
    that two processes probing at once do not take each other for a writer."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return stamp(fd)[:2]
    except BlockingIOError:
        raise written_error(path) from None
    finally:
        os.close(fd)  # releases the probe


def _replace_locked(tmp: Path, path: Path, seen: tuple[int, int]) -> None:
    """os.replace(tmp, path) while holding the write lock of the file it replaces, which must
    still be the file `seen` when this process began: of several replacers, the first to take
    the lock wins, and the others find another file at `path` and are refused. Another
    process's probe holds the lock for microseconds, so a busy lock is retried for
    `REPLACE_WAIT` seconds before the file is taken to be being written."""
    moved = RunFileError(f"{path}: was replaced by another process while this one created it")
    try:
        old = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise moved from None
    try:
        if stamp(old)[:2] != seen:
            raise moved
        deadline = time.monotonic() + REPLACE_WAIT
        while True:
            try:
                fcntl.flock(old, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise written_error(path) from None
                time.sleep(0.002)
        try:
            now = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise moved from None
        if (now.st_dev, now.st_ino) != seen:
            raise moved
        os.replace(tmp, path)
    finally:
        os.close(old)


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
            check_path(self.path)
        self.jfile = JournaledFile(self.path, fd=fd)  # rolls back an interrupted commit
        h5 = None
        try:
            if not is_hdf5(self.jfile.fd):
                raise RunFileError(f"{self.path}: not an HDF5 file, so not a zgdyn run")
            h5 = h5py.File(self.jfile, "r+", libver=LIBVER)
            validate(h5, self.path)
            check_attrs(h5, self.path)
            check_layout(h5, self.path, config_of(h5, self.path), self.jfile.size)
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
        seen = _refuse_if_written(path)
        check_journal_path(path, journal_path(path))  # refuses a planted non-file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = _create_skeleton(path, config, trainer, replace=seen)
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
        return config_of(self.h5, self.path)

    def last_snapshot(self, device: str = "cpu") -> Snapshot | None:
        n = len(self.h5["keyframes/epoch"])
        return read_snapshot(self.h5, n - 1, device, self.path) if n else None

    def snapshot_before(self, epoch: int, device: str = "cpu") -> Snapshot | None:
        """The last keyframe at or before `epoch` (None if there is none)."""
        rows = np.flatnonzero(self.h5["keyframes/epoch"][:] <= epoch)
        return read_snapshot(self.h5, int(rows[-1]), device, self.path) if len(rows) else None

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
        for state, named in (snap.hook_state or {}).items():
            if f"hook_{state}" in g:
                for name, value in named.items():
                    _append(g[f"hook_{state}"][name], value.cpu().numpy())
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

    Holds the run's write lock, so it refuses a file that is training. As a context
    manager it commits what was written when the block ends, and drops what was not yet
    committed when the block raises:

        with AnalysisWriter(path, "trajectory") as w:
            w.reset(settings)
    """

    def __init__(self, path: str | Path, group: str) -> None:
        super().__init__(path)
        self.name = f"analysis/{group}"

    def __enter__(self) -> AnalysisWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(commit=exc_type is None)

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


__all__ = ["LIBVER", "RunWriter", "AnalysisWriter"]
