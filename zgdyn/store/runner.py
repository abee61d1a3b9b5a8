"""Train a run into a file, or resume one: what `zgdyn train` does, as one call.

    >>> train_run(Config(), "data/runs/s0.h5", progress=True)
    >>> resume_run("data/runs/s0.h5", changes={"epochs": 60_000})
"""

from __future__ import annotations

import json
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..core.config import DETECTOR_OFF, LOOKBACK, Config, ConfigError, ZgdynError, flatten
from ..core.train import Callback, Diverged, ProgressBar, Trainer
from .budget import check_runs
from .journal import RunFileError
from .writer import RunWriter

# fields that may change when a run is resumed: how long it goes on, and where it runs;
# after a divergence also the optimizer's settings (every change is kept in `history`)
RESUMABLE_CHANGES = ("epochs", "phase2_epochs", "device", "stop_after_collapses",
                     "flush_subnormals")
AFTER_DIVERGENCE = ("lr", "weight_decay", "beta1", "beta2", "eps")


@contextmanager
def _stop_on_signals(trainers: list[Trainer]) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainers to stop at the next epoch, keyframe and commit;
    a second SIGINT interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainers[0].stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        for trainer in trainers:
            trainer.stop_requested = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _drive(trainer: Trainer, writer: RunWriter, callbacks: list[Callback],
           progress: bool) -> Trainer:
    cbs: list[Callback] = [writer, *callbacks]
    if progress:
        cbs.append(ProgressBar())
    try:
        with _stop_on_signals([trainer]):
            trainer.run(cbs)
    except BaseException as e:
        _close_failed(writer, e)
        raise
    writer.close(commit=True)
    return trainer


def _close_failed(writer: RunWriter, error: BaseException) -> None:
    """Close the writer of a run that failed: the file keeps its last keyframe, marked as
    diverged if it diverged."""
    writer.close(commit=False)
    if isinstance(error, Diverged):
        marker = RunWriter.resume(writer.path)
        try:
            marker.mark("diverged", diverged_epoch=error.epoch)
        finally:
            marker.close()


def train_run(config: Config, path: str | Path, *, force: bool = False,
              force_disk: bool = False, progress: bool = False,
              callbacks: list[Callback] | tuple = ()) -> Trainer:
    """Train `config` from scratch, recording to a new run file at `path`.

    Refuses an existing file unless `force`, and a run this machine cannot hold
    (`budget.check_runs`; its disk estimate yields to `force_disk`). Returns the finished
    Trainer.
    """
    check_runs([config], Path(path).parent, force_disk=force_disk)
    trainer = Trainer(config)
    writer = RunWriter.create(path, config, trainer, force=force)
    return _drive(trainer, writer, list(callbacks), progress)


def resume_run(path: str | Path, *, changes: dict[str, Any] | None = None,
               force_disk: bool = False, progress: bool = False,
               callbacks: list[Callback] | tuple = ()) -> Trainer:
    """Continue the run in `path` from its last keyframe, bitwise as if never stopped.

    `changes` may set only epochs, phase2_epochs, device, stop_after_collapses and
    flush_subnormals (to extend a run, say); each change is kept in the file's history.
    """
    trainer, writer = _open_resume(path, changes, force_disk)
    return _drive(trainer, writer, list(callbacks), progress)


def _open_resume(path: str | Path, changes: dict[str, Any] | None,
                 force_disk: bool = False) -> tuple[Trainer, RunWriter]:
    """The Trainer at the last keyframe of `path`, and the writer that goes on with it."""
    writer = RunWriter.resume(path)
    try:
        stored = writer.config
        changes = dict(changes or {})
        flat = flatten(stored)
        allowed = RESUMABLE_CHANGES + (AFTER_DIVERGENCE if writer.status == "diverged" else ())
        for name, value in changes.items():
            if name not in allowed and flat.get(name, value) != value:
                raise ConfigError(f"{name}: cannot change when resuming (stored: "
                                  f"{flat.get(name)!r}); only {', '.join(allowed)} can"
                                  + ("" if writer.status == "diverged" else
                                     " (and the optimizer's settings after a divergence)"))
        config = stored.replace(**changes) if changes else stored
        check_runs([config], Path(path).parent, force_disk=force_disk,
                   start_epochs=[max(0, int(writer.h5.attrs["epochs_done"]))])
        snapshot = writer.last_snapshot(config.device)
        if config != stored:
            writer.set_config(config, at_epoch=snapshot.epoch if snapshot else 0)
        trainer = Trainer(config, snapshot)
        state = writer.watch_state
        if trainer.watch is not None and snapshot is not None and state is not None:
            # recompute the detector's buffers from a keyframe far enough back
            reach = max(config.record.window + 1, LOOKBACK)
            early = writer.snapshot_before(max(0, snapshot.epoch - reach), config.device)
            if early is not None and early.epoch < snapshot.epoch:
                trainer.rebuild_watch(early, state)
            else:
                trainer.watch.load_state(state)
    except BaseException:
        writer.close(commit=False)
        raise
    return trainer, writer


