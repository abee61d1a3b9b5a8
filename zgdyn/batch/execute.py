"""Running a suite's or a sweep's runs: each a `Task` (train, resume, or done), run here,
in a pool of worker processes (each dies with its parent, stopping its run at a keyframe),
or by a backend such as an ensemble or Ray; progress comes back as (task, epoch, end).

    >>> results = execute(plan(specs), jobs=2, threads=1, progress=True)
"""

from __future__ import annotations

import math
import os
import queue as queue_mod
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..core.config import Config, ZgdynError
from ..core.runtime import torch_threads
from ..core.train import Callback, Trainer

if TYPE_CHECKING:
    from .suite import RunSpec


@dataclass
class Task:
    """What to do for one run: "train", "resume" (with config changes), "done", or
    "digest" (done elsewhere: its file is absent, its digest stands for it)."""

    spec: RunSpec
    action: str
    changes: dict[str, Any] = field(default_factory=dict)
    start_epoch: int = 0
    note: str = ""


def expected_epochs(cfg: Config, epoch: int = 0) -> int:
    """The epochs a run will take, seen from `epoch` before its switch: a two-phase run's
    switch is guessed at 60% of its cap (and not before `epoch`)."""
    sch = cfg.schedule
    if sch.switch_s is None or sch.phase2_epochs is None:
        return sch.epochs
    switch = sch.switch_at_epoch if sch.switch_at_epoch is not None else int(0.6 * sch.epochs)
    return max(switch, epoch) + sch.phase2_epochs


class _Report(Callback):
    """Sends (task index, epoch, end epoch) at every evaluation."""

    def __init__(self, index: int, send: Callable[[tuple[int, int, int]], None]) -> None:
        self.index, self.send = index, send

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        end = (trainer.end_epoch if trainer.phase == 1 else
               expected_epochs(trainer.config, trainer.epoch))
        self.send((self.index, trainer.epoch, end))

    def on_end(self, trainer: Trainer) -> None:
        self.send((self.index, trainer.epoch, trainer.epoch))


_QUEUE: Any = None
# in a pool worker: set once the parent process is gone; held while a run trains
_ORPHANED = threading.Event()
_BUSY = threading.Lock()
# in a pool worker: set once a run of it was stopped (SIGTERM from the parent's stop), so
# that a run the pool had already queued for it is not started after the stop
_STOPPING = threading.Event()
STOPPED = "stopped (resume it by running the suite again)"


def _init_worker(q: Any, threads: int, plugins: list[str]) -> None:
    import torch

    from ..core.hooks import load_plugins

    global _QUEUE
    _QUEUE = q
    torch.set_num_threads(threads)
    # Ctrl-C reaches the whole process group; the parent asks the workers to stop instead
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    load_plugins(plugins)


def _watch_parent(parent: int, every: float = 0.2) -> None:
    """A pool worker dies with its parent: once the parent is gone (this process is
    re-parented), the run under way stops at its next evaluation with a keyframe
    (`_StopWhenOrphaned`), and the worker exits, releasing its run file."""
    while os.getppid() == parent:
        time.sleep(every)
    _ORPHANED.set()
    with _BUSY:  # waits for the run under way to stop and close its file
        os._exit(0)


