"""The process's resources that runs and analyses share: torch's CPU thread count, the
CPU's flush-to-zero mode, and progress bars on stderr."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's CPU thread count set to n inside, restored after (a replay is bitwise only
    with the thread count the run was trained with)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@contextmanager
def flush_to_zero(on: bool) -> Iterator[None]:
    """With `on`, the CPU computes subnormal floats as zero inside (flush-to-zero and
    denormals-are-zero, `torch.set_flush_denormal`), and torch's default, off, after. It
    sets the calling thread's mode only, so with more than one thread torch's worker threads
    keep computing subnormals (slowly)."""
    if not on:
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def progress_bar(progress: bool, **kw: Any) -> Any:
    """A tqdm bar on stderr with tqdm's keywords `kw` (hidden where stderr is not a
    terminal), or None without `progress`."""
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(disable=None, **kw)


__all__ = ["torch_threads", "flush_to_zero", "progress_bar"]
