import pytest

from zgdyn import Config, DataConfig, ModelConfig, RecordConfig, ScheduleConfig
from zgdyn.train import Callback


def small_config(epochs: int = 300, **changes) -> Config:
    """A run that takes well under a second: p = 13, hidden (24, 24)."""
    cfg = Config(data=DataConfig(p=13, train_frac=0.5), model=ModelConfig(hidden=(24, 24)),
                 schedule=ScheduleConfig(epochs=epochs),
                 record=RecordConfig(eval_every=10, ckpt_every=20, keyframe_every=100))
    return cfg.replace(**changes) if changes else cfg


class StopAt(Callback):
    """Asks the trainer to stop at the first evaluation at or after `epoch`."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_eval(self, trainer, metrics):
        if trainer.epoch >= self.epoch:
            trainer.stop_requested = True


@pytest.fixture
def small():
    return small_config


def pytest_configure(config):
    # the test models are tiny: one thread is fastest, and immune to another process
    # holding the other core (OpenMP's spinning threads slow down 100x when oversubscribed)
    import torch
    torch.set_num_threads(1)


# The start of a child process that kills itself with SIGKILL as ZGDYN_TEST_KILL says:
# "NAME:N" at the N-th call of the os-level write primitive NAME (so inside a commit:
# journal fsync, page writes, truncate), or "after:SECONDS". Unset: no kill.
KILL_PREAMBLE = """
import os, signal, sys, threading
import torch
torch.set_num_threads(1)
spec = os.environ.get("ZGDYN_TEST_KILL")
if spec:
    name, n = spec.split(":")
    if name == "after":
        threading.Timer(float(n), lambda: os.kill(os.getpid(), signal.SIGKILL)).start()
    else:
        real, calls = getattr(os, name), [0]
        def dying(*args, **kw):
            calls[0] += 1
            if calls[0] == int(n):
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kw)
        setattr(os, name, dying)
"""


# what the reliability tests tried, printed at the end of the run
COUNTS: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n


def pytest_terminal_summary(terminalreporter):
    if COUNTS:
        terminalreporter.write_sep("-", "reliability counts")
        for name, n in sorted(COUNTS.items()):
            terminalreporter.write_line(f"{name}: {n}")
