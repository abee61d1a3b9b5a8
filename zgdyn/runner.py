"""Train a run into a file, or resume one: what `zgdyn train` does, as one call.

    >>> train_run(Config(), "data/runs/s0.h5", progress=True)
    >>> resume_run("data/runs/s0.h5", changes={"epochs": 60_000})
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .config import Config, ConfigError, flatten
from .store import RunFileError, RunWriter
from .train import LOOKBACK, Callback, Diverged, ProgressBar, Trainer

# fields that may change when a run is resumed: how long it goes on, and where it runs;
# after a divergence also the optimizer's settings (every change is kept in `history`)
RESUMABLE_CHANGES = ("epochs", "phase2_epochs", "device")
AFTER_DIVERGENCE = ("lr", "weight_decay", "beta1", "beta2", "eps")


@contextmanager
def _stop_on_signals(trainer: Trainer) -> Iterator[None]:
    """SIGINT/SIGTERM ask the trainer to stop at the next epoch, keyframe and commit;
    a second SIGINT interrupts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
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
        with _stop_on_signals(trainer):
            trainer.run(cbs)
    except Diverged as e:
        writer.close(commit=False)  # the file keeps its last keyframe, marked as diverged
        marker = RunWriter.resume(writer.path)
        try:
            marker.mark("diverged", diverged_epoch=e.epoch)
        finally:
            marker.close()
        raise
    except BaseException:
        writer.close(commit=False)  # the file keeps its last keyframe
        raise
    writer.close(commit=True)
    return trainer


def train_run(config: Config, path: str | Path, *, force: bool = False,
              progress: bool = False, callbacks: list[Callback] | tuple = ()) -> Trainer:
    """Train `config` from scratch, recording to a new run file at `path`.

    Refuses an existing file unless `force`. Returns the finished Trainer.
    """
    trainer = Trainer(config)
    writer = RunWriter.create(path, config, trainer, force=force)
    return _drive(trainer, writer, list(callbacks), progress)


def resume_run(path: str | Path, *, changes: dict[str, Any] | None = None,
               progress: bool = False, callbacks: list[Callback] | tuple = ()) -> Trainer:
    """Continue the run in `path` from its last keyframe, bitwise as if never stopped.

    `changes` may set only epochs, phase2_epochs and device (to extend a run, say).
    """
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
    return _drive(trainer, writer, list(callbacks), progress)


def replay_run(path: str | Path, out: str | Path, *, epoch_from: int, epoch_to: int,
               every: int = 1, force: bool = False, progress: bool = False) -> Trainer:
    """Recompute epochs [epoch_from, epoch_to] of a run at resolution `every` into a new file.

    Restarts from the last keyframe at or before epoch_from; the trajectory is bitwise the
    original's on the same device and thread count. The window file is an ordinary run file
    whose first record is that keyframe.
    """
    from .store import open_run

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
    span = max(1, -(-(epoch_to - snap.epoch) // every))  # in steps of `every`, rounded up
    # dense already: no collapse windows
    changes: dict[str, Any] = {"eval_every": every, "ckpt_every": every, "window": 0,
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
    trainer = Trainer(window, snap)
    writer = RunWriter.create(out, window, trainer, force=force)
    writer.on_eval(trainer, trainer.evaluate())  # the starting keyframe is the first record
    writer.on_checkpoint(trainer)
    return _drive(trainer, writer, [], progress)


__all__ = ["train_run", "resume_run", "replay_run", "RunFileError", "RESUMABLE_CHANGES"]
