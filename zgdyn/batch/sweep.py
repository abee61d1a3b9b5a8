"""Sweeps: a grid or a list of runs over any config fields, on one machine or a Ray cluster.

A sweep is a TOML file:

    name = "phase_diagram"       # names the default folder, data/sweeps/<name>
    description = "..."
    [base]                       # flat config fields for every run (as `zgdyn train` flags)
    epochs = 40000
    [grid]                       # lists whose cartesian product gives the runs
    zipf_s = [0, 1, 1.5]
    weight_decay = [0.3, 1, 3]
    [[points]]                   # optional explicit runs; each is crossed with the grid
    lr = 3e-3
    [resources]                  # per run: Ray's resource request; threads of a local run
    num_cpus = 1
    num_gpus = 0

Every run writes an ordinary run file, SWEEP_DIR/runs/<field=value-...>.h5, named by the
fields the sweep varies; SWEEP_DIR/sweep.json describes the sweep and the outcome of each
run, so that `sweep_report` knows the axes. A sweep is resumable (finished runs skipped,
interrupted ones resumed, see `suite.plan`), and a run that fails, including a point whose
settings are invalid, is reported while the others go on.

    >>> sweep = load_sweep("experiments/sweep_phase_diagram.toml")
    >>> result = run_sweep(sweep, "data/sweeps/phase_diagram", jobs=2)
    >>> result = run_sweep(sweep, "/shared/sweeps/pd", executor="ray", address="HEAD:6379")
    >>> report = sweep_report("data/sweeps/phase_diagram")   # scorecards + phase diagram
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import Config, ConfigError, ZgdynError, flatten, from_flat, read_toml
from ..store.budget import check_disk, check_memory, memory_bytes
from .execute import execute
from .ray_backend import connect_ray, ray_backend
from .suite import RunSpec, check_name, plan

TOP_KEYS = {"name", "description", "base", "grid", "points", "resources"}
RESOURCE_KEYS = {"num_cpus", "num_gpus"}
EXECUTORS = ("local", "ray")
SWEEP_FILE = "sweep.json"
FORMAT = "zgdyn.batch.sweep"
SWEEPS_DIR = Path("data/sweeps")
MAX_RUNS = 10_000  # a larger sweep needs force (zgdyn sweep --force)
MAX_RESOURCES = 1024  # per run: num_cpus, num_gpus
MAX_LABEL = 200  # characters of a run's file name


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its values of the varied fields, and its config (None when its
    settings are invalid; `error` says why)."""

    label: str
    fields: dict[str, Any]
    config: Config | None
    error: str | None = None


@dataclass(frozen=True)
class Sweep:
    """A sweep file, validated (see the module docstring)."""

    name: str  # names the default directory, data/sweeps/<name>, and identifies the sweep
    description: str
    base: dict[str, Any]  # flat config fields for every run
    grid: dict[str, list[Any]]  # field -> values; the runs are the cartesian product
    points: list[dict[str, Any]]  # explicit runs (flat fields), each crossed with the grid
    num_cpus: float = 1.0  # per run: Ray's request, and a local run's torch threads
    num_gpus: float = 0.0  # per run: Ray's request
    source: str = ""

    @property
    def axes(self) -> list[str]:
        """The varied fields: the grid's, then those the points set, in order of appearance."""
        out = list(self.grid)
        for point in self.points:
            out += [k for k in point if k not in out]
        return out

    def runs(self) -> list[SweepRun]:
        """Every run: the points (or none) crossed with the grid's cartesian product."""
        return _expand(self.base, self.grid, self.points, self.axes)

    def definition(self) -> dict[str, Any]:
        """What sweep.json stores of the sweep itself."""
        return {"name": self.name, "description": self.description, "base": self.base,
                "grid": self.grid, "points": self.points, "axes": self.axes,
                "resources": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}}


def number_text(v: float) -> str:
    """A float in few characters that still tells every float apart: 1.5, 0.1234567, 1e-05."""
    short = f"{v:g}"
    return short if float(short) == v else repr(v)