@dataclass
class MemberResult:
    """One ensemble member's outcome: its run file, its Trainer, and its error if any."""

    path: Path
    trainer: Trainer
    error: str | None = None


def train_ensemble(configs: list[Config], paths: list[str | Path], *, force: bool = False,
                   progress: bool = False, mode: str = "auto",
                   resume: bool = False, changes: dict[str, Any] | None = None,
                   callbacks: list[list[Callback]] | None = None) -> list[MemberResult]:
    """Train `configs` as one ensemble (`zgdyn.core.ensemble`), member k to run file `paths[k]`.

    Every file is an ordinary run file (bitwise the solo run's in "members" mode). With
    `resume`, `paths` are existing run files continued from their last keyframes
    (`changes` as in `resume_run`) and `configs` is ignored. Existing files are refused
    before anything is written (unless `force`). A member that fails leaves and the others
    go on; its error is in its result and its file keeps its last keyframe. `callbacks[k]`
    hear member k.
    """
    from ..core.ensemble import Ensemble, check_members

    paths = [Path(p) for p in paths]
    if len(set(paths)) != len(paths):
        raise ConfigError("ensemble: two members write the same run file; give them "
                          "distinct paths")
    if resume:
        pairs = []
        try:
            for path in paths:
                pairs.append(_open_resume(path, changes))
            check_members([t.config for t, _ in pairs])
        except BaseException:
            for _, w in pairs:
                w.close(commit=False)
            raise
        trainers, writers = [t for t, _ in pairs], [w for _, w in pairs]
    else:
        if len(configs) != len(paths):
            raise ConfigError(f"ensemble: {len(configs)} configs but {len(paths)} paths")
        check_members(configs)
        for path in paths:
            if path.exists() and not force:
                raise RunFileError(f"{path}: already exists; pass --force to replace it, or "
                                   "--resume to continue it")
        check_runs(configs, paths[0].parent, force_disk=force)
        trainers = [Trainer(cfg) for cfg in configs]
        writers = []
        for cfg, trainer, path in zip(configs, trainers, paths):
            writers.append(RunWriter.create(path, cfg, trainer, force=force))
    ensemble = Ensemble(trainers=trainers, mode=mode)
    cbs: list[list[Callback]] = [[w, *(callbacks[k] if callbacks else [])]
                                 for k, w in enumerate(writers)]
    if progress:
        bar = EnsembleProgress(trainers)
        for c in cbs:
            c.append(bar)
    try:
        with _stop_on_signals(trainers):
            errors = ensemble.run(cbs)
    except BaseException as e:
        for w in writers:
            _close_failed(w, e)  # closing twice is harmless
        raise
    results = []
    for k, (trainer, writer) in enumerate(zip(trainers, writers)):
        if k in errors:
            _close_failed(writer, errors[k])
            err = errors[k]
            msg = str(err) if isinstance(err, ZgdynError) else f"{type(err).__name__}: {err}"
        else:
            writer.close(commit=True)
            msg = None
        results.append(MemberResult(writer.path, trainer, msg))
    return results


class EnsembleProgress(Callback):
    """One tqdm bar over an ensemble's model-epochs, with its members' test accuracies."""

    def __init__(self, trainers: list[Trainer]) -> None:
        from tqdm.auto import tqdm
        self.trainers = trainers
        self.done = sum(t.epoch for t in trainers)
        self.bar = tqdm(total=self._total(), initial=self.done, desc=f"ensemble of "
                        f"{len(trainers)}", unit="model-epoch", unit_scale=True)
        self.ended = 0
        self.test_acc: dict[int, float] = {}

    def _total(self) -> int:
        return sum(max(t.end_epoch, t.epoch) for t in self.trainers)

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        self.test_acc[id(trainer)] = metrics["test_acc"]
        done = sum(t.epoch for t in self.trainers)
        self.bar.total = self._total()
        self.bar.update(done - self.done)
        self.done = done
        accs = self.test_acc.values()
        self.bar.set_postfix(test=f"{min(accs):.2f}..{max(accs):.2f}", refresh=False)

    def on_end(self, trainer: Trainer) -> None:
        self.ended += 1
        if self.ended == len(self.trainers):
            self.bar.update(sum(t.epoch for t in self.trainers) - self.done)
            self.bar.close()