class _StopWhenOrphaned(Callback):
    """Asks the trainer to stop (keyframe, commit) once the parent process is gone."""

    def on_eval(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if _ORPHANED.is_set():
            trainer.stop_requested = True


def run_task(index: int, path: str, config_json: str, action: str, changes: dict[str, Any],
             force_disk: bool = False, *,
             send: Callable[[tuple[int, int, int]], None] | None = None) -> dict[str, Any]:
    """Train or resume one run, here, in a pool worker or in a Ray task: its progress
    (index, epoch, end) goes to `send` (default: the pool worker's queue; nowhere in
    this process)."""
    import json

    from ..core.config import from_dict
    from ..store.runner import resume_run, train_run

    if send is None:
        send = _QUEUE.put if _QUEUE is not None else (lambda msg: None)
    cb = [_Report(index, send), _StopWhenOrphaned()]
    t0 = time.perf_counter()
    with _BUSY:
        if _ORPHANED.is_set() or _STOPPING.is_set():
            return {"ok": False, "error": STOPPED, "stopped": True, "seconds": 0.0}
        try:
            if action == "train":
                trainer = train_run(from_dict(json.loads(config_json)), path, callbacks=cb,
                                    force_disk=force_disk)
            else:
                trainer = resume_run(path, changes=changes, callbacks=cb,
                                     force_disk=force_disk)
            if trainer.stopped_early:  # Ctrl-C, SIGTERM, the parent gone: at a keyframe
                if _QUEUE is not None:  # a pool worker: it starts nothing more
                    _STOPPING.set()
                return {"ok": False, "error": STOPPED, "stopped": True,
                        "seconds": time.perf_counter() - t0}
        except ZgdynError as e:
            return {"ok": False, "error": str(e), "seconds": time.perf_counter() - t0}
        except Exception as e:  # a bug or an I/O failure in one run must not stop the others
            return {"ok": False, "error": f"{type(e).__name__}: {e}",
                    "seconds": time.perf_counter() - t0}
    return {"ok": True, "error": None, "seconds": time.perf_counter() - t0}


# runs tasks elsewhere: backend(todo, args, receive, done) calls done(i, result) for every
# task index in `todo`, with args(i) the arguments of `run_task`, and passes each progress
# message (i, epoch, end epoch) to receive
Backend = Callable[[list[int], Callable[[int], tuple], Callable, Callable], None]


def ensemble_backend(size: int | None = None, *, mode: str = "auto") -> Backend:
    """A backend that trains the tasks here as ensembles (`zgdyn.core.ensemble`) of at most
    `size` members: runs that share their shapes, fresh ones and resumed ones apart. On a
    GPU this is the fast way through a suite."""

    def run(todo: list[int], args: Callable[[int], tuple], receive: Callable,
            done: Callable) -> None:
        import json

        from ..core.config import from_dict
        from ..core.ensemble import _shared
        from ..store.runner import train_ensemble

        groups: dict[tuple, list[tuple[int, Config, str]]] = {}
        for i in todo:
            _, path, config_json, action, changes, _ = args(i)
            cfg = from_dict(json.loads(config_json))
            groups.setdefault((action, json.dumps(changes, sort_keys=True), _shared(cfg)),
                              []).append((i, cfg, path))
        for (action, changes, _), members in groups.items():
            step = size or len(members)
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                t0 = time.perf_counter()
                try:
                    results = train_ensemble(
                        [c for _, c, _ in chunk], [p for _, _, p in chunk],
                        mode=mode, resume=action == "resume",
                        changes=json.loads(changes) if action == "resume" else None,
                        callbacks=[[_Report(i, receive)] for i, _, _ in chunk])
                except ZgdynError as e:
                    for i, _, _ in chunk:
                        done(i, {"ok": False, "error": str(e), "seconds": 0.0})
                    continue
                seconds = time.perf_counter() - t0
                for (i, _, _), r in zip(chunk, results):
                    stopped = r.error is None and r.trainer.stopped_early
                    done(i, {"ok": r.error is None and not stopped, "seconds": seconds,
                             "error": STOPPED if stopped else r.error, "stopped": stopped})
                if any(r.trainer.stopped_early for r in results):
                    raise KeyboardInterrupt  # Ctrl-C: start nothing more

    return run


def execute(tasks: list[Task], *, jobs: int = 1, threads: int | None = None,
            plugins: tuple[str, ...] = (), progress: bool = False,
            desc: str = "runs", backend: Backend | None = None,
            force_disk: bool = False,
            on_finished: Callable[[Task], None] | None = None) -> list[dict[str, Any]]:
    """Run the "train" and "resume" tasks, `jobs` at a time. Returns one result per task:
    {"path", "action", "ok", "error", "seconds"}; "done" and "digest" tasks are ok with 0
    seconds.

    jobs > 1 runs each task in its own process (spawned) with `threads` torch threads
    (default: the cores divided among the jobs); jobs = 1 runs them here, one by one;
    a `backend` (a cluster's scheduler, see zgdyn.batch.sweep) runs them wherever it runs them.
    SIGTERM stops them as Ctrl-C does; a worker whose parent dies stops at a keyframe and
    exits. `force_disk`: start runs even where the disk estimate says they will not fit.
    `on_finished` hears each task whose run ended well (not stopped), here, as it ends,
    while the others go on; an exception it raises (but Ctrl-C) becomes the task's note.
    """
    import multiprocessing as mp

    todo = [i for i, t in enumerate(tasks) if t.action in ("train", "resume")]
    results: list[dict[str, Any]] = [
        {"path": str(t.spec.path), "action": t.action, "ok": t.action in ("done", "digest"),
         "error": t.note if t.action == "failed" else None, "note": t.note, "seconds": 0.0}
        for t in tasks]
    if not todo:
        return results
    jobs = max(1, min(jobs, len(todo)))
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    start = {i: tasks[i].start_epoch for i in todo}
    ends = {i: max(expected_epochs(tasks[i].spec.config), start[i]) for i in todo}
    now = dict(start)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(ends[i] - start[i] for i in todo), desc=desc,
                   unit="epoch", unit_scale=True, smoothing=0.05)
        bar.set_postfix(runs=f"0/{len(todo)}")
    finished, failed = [0], [0]

    def receive(msg: tuple[int, int, int]) -> None:
        i, epoch, end = msg
        step = epoch - now[i]
        now[i] = epoch
        if bar is not None:
            if end != ends[i]:
                ends[i] = end
                bar.total = sum(ends[j] - start[j] for j in todo)
            bar.update(step)  # tqdm redraws at most every mininterval

    def done(i: int, res: dict[str, Any]) -> None:
        results[i].update(res)
        finished[0] += 1
        failed[0] += not res["ok"] and not res.get("stopped")  # a stop is not a failure
        if bar is not None:
            bar.set_postfix(runs=f"{finished[0]}/{len(todo)}", failed=failed[0])
        if on_finished is not None and res["ok"] and not res.get("stopped"):
            try:
                on_finished(tasks[i])
            except Exception as e:  # the run is done; what follows it must not stop the pool
                results[i]["note"] = f"after the run: {type(e).__name__}: {e}"

    def args(i: int) -> tuple:
        t = tasks[i]
        return (i, str(t.spec.path), t.spec.config.to_json(), t.action, t.changes, force_disk)

    try:
        if backend is not None:
            for i in todo:
                tasks[i].spec.path.parent.mkdir(parents=True, exist_ok=True)
            backend(todo, args, receive, done)
        elif jobs == 1:
            with torch_threads(threads), _sigterm_interrupts():
                for i in todo:
                    tasks[i].spec.path.parent.mkdir(parents=True, exist_ok=True)
                    res = run_task(*args(i), send=receive)
                    done(i, res)
                    if res.get("stopped"):  # the user asked to stop: start nothing more
                        raise KeyboardInterrupt
        else:
            with _sigterm_interrupts():
                _run_pool(tasks, todo, jobs, threads, plugins, args, receive, done, mp)
    finally:
        if bar is not None:
            bar.close()
    return results


