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
from .train import Callback, ProgressBar, Trainer

# fields that may change when a run is resumed: how long it goes on, and where it runs
RESUMABLE_CHANGES = ("epochs", "phase2_epochs", "device")


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
        for name, value in changes.items():
            if name not in RESUMABLE_CHANGES and flat.get(name, value) != value:
                raise ConfigError(f"{name}: cannot change when resuming (stored: "
                                  f"{flat.get(name)!r}); only {', '.join(RESUMABLE_CHANGES)} "
                                  "can")
        config = stored.replace(**changes) if changes else stored
        if config != stored:
            writer.set_config(config)
        snapshot = writer.last_snapshot(config.device)
        trainer = Trainer(config, snapshot)
    except BaseException:
        writer.close(commit=False)
        raise
    return _drive(trainer, writer, list(callbacks), progress)


__all__ = ["train_run", "resume_run", "RunFileError", "RESUMABLE_CHANGES"]
