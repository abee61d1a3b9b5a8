"""Running a sweep's runs as Ray tasks, locally or on a cluster: each task one run, its
progress sent to an actor that the driver drains. Ray is imported only here, and only when
a sweep asks for it (`zgdyn sweep --executor ray`)."""

from __future__ import annotations

import math
import os
import time
from typing import TYPE_CHECKING, Any, Callable

from ..core.config import ZgdynError
from .execute import Backend, run_task

if TYPE_CHECKING:
    from .sweep import Sweep


class _Progress:
    """A Ray actor that collects the runs' progress messages for the driver's bar."""

    def __init__(self) -> None:
        self.messages: list[tuple[int, int, int]] = []

    def put(self, msg: tuple[int, int, int]) -> None:
        self.messages.append(msg)

    def take(self) -> list[tuple[int, int, int]]:
        out, self.messages = self.messages, []
        return out


class _Sender:
    """Forwards a run's progress to the `_Progress` actor, at most every `every` seconds
    (and always the last message), without waiting for it."""

    def __init__(self, actor: Any, every: float = 0.5) -> None:
        self.actor, self.every, self.last = actor, every, -math.inf

    def put(self, msg: tuple[int, int, int]) -> None:
        now = time.monotonic()
        if msg[1] >= msg[2] or now - self.last >= self.every:
            self.actor.put.remote(msg)
            self.last = now


def _ray_task(actor: Any, threads: int, plugins: list[str], *args: Any) -> dict[str, Any]:
    """One run as a Ray task: `execute.run_task` with progress sent to `actor`."""
    import torch

    from ..core.hooks import load_plugins

    torch.set_num_threads(threads)
    load_plugins(plugins)
    return run_task(*args, send=_Sender(actor).put)


def _one_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


def ray_backend(ray: Any, sweep: Sweep, threads: int,
                 plugins: tuple[str, ...]) -> Backend:
    """Runs each task as a Ray task requesting the sweep's CPUs and GPUs."""

    def backend(todo: list[int], args: Callable[[int], tuple], receive: Callable,
                done: Callable) -> None:
        actor = ray.remote(num_cpus=0)(_Progress).remote()
        remote = ray.remote(_ray_task).options(num_cpus=sweep.num_cpus,
                                               num_gpus=sweep.num_gpus, max_retries=0)
        refs = {remote.remote(actor, threads, list(plugins), *args(i)): i for i in todo}
        pending = list(refs)

        def drain() -> None:
            for msg in ray.get(actor.take.remote()):
                receive(tuple(msg))

        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                drain()
                for ref in ready:
                    try:
                        res = ray.get(ref)
                    except Exception as e:  # the task's worker or node died
                        res = {"ok": False, "error": f"ray task failed: {_one_line(e)}",
                               "seconds": math.nan}
                    done(refs[ref], res)
            drain()
        except KeyboardInterrupt:
            # a running task hears KeyboardInterrupt as a signal: it stops at a keyframe
            for ref in pending:
                ray.cancel(ref)
            ray.wait(pending, num_returns=len(pending), timeout=30)
            raise

    return backend


def connect_ray(address: str | None, cpus: int | None) -> tuple[Any, bool]:
    """Ray, connected to the cluster at `address` or RAY_ADDRESS (or to the instance this
    process already runs, or a new local one of `cpus` CPUs); and whether this call
    connected."""
    try:
        import ray
    except ImportError:
        raise ZgdynError("--executor ray needs Ray: pip install 'zgdyn[cluster]'") from None
    if ray.is_initialized():
        return ray, False
    import logging
    address = address or os.environ.get("RAY_ADDRESS")
    try:
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:  # "local": a new instance, never a stale one from an earlier `ray start`
            ray.init(address="local", num_cpus=cpus, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise ZgdynError(f"ray: cannot connect to {address or 'a local instance'}: "
                         f"{_one_line(e)}") from None
    return ray, True


__all__ = ["ray_backend", "connect_ray"]
