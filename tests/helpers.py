"""What the tests share: small configs, a callback that stops a run, a child process that
kills itself on cue, tmpfs mounts, the reliability counts and a refusal runner."""

import pytest

from zgdyn import Config, DataConfig, ModelConfig, RecordConfig, ScheduleConfig
from zgdyn.core.train import Callback


def sampled(cases: list, ids: list[str], default: set[str]) -> list:
    """`cases` as pytest params, those whose id is not in `default` marked slow: the default
    suite checks a property at a spread of its points, `-m slow` at the rest."""
    unknown = default - set(ids)
    assert not unknown, f"no such cases: {sorted(unknown)}"
    return [pytest.param(*(c if isinstance(c, tuple) else (c,)), id=i,
                         marks=() if i in default else pytest.mark.slow)
            for c, i in zip(cases, ids)]


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


# The start of a child process that kills itself with SIGKILL as ZGDYN_TEST_KILL says:
# "NAME:N" at the N-th call of the os-level write primitive NAME (so inside a commit:
# journal fsync, page writes, truncate), "NAME+:N" right after that call returns,
# "evaluate:N" at the N-th evaluation of a Trainer, or "after:SECONDS". Unset: no kill.
KILL_PREAMBLE = """
import os, signal, sys, threading
import torch
torch.set_num_threads(1)
spec = os.environ.get("ZGDYN_TEST_KILL")
if spec:
    name, n = spec.split(":")
    after = name.endswith("+")
    name = name.rstrip("+")
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if name == "after":
        threading.Timer(float(n), die).start()
    else:
        if name == "evaluate":
            from zgdyn.core import train as owner
            owner, name = owner.Trainer, "evaluate"
        else:
            owner = os
        real, calls = getattr(owner, name), [0]
        def dying(*args, **kw):
            calls[0] += 1
            if calls[0] == int(n) and not after:
                die()
            out = real(*args, **kw)
            if calls[0] == int(n):
                die()
            return out
        setattr(owner, name, dying)
"""


def mount_tmpfs(path, size: str) -> None:
    """Mount a tmpfs of `size` (such as "1m") on the directory `path`; skip the test where
    that is not possible (it needs root)."""
    import subprocess
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")


def remount(path, options: str) -> None:
    import subprocess
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def umount(path) -> None:
    import subprocess
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


# what the reliability tests tried, printed at the end of the run
COUNTS: dict[str, int] = {}


def count(name: str, n: int = 1) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + n


# runs each command line of argv[1] (JSON) in a folder of its own under argv[2], giving each
# 60 s (a command that is not refused may go on for hours); prints, as JSON, for each:
# [exit code, stderr, the files it made]
_REFUSER = """
import contextlib, io, json, os, signal, sys
import torch
torch.set_num_threads(1)
from zgdyn.cli import main
signal.signal(signal.SIGALRM, lambda *a: sys.exit(124))
out = []
for k, args in enumerate(json.loads(sys.argv[1])):
    d = os.path.join(sys.argv[2], str(k))
    os.makedirs(d)
    os.chdir(d)
    err = io.StringIO()
    signal.alarm(60)
    with contextlib.redirect_stderr(err):
        try:
            code = main(args)
        except MemoryError:
            code = "MemoryError"
    signal.alarm(0)
    out.append([code, err.getvalue(), sorted(os.listdir(d))])
print(json.dumps(out))
"""


def refusals(cases: list[list[str]], folder) -> list[tuple]:
    """(exit code, stderr, files made) of each command line, run one by one in a child
    process, each in a folder of its own (where relative paths point), each for at most
    60 s: a check that a command is refused must not hang when it is not."""
    import json
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", _REFUSER, json.dumps(cases), str(folder)],
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return [tuple(r) for r in json.loads(res.stdout)]


def planted(cls, **values):
    """A typed result of class `cls` with the planted `values` and None in every other
    field, for tests of code that reads only some fields."""
    import dataclasses

    return cls(**{f.name: values.pop(f.name, None) for f in dataclasses.fields(cls)},
               **values)