class _Terminated(KeyboardInterrupt):
    """SIGTERM, taken as Ctrl-C."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here (main thread only), so that the pool's
    workers are stopped at their keyframes and waited for, as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        raise _Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _run_pool(tasks: list[Task], todo: list[int], jobs: int, threads: int,
              plugins: tuple[str, ...], args: Callable, receive: Callable, done: Callable,
              mp: Any) -> None:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    for i in todo:
        tasks[i].spec.path.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker,
                             initargs=(q, threads, list(plugins))) as pool:
        # the longest first, so the pool's last run to finish is a short one
        order = sorted(todo, key=lambda i: -(expected_epochs(tasks[i].spec.config)
                                             - tasks[i].start_epoch))
        futures: dict[Future, int] = {pool.submit(run_task, *args(i)): i for i in order}
        pending = set(futures)
        try:
            while pending:
                ready, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(q, receive)
                for f in ready:
                    try:
                        res = f.result()
                    except Exception as e:  # the worker process died
                        res = {"ok": False, "error": f"worker died: {e}", "seconds": math.nan}
                    done(futures[f], res)
                    if res.get("stopped"):  # a worker was told to stop: so is the suite
                        raise KeyboardInterrupt
            _drain(q, receive)
        except KeyboardInterrupt:
            _stop_pool(pool, pending)
            raise


STOP_WAIT = 120.0  # seconds a stopped worker may take to keyframe, commit and exit


def _stop_pool(pool: ProcessPoolExecutor, pending: set[Future]) -> None:
    """Ctrl-C or SIGTERM: cancel the runs that have not started, stop the running ones at
    their next epoch (SIGTERM to each worker: its trainer keyframes and commits; workers
    ignore SIGINT), wait for them, then kill any worker still there. A worker idle in the
    pool's queue dies of the SIGTERM, maybe holding the queue's lock; one that finished
    its run afterwards would block on that lock for ever, and the pool's shutdown with it."""
    for f in pending:
        f.cancel()
    workers = [p for p in list(getattr(pool, "_processes", {}).values()) if p.is_alive()]
    for proc in workers:
        proc.terminate()
    deadline = time.monotonic() + STOP_WAIT
    running = [f for f in pending if not f.cancelled()]
    wait(running, timeout=STOP_WAIT)
    for proc in workers:
        proc.join(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        if proc.is_alive():  # done with its run (or past the wait), blocked in the queue
            proc.kill()
            proc.join()


def _drain(q: Any, receive: Callable) -> None:
    while True:
        try:
            receive(q.get_nowait())
        except queue_mod.Empty:
            return


__all__ = ["Task", "expected_epochs", "run_task", "Backend", "ensemble_backend", "execute",
           "STOPPED", "STOP_WAIT"]
