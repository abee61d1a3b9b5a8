"""What a run needs before it starts: memory, disk space, a device.

`memory_bytes` estimates the peak memory of a training process from p, the hidden sizes,
the pairs and the collapse window; `disk_bytes` the bytes a run file grows by, from the
recording costs the README documents (a checkpoint is one parameter record, a keyframe
two more, an evaluation one float64 per metric). `check_runs` refuses what this machine
cannot hold, in one line that says how much is needed: memory always, disk space unless
forced (collapse windows, whose number nobody knows in advance, come on top).

    >>> check_runs([cfg], "data/runs")                     # ConfigError if it cannot fit
    >>> memory_bytes(cfg), disk_bytes(cfg, start_epoch=0)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.config import Config, ConfigError
from ..core.model import n_params
from ..core.train import METRICS

BASE_MEMORY = 400 * 2**20  # Python, torch and h5py themselves
RECORD_OVERHEAD = 64  # bytes per stored record beyond its data: chunk index, checksum
SKELETON = 64 * 1024  # a new run file's attributes and empty datasets
# metrics are stored 1,024 evaluations a chunk (store._ext_dataset)


def fmt_bytes(n: float) -> str:
    """1.5 KB, 216 KB, 2.16 TB: decimal units, three significant digits."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.3g} PB"  # pragma: no cover


def _itemsize(cfg: Config) -> int:
    return 4 if cfg.model.dtype == "float32" else 8


def memory_parts(cfg: Config) -> dict[str, int]:
    """The estimate's terms, in bytes: parameter-sized buffers (the step's parameters,
    gradient and Adam moments, keyframe copies, the collapse detector's ring buffer and an
    open window), the pairs (split and token arrays), one training step's activations, and
    the evaluation over all p^2 pairs."""
    p, hidden, item = cfg.data.p, cfg.model.hidden, _itemsize(cfg)
    pairs = p * p
    n_train = int(pairs * cfg.data.train_frac)
    k = cfg.record.window
    copies = 10 + (3 * k + 4 if k else 0)
    return {
        "parameters": n_params(p, hidden) * item * copies,
        "pairs": pairs * 8 * 6,
        "training step": n_train * (3 * sum(hidden) + 3 * p) * item,
        "evaluation": pairs * (2 * sum(hidden) + 3 * p) * item,
    }


def memory_bytes(cfg: Config) -> int:
    """Peak memory of a process that trains `cfg`, in bytes (an estimate, on the high side)."""
    return BASE_MEMORY + sum(memory_parts(cfg).values())


def epochs_left(cfg: Config, start_epoch: int = 0) -> int:
    """The most epochs the run can still train: to `epochs`, then `phase2_epochs` after a
    switch (which comes at the latest at `epochs`)."""
    sch = cfg.schedule
    end = sch.epochs + ((sch.phase2_epochs or 0) if sch.switch_s is not None else 0)
    return max(0, end - max(start_epoch, 0))


def record_bytes(cfg: Config) -> int:
    """One parameter record (a checkpoint; a keyframe holds two more, Adam's moments)."""
    return n_params(cfg.data.p, cfg.model.hidden) * _itemsize(cfg) + RECORD_OVERHEAD


def disk_parts(cfg: Config, start_epoch: int = 0) -> dict[str, int]:
    """Bytes the run file grows by from `start_epoch` on (the skeleton only for a new
    file), by kind of record."""
    rec = cfg.record
    e = epochs_left(cfg, start_epoch)
    record = record_bytes(cfg)
    pairs = cfg.data.p * cfg.data.p
    return {
        "checkpoints": (e // rec.ckpt_every + 1) * record,
        "keyframes": (e // rec.keyframe_every + 2) * 2 * record,
        "metrics": -(-(e // rec.eval_every + 2) // 1024) * 1024 * len(METRICS) * 8,  # chunks
        "skeleton": SKELETON + 3 * pairs * 8 if start_epoch <= 0 else 0,
    }


def disk_bytes(cfg: Config, start_epoch: int = 0) -> int:
    return sum(disk_parts(cfg, start_epoch).values())


def machine_memory() -> int:
    """This machine's memory in bytes, or its cgroup's limit if that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def free_disk(path: str | Path) -> tuple[Path, int]:
    """(the existing directory `path` is in or would be created in, its free bytes)."""
    d = Path(path).absolute()
    while not d.is_dir() and d != d.parent:
        d = d.parent
    return d, shutil.disk_usage(d).free


def _largest(parts: dict[str, int]) -> str:
    name = max(parts, key=parts.get)
    return f"{name} {fmt_bytes(parts[name])}"


def check_memory(configs: list[Config]) -> None:
    """Refuse runs that one process cannot hold in this machine's memory (no flag forces it:
    the process would be killed or thrash)."""
    need = sum(memory_bytes(c) for c in configs) - BASE_MEMORY * (len(configs) - 1)
    have = machine_memory()
    if need > have:
        c = max(configs, key=memory_bytes)
        what = "these runs need" if len(configs) > 1 else "this run needs"
        raise ConfigError(f"memory: {what} about {fmt_bytes(need)} (p = {c.data.p}, hidden "
                          f"{list(c.model.hidden)}, window {c.record.window}: "
                          f"{_largest(memory_parts(c))}), this machine has {fmt_bytes(have)}; "
                          "lower p, the hidden sizes or the window (--force does not "
                          "override memory)")


def check_disk(configs: list[Config], where: str | Path, *, start_epochs: list[int] | None = None,
               force: bool = False) -> None:
    """Refuse runs whose files would outgrow the free space where they go, unless `force`."""
    starts = start_epochs or [0] * len(configs)
    need = sum(disk_bytes(c, s) for c, s in zip(configs, starts))
    folder, free = free_disk(where)
    if need > free and not force:
        c = configs[0]
        e = epochs_left(c, starts[0])
        what = f"{len(configs)} runs" if len(configs) > 1 else "this run"
        raise ConfigError(
            f"disk: {what} would write about {fmt_bytes(need)} ({e:,} epochs, a checkpoint "
            f"of {fmt_bytes(record_bytes(c))} every {c.record.ckpt_every}, collapse windows "
            f"extra), {folder} has {fmt_bytes(free)} free; raise --ckpt-every, lower "
            "--epochs, or pass --force to start anyway")


def check_device(name: str) -> None:
    """Refuse a CUDA device this machine does not have."""
    if name == "cpu":
        return
    import torch
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name}: no CUDA device is available here (torch "
                          f"{torch.__version__}); use cpu")
    n = torch.cuda.device_count()
    if name.startswith("cuda:") and int(name[5:]) >= n:
        raise ConfigError(f"device {name}: this machine has {n} CUDA device(s), "
                          f"cuda:0 .. cuda:{n - 1}")


def check_runs(configs: list[Config], where: str | Path, *,
               start_epochs: list[int] | None = None, force_disk: bool = False) -> None:
    """Every check a run needs before it starts: device, memory, disk (see above)."""
    for name in sorted({c.device for c in configs}):
        check_device(name)
    check_memory(configs)
    check_disk(configs, where, start_epochs=start_epochs, force=force_disk)


__all__ = ["memory_bytes", "memory_parts", "disk_bytes", "disk_parts", "check_runs",
           "check_memory", "check_disk", "check_device", "machine_memory", "fmt_bytes",
           "epochs_left"]