def _value_text(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(_value_text(x) for x in v)
    if isinstance(v, float):
        return number_text(v)
    return re.sub(r"[^A-Za-z0-9.+-]", "_", str(v))


def run_label(fields: dict[str, Any]) -> str:
    """The file stem of a run: field=value pairs joined by '-', e.g. zipf_s=1.5-weight_decay=3."""
    return "-".join(f"{k}={_value_text(v)}" for k, v in fields.items()) or "base"


def _plain(v: Any) -> Any:
    """A TOML value as a config value: lists (hidden sizes) become tuples."""
    return tuple(v) if isinstance(v, list) else v


def _expand(base: dict[str, Any], grid: dict[str, list[Any]], points: list[dict[str, Any]],
            axes: list[str]) -> list[SweepRun]:
    defaults = flatten(Config())
    runs, seen = [], {}
    for point in points or [{}]:
        for combo in itertools.product(*grid.values()):
            changes = {**point, **dict(zip(grid, combo))}
            flat = {**defaults, **{k: _plain(v) for k, v in {**base, **changes}.items()}}
            fields = {k: flat[k] for k in axes}
            label = run_label(fields)
            if label in seen:
                raise ConfigError(f"two runs have the same settings ({label})")
            if len(label) > MAX_LABEL:
                raise ConfigError(f"the run {label[:40]}...: its file name would have "
                                  f"{len(label)} characters, more than {MAX_LABEL}; vary "
                                  "fewer fields")
            seen[label] = True
            try:
                cfg, error = from_flat(flat), None
            except (ConfigError, TypeError) as e:
                cfg, error = None, str(e)
            runs.append(SweepRun(label, fields, cfg, error))
    return runs


def sweep_from_dict(d: dict[str, Any], source: str = "", *,
                    max_runs: int | None = MAX_RUNS) -> Sweep:
    """Validate a sweep's TOML table (see the module docstring). Unknown keys and fields are
    errors; a point with invalid values becomes a failed run, unless every point is. A
    sweep that varies nothing is refused (it would be one run of [base]), and so is one of
    more than `max_runs` runs (None: no limit)."""
    where = f"sweep {source}" if source else "sweep"
    bad = sorted(set(d) - TOP_KEYS)
    if bad:
        raise ConfigError(f"{where}: unknown key {bad[0]!r}; allowed: {', '.join(sorted(TOP_KEYS))}")
    known = set(flatten(Config()))
    base, grid = d.get("base", {}), d.get("grid", {})
    points, res = d.get("points", []), d.get("resources", {})
    if not isinstance(base, dict) or not isinstance(grid, dict) or not isinstance(res, dict):
        raise ConfigError(f"{where}: [base], [grid] and [resources] must be tables")
    if not isinstance(points, list) or not all(isinstance(p, dict) and p for p in points):
        raise ConfigError(f"{where}: [[points]] must be tables of config fields")
    for sec, table in [("base", base), ("grid", grid)] + [("points", p) for p in points]:
        unknown = sorted(set(table) - known)
        if unknown:
            raise ConfigError(f"{where}: [{sec}] {unknown[0]}: unknown config field; allowed: "
                              f"{', '.join(sorted(known))}")
    for k, v in grid.items():
        if not isinstance(v, list) or not v:
            raise ConfigError(f"{where}: [grid] {k}: must be a non-empty list, got {v!r}")
        if len({json.dumps(x) for x in v}) != len(v):
            raise ConfigError(f"{where}: [grid] {k}: has a value twice: {v!r}")
    both = sorted({k for p in points for k in p} & set(grid))
    if both:
        raise ConfigError(f"{where}: {both[0]} is set by both [grid] and [[points]]")
    bad = sorted(set(res) - RESOURCE_KEYS)
    if bad:
        raise ConfigError(f"{where}: [resources] unknown key {bad[0]!r}; allowed: "
                          f"{', '.join(sorted(RESOURCE_KEYS))}")
    num_cpus, num_gpus = res.get("num_cpus", 1), res.get("num_gpus", 0)
    for k, v, lo in (("num_cpus", num_cpus, 1), ("num_gpus", num_gpus, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= lo \
                or not v <= MAX_RESOURCES:
            raise ConfigError(f"{where}: [resources] {k}: must be a number >= {lo} and <= "
                              f"{MAX_RESOURCES}, got {v!r}")
    if not grid and not points:
        raise ConfigError(f"{where}: varies nothing; give a [grid] of lists or [[points]] "
                          "(a single run is zgdyn train)")
    n_runs = math.prod(len(v) for v in grid.values()) * max(1, len(points))
    if max_runs is not None and n_runs > max_runs:
        sizes = " x ".join(str(len(v)) for v in grid.values()) or "1"
        raise ConfigError(f"{where}: {n_runs:,} runs ({sizes} grid values x "
                          f"{max(1, len(points))} points), more than {max_runs:,}; pass "
                          "--force to plan them all")
    name = check_name(f"{where}: name", d.get("name", Path(source).stem if source
                                              else "sweep"), "the sweep's folder")
    sweep = Sweep(name=name, description=str(d.get("description", "")), base=base,
                  grid=grid, points=points, num_cpus=float(num_cpus),
                  num_gpus=float(num_gpus), source=source)
    try:
        runs = sweep.runs()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if all(r.config is None for r in runs):
        raise ConfigError(f"{where}: every run is invalid, e.g. {runs[0].label}: "
                          f"{runs[0].error}")
    return sweep


def load_sweep(path: str | Path, *, max_runs: int | None = MAX_RUNS) -> Sweep:
    """Read and validate a sweep file."""
    return sweep_from_dict(read_toml(path, "sweep file"), str(path), max_runs=max_runs)


# -- the sweep directory ---------------------------------------------------------------------


def read_sweep_dir(out: str | Path) -> dict[str, Any] | None:
    """The sweep.json of a sweep directory, or None if there is none."""
    path = Path(out) / SWEEP_FILE
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ZgdynError(f"{path}: cannot be read ({what})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise ZgdynError(f"{path}: is not a zgdyn sweep description")
    problem = _sweep_json_problem(d)
    if problem:
        raise ZgdynError(f"{path}: damaged sweep description ({problem}); move it away or "
                         "run the sweep into another directory")
    return d


def _sweep_json_problem(d: dict[str, Any]) -> str | None:
    """What is wrong with a sweep.json's structure, or None."""
    if not isinstance(d.get("name"), str):
        return "no name"
    axes, runs = d.get("axes"), d.get("runs")
    if not (isinstance(axes, list) and all(isinstance(a, str) for a in axes)):
        return "axes must be a list of field names"
    if not isinstance(runs, list):
        return "runs must be a list"
    for r in runs:
        if not (isinstance(r, dict) and isinstance(r.get("label"), str)
                and isinstance(r.get("fields"), dict) and set(axes) <= set(r["fields"])
                and isinstance(r.get("path"), str)):
            return f"a run is not {{label, fields of every axis, path}}: {str(r)[:60]}"
        if Path(r["path"]).parts[:1] != ("runs",) or ".." in Path(r["path"]).parts:
            return f"a run's path {r['path']!r} is not inside runs/"
    return None


def _write_sweep_dir(out: Path, sweep: Sweep, runs: list[dict[str, Any]]) -> None:
    d = {"format": FORMAT, "format_version": 1, **sweep.definition(), "runs": runs}
    tmp = out / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(d, indent=1, default=list) + "\n")
    os.replace(tmp, out / SWEEP_FILE)


# -- Ray -------------------------------------------------------------------------------------


# -- running ---------------------------------------------------------------------------------


def run_sweep(sweep: Sweep, out: str | Path, *, executor: str = "local",
              address: str | None = None, jobs: int | None = None,
              threads: int | None = None, plugins: tuple[str, ...] = (),
              progress: bool = False, force_disk: bool = False) -> dict[str, Any]:
    """Run every run of `sweep` under `out`/runs, resumably; write `out`/sweep.json.

    executor "local": `jobs` processes (default: the cores / the sweep's num_cpus) of
    `threads` torch threads (default: num_cpus). "ray": one Ray task per run with the
    sweep's [resources], on the cluster at `address` (default: the instance this process
    is connected to, else RAY_ADDRESS, else a new local one of `jobs` × num_cpus CPUs);
    with a cluster, `out` must be on storage every node sees.
    Refuses runs that this machine's memory cannot hold, and runs whose files would outgrow
    the free disk space unless `force_disk` (`budget`).
    Returns {"runs": [{label, fields, path, planned, note, ok, error, seconds}], ...}.
    """
    if executor not in EXECUTORS:
        raise ZgdynError(f"executor: must be {' | '.join(EXECUTORS)}, got {executor!r}")
    for name, v in (("jobs", jobs), ("threads", threads)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ZgdynError(f"{name}: must be an integer >= 1, got {v!r}")
    if address is not None and executor != "ray":
        raise ZgdynError("address: only with executor ray")
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ZgdynError(f"{out}: is a file; a sweep needs a directory")
    old = read_sweep_dir(out)
    if old is not None and old.get("name") != sweep.name:
        raise ZgdynError(f"{out}: holds another sweep ({old.get('name')!r}, this one is "
                         f"{sweep.name!r}); give this sweep another directory")
    if old is None and out.is_dir() and any(out.iterdir()):
        raise ZgdynError(f"{out}: exists and is not a sweep directory; give the sweep "
                         "another directory")
    runs = sweep.runs()
    valid = [r for r in runs if r.config is not None]
    # a suite's RunSpec, with the run's label as its variant
    specs = [RunSpec("sweep", r.label, float(r.config.data.zipf_s), r.config.seed, r.config,
                     out / "runs" / f"{r.label}.h5") for r in valid]
    tasks = plan(specs)  # refuses a run file holding another config, before anything starts
    todo = [t for t in tasks if t.action in ("train", "resume")]
    if todo:
        check_memory([max((t.spec.config for t in todo), key=memory_bytes)])
        check_disk([t.spec.config for t in todo], out, force=force_disk,
                   start_epochs=[t.start_epoch for t in todo])
    cpus = max(1, int(sweep.num_cpus))
    threads = threads or cpus
    if jobs is None:
        jobs = max(1, (os.cpu_count() or 1) // cpus)
    t0 = time.perf_counter()
    rows = {r.label: {"label": r.label, "fields": r.fields,
                      "path": str(Path("runs") / f"{r.label}.h5"),
                      "planned": "invalid" if r.config is None else None, "note": "",
                      "ok": r.config is not None, "error": r.error, "seconds": 0.0}
            for r in runs}
    for t in tasks:
        rows[t.spec.variant].update(planned=t.action, note=t.note)
    ray, started, backend = None, False, None
    if executor == "ray":
        ray, started = connect_ray(address, jobs * cpus if address is None else None)
        backend = ray_backend(ray, sweep, threads, plugins)
    try:
        out.mkdir(parents=True, exist_ok=True)
        _write_sweep_dir(out, sweep, list(rows.values()))
        results = execute(tasks, jobs=jobs, threads=threads, plugins=plugins,
                          progress=progress, desc=f"{sweep.name}: {len(tasks)} runs",
                          backend=backend, force_disk=force_disk)
    finally:
        if started:
            ray.shutdown()
    for t, res in zip(tasks, results):
        rows[t.spec.variant].update(ok=res["ok"], error=res["error"],
                                    seconds=res["seconds"])
    _write_sweep_dir(out, sweep, list(rows.values()))
    return {"name": sweep.name, "out": str(out), "executor": executor, "address": address,
            "jobs": jobs if executor == "local" else None, "threads": threads,
            "runs": list(rows.values()),
            "failed": {r["label"]: r["error"] for r in rows.values() if not r["ok"]},
            "seconds": time.perf_counter() - t0}


# -- the report ------------------------------------------------------------------------------

PHASE_METRICS = ("collapses_per_100k", "frac_above_95")


def _key(v: Any) -> str:
    return json.dumps(v)


def _order(key: str) -> tuple:
    """Sorts axis values: numbers, then lists (hidden sizes), then the rest as text."""
    v = json.loads(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return (0, v)
    if isinstance(v, list) and all(isinstance(x, (int, float)) for x in v):
        return (1, v)
    return (2, "" if v is None else str(v))


def phase_grid(rows: list[dict[str, Any]], x: str, y: str | None,
               metrics: tuple[str, ...] = PHASE_METRICS) -> dict[str, Any]:
    """The metrics over the (x, y) plane: {"x", "y", "xs", "ys", metric: (len(ys), len(xs))
    nested list of the mean over the scored runs at that point (other fields, e.g. seeds,
    averaged; None where none has a value), "n": the runs averaged}. y None: one row."""
    def at(r: dict[str, Any], f: str | None) -> str:
        return _key(r["fields"][f] if f is not None else None)

    xs = sorted({at(r, x) for r in rows}, key=_order)
    ys = sorted({at(r, y) for r in rows}, key=_order)
    cards = {(ky, kx): [r["card"] for r in rows if r.get("card") is not None
                        and at(r, x) == kx and at(r, y) == ky] for ky in ys for kx in xs}
    out: dict[str, Any] = {"x": x, "y": y, "xs": [json.loads(k) for k in xs],
                           "ys": [json.loads(k) for k in ys],
                           "n": [[len(cards[ky, kx]) for kx in xs] for ky in ys]}
    for m in metrics:
        means = [[[c[m] for c in cards[ky, kx] if c.get(m) is not None] for kx in xs]
                 for ky in ys]
        out[m] = [[float(np.mean(v)) if v else None for v in row] for row in means]
    return out


def sweep_report(out: str | Path, *, x: str | None = None,
                 y: str | None = None) -> dict[str, Any]:
    """Every run of the sweep in `out` with its scorecard (None if it has no file yet), and
    the phase grid over (x, y): by default (zipf_s, weight_decay) when the sweep varies
    both, else its first two varied fields (with one, a single row)."""
    from .scorecard import scorecard

    d = read_sweep_dir(out)
    if d is None:
        raise ZgdynError(f"{out}: is not a sweep directory (no {SWEEP_FILE}); run zgdyn sweep "
                         "first")
    axes = list(d["axes"])
    if x is None and y is None:
        x, y = ("zipf_s", "weight_decay") if {"zipf_s", "weight_decay"} <= set(axes) \
            else (axes + [None, None])[:2]
    for name, v in (("x", x), ("y", y)):
        if v is not None and v not in axes:
            raise ZgdynError(f"{name}: {v!r} is not a field the sweep varies; it varies "
                             f"{', '.join(axes) or 'nothing'}")
    rows = []
    for r in d["runs"]:
        path = Path(out) / r["path"]
        card, error = None, r.get("error")
        if path.exists():
            try:
                card = scorecard(path).to_dict()
            except ZgdynError as e:
                error = str(e)
        status = card["status"] if card else ("invalid" if r.get("planned") == "invalid"
                                               else "failed" if error else "not started")
        rows.append({"label": r["label"], "fields": r["fields"], "path": str(path),
                     "status": status, "error": error, "card": card})
    return {"name": d["name"], "description": d.get("description", ""), "out": str(out),
            "axes": axes, "base": d.get("base", {}), "rows": rows,
            "phase": phase_grid(rows, x, y) if x is not None else None}


__all__ = ["Sweep", "SweepRun", "load_sweep", "sweep_from_dict", "run_sweep", "sweep_report",
           "phase_grid", "run_label", "read_sweep_dir", "EXECUTORS", "MAX_RUNS", "SWEEPS_DIR",
           "number_text"]