def replay_run(path: str | Path, out: str | Path, *, epoch_from: int, epoch_to: int,
               every: int = 1, force: bool = False, force_disk: bool = False,
               progress: bool = False) -> Trainer:
    """Recompute epochs [epoch_from, epoch_to] of a run at resolution `every` into a new file.

    Restarts from the last keyframe at or before epoch_from; the trajectory is bitwise the
    original's on the same device and thread count. The window file is an ordinary run file
    whose first record (and first keyframe, committed before it trains) is that keyframe;
    its attribute `replay` names the source and the window. An interrupted replay resumes
    when asked again for the same window (or with `resume_run`); another file at `out` is
    refused unless `force`.
    """
    from .reader import open_run

    if not 0 <= epoch_from < epoch_to:
        raise ConfigError(f"--from/--to: need 0 <= from < to, got {epoch_from}, {epoch_to}")
    if every < 1:
        raise ConfigError(f"every: must be an integer >= 1, got {every}")
    with open_run(path) as run:
        cfg, done = run.config, int(run.attrs["epochs_done"])
        starts = run.keyframe_epochs[run.keyframe_epochs <= epoch_from]
        if not len(starts):
            raise RunFileError(f"{path}: no keyframe at or before epoch {epoch_from} to replay "
                               "from")
        if epoch_to > done:
            raise RunFileError(f"{path}: epoch {epoch_to} is past the last keyframe ({done}); "
                               "no recorded state reproduces it")
        snap = run.snapshot_at(int(starts[-1]))
        switch = int(run.attrs["switch_epoch"])
        source = {"source": str(Path(path).resolve()), "source_created": run.attrs["created"],
                  "from": epoch_from, "to": epoch_to, "every": every}
    out = Path(out)
    if out.exists() and not force:
        if _replay_of(out) == source:  # this replay, interrupted: go on with it
            return resume_run(out, force_disk=force_disk, progress=progress)
        raise RunFileError(f"{out}: already exists and is not an interrupted replay of epochs "
                           f"{epoch_from}..{epoch_to} every {every} of {path}; pass --force "
                           "to replace it, or another --out")
    span = max(1, -(-(epoch_to - snap.epoch) // every))  # in steps of `every`, rounded up
    # dense already: no collapse windows
    changes: dict[str, Any] = {"eval_every": every, "ckpt_every": every, **DETECTOR_OFF,
                               "keyframe_every": every * span}
    sch = cfg.schedule
    if sch.switch_s is None or (snap.phase == 0 and not 0 <= switch <= epoch_to):
        changes.update(switch_s=None, switch_at_test_acc=None, switch_at_epoch=None,
                       phase2_epochs=None, epochs=epoch_to)
    elif snap.phase == 1:
        changes.update(phase2_epochs=epoch_to - switch)
    else:  # the switch falls inside the window: pin it to the epoch it happened at
        changes.update(switch_at_test_acc=None, switch_at_epoch=switch,
                       phase2_epochs=epoch_to - switch, epochs=max(sch.epochs, switch))
    window = cfg.replace(**changes)
    check_runs([window], out.parent, start_epochs=[snap.epoch], force_disk=force_disk)
    trainer = Trainer(window, snap)
    writer = RunWriter.create(out, window, trainer, force=force)
    try:
        writer.mark("running", replay=json.dumps(source))
        writer.on_eval(trainer, trainer.evaluate())  # the starting keyframe is the first record
        writer.on_checkpoint(trainer)
        writer.on_keyframe(trainer)  # commits: a resume starts here, not at epoch 0
    except BaseException as e:
        _close_failed(writer, e)
        raise
    return _drive(trainer, writer, [], progress)


def _replay_of(path: Path) -> dict[str, Any] | None:
    """The `replay` attribute of the run file at `path` (None if it is not a replay)."""
    from .reader import open_run

    try:
        with open_run(path) as run:
            raw = run.attrs.get("replay")
        return None if raw is None else json.loads(raw)
    except (ZgdynError, ValueError):
        return None


__all__ = ["train_run", "resume_run", "replay_run", "train_ensemble", "MemberResult",
           "RunFileError", "RESUMABLE_CHANGES"]
