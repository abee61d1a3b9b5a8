"""The intervention benchmark's table: each variant of a suite (a method) against the
baseline, one row each, ranked by the phase-2 mean test accuracy at one exponent.

A row holds, over the seeds that finished: the phase-2 mean test accuracy at every
two-phase exponent, the lowest test accuracy and the time below 50% in phase 2 at the
ranking exponent, the collapses per 100k epochs and the first epoch at ≥ 95% test of the
single-phase runs, and the method's cost: its epoch time over the baseline's, measured
side by side in this process (alternating rounds, the median), not read from the runs,
whose wall-clock depends on what else the machine did.

    >>> board = leaderboard(load_suite("interventions"), "data/interventions")
    >>> board.rows[0].variant, board.conclusion
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.config import ZgdynError
from ..core.results import Result
from .digest import digest_curve, matching_digest, suite_folder
from .scorecard import Scorecard, aggregate, scorecard
from .suite import RunSpec, Suite

HOLDS = 0.95  # "holds the solution": a phase-2 mean test accuracy above this at rank_s
COST_EPOCHS, COST_ROUNDS = 50, 5  # the cost column: epochs timed per round, rounds


@dataclass(frozen=True)
class Stat(Result):
    """Mean ± std over the seeds with a value, how many had one, and how many ran."""

    mean: float | None
    std: float | None
    n: int
    runs: int


@dataclass(frozen=True)
class LeaderRow(Result):
    """One method (a suite variant): see the module docstring. `phase2_mean` maps each
    two-phase exponent (as text, "2") to its Stat; `rank` is None while the method has no
    finished run at the ranking exponent, `cost` None where it was not measured."""

    rank: int | None
    variant: str
    overrides: dict[str, Any]
    phase2_mean: dict[str, Stat]
    phase2_min: Stat
    phase2_below_50: Stat
    collapses_per_100k: Stat
    first_95: Stat
    cost: float | None
    holds: bool


@dataclass(frozen=True)
class Leaderboard(Result):
    """What `leaderboard` returns (`zgdyn leaderboard --json`)."""

    suite: str
    out: str
    baseline: str
    rank_s: float
    two_phase_s: tuple[float, ...]
    single_s: tuple[float, ...]
    rows: tuple[LeaderRow, ...]
    missing: tuple[str, ...]  # runs of the suite with no finished file
    conclusion: str


def _stat(cards: list[Scorecard], field: str) -> Stat:
    agg = aggregate(cards)[field]
    return Stat(mean=agg["mean"], std=agg["std"], n=agg["n"], runs=len(cards))


def _digest_root(suite: Suite, digests: str | Path | None) -> Path | None:
    """The suite's digest folder under `digests`."""
    return None if digests is None else suite_folder(digests, suite.name)


def _cards(specs: list[RunSpec], root: Path | None) -> tuple[dict[str, Scorecard], list[str]]:
    """The scorecards of the complete runs, by path, from their files or, where there is
    no complete file, their digests under `root`; and the paths of the others."""
    cards, missing = {}, []
    for sp in specs:
        card = scorecard(sp.path) if Path(sp.path).exists() else None
        if (card is None or card.status != "complete") and root is not None:
            d = matching_digest(root, sp)
            card = card if d is None else d.card
        if card is not None and card.status == "complete":
            cards[str(sp.path)] = card
        else:
            missing.append(str(sp.path))
    return cards, missing


def epoch_costs(configs: dict[str, Any], *, epochs: int = COST_EPOCHS,
                rounds: int = COST_ROUNDS,
                on_round: Callable[[int], None] = lambda i: None) -> dict[str, float]:
    """Seconds per epoch of each config's training step (hook, optimizer and loss
    included, evaluation not), the configs alternating round by round; the median."""
    from ..core.train import Trainer

    trainers = {k: Trainer(c) for k, c in configs.items()}
    times: dict[str, list[float]] = {k: [] for k in trainers}
    for t in trainers.values():
        t.step.step()  # warm-up
    for i in range(rounds):
        for k, t in trainers.items():
            t0 = time.perf_counter()
            for _ in range(epochs):
                t.step.step()
            times[k].append((time.perf_counter() - t0) / epochs)
        on_round(i)
    return {k: statistics.median(v) for k, v in times.items()}


def leaderboard(suite: Suite, out: str | Path, *, rank_s: float = 2.0, cost: bool = True,
                digests: str | Path | None = None,
                on_round: Callable[[int], None] = lambda i: None) -> Leaderboard:
    """The table of `suite`'s variants from the runs under `out` (as `zgdyn reproduce
    --out` wrote them), and, for runs with no file there, from their digests under
    `digests`/<suite> (`zgdyn.batch.digest`). The first variant is the baseline. rank_s:
    the two-phase exponent that ranks the rows; cost: measure each variant's epoch time
    against the baseline's."""
    specs = suite.runs(Path(out))
    two = sorted({sp.s for sp in specs if sp.table == "two_phase"})
    single = sorted({sp.s for sp in specs if sp.table == "single"})
    if rank_s not in two:
        raise ZgdynError(f"rank_s: must be one of the suite's two-phase exponents "
                         f"{[f'{s:g}' for s in two] or 'none'}, got {rank_s:g}")
    cards, missing = _cards(specs, _digest_root(suite, digests))
    variants = list(suite.variants)
    costs = epoch_costs(_cost_configs(specs, variants), on_round=on_round) if cost else {}
    rows = []
    for v in variants:
        mine = lambda table, s=None: [cards[str(sp.path)] for sp in specs
                                      if sp.variant == v and sp.table == table
                                      and (s is None or sp.s == s) and str(sp.path) in cards]
        at = mine("two_phase", rank_s)
        mean = {f"{s:g}": _stat(mine("two_phase", s), "phase2_mean_test") for s in two}
        rows.append(dict(variant=v, overrides=suite.variants[v], phase2_mean=mean,
                         phase2_min=_stat(at, "phase2_min_test"),
                         phase2_below_50=_stat(at, "phase2_frac_below_50"),
                         collapses_per_100k=_stat(mine("single"), "collapses_per_100k"),
                         first_95=_stat(mine("single"), "first_95"),
                         cost=costs[v] / costs[variants[0]] if v in costs else None,
                         holds=(mean[f"{rank_s:g}"].mean or 0.0) > HOLDS))
    key = lambda r: (r["phase2_mean"][f"{rank_s:g}"].mean is None,
                     -(r["phase2_mean"][f"{rank_s:g}"].mean or 0.0))
    ranked = tuple(LeaderRow(rank=None if key(r)[0] else i + 1, **r)
                   for i, r in enumerate(sorted(rows, key=key)))
    return Leaderboard(suite=suite.name, out=str(out), baseline=variants[0], rank_s=rank_s,
                       two_phase_s=tuple(two), single_s=tuple(single), rows=ranked,
                       missing=tuple(missing),
                       conclusion=board_conclusion(ranked, variants[0], rank_s))


def _cost_configs(specs: list[RunSpec], variants: list[str]) -> dict[str, Any]:
    """One config per variant to time: its first run's (a single-phase one if it has
    one, as Zipf-weighted from the first epoch)."""
    out = {}
    for v in variants:
        mine = sorted((sp for sp in specs if sp.variant == v), key=lambda sp: sp.table != "single")
        if mine:
            out[v] = mine[0].config
    return out


def board_conclusion(rows: tuple[LeaderRow, ...], baseline: str, rank_s: float) -> str:
    """The table in words: the best method at rank_s against the baseline, and whether
    any method holds the solution (phase-2 mean above HOLDS) there."""
    key = f"{rank_s:g}"
    scored = [r for r in rows if r.phase2_mean[key].mean is not None]
    base = next((r for r in scored if r.variant == baseline), None)
    if not scored or base is None:
        return (f"Nothing to rank yet: no finished two-phase run at s = {key}"
                + ("" if base is not None or not scored else f" of the baseline {baseline}")
                + ".")
    best = scored[0]
    seeds = lambda r: f"{r.phase2_mean[key].n} seed{'s' if r.phase2_mean[key].n != 1 else ''}"
    text = (f"At s = {key}, {best.variant} ranks first with a phase-2 mean test accuracy of "
            f"{100 * best.phase2_mean[key].mean:.1f}% ({seeds(best)}), against "
            f"{100 * base.phase2_mean[key].mean:.1f}% for {baseline} ({seeds(base)})"
            if best.variant != baseline else
            f"At s = {key}, no method beats {baseline} "
            f"({100 * base.phase2_mean[key].mean:.1f}%, {seeds(base)})")
    stuck = [r.variant for r in rows if r.phase2_mean[key].runs and r.phase2_mean[key].n == 0]
    held = [r.variant for r in scored if r.holds]
    text += (f". {', '.join(held)} hold{'s' if len(held) == 1 else ''} the solution there "
             f"(phase-2 mean above {100 * HOLDS:.0f}%)" if held else
             f". No method holds the solution there (phase-2 mean above {100 * HOLDS:.0f}%)")
    if stuck:
        text += (f". {', '.join(stuck)} never reached the switch: phase 1 did not end, so "
                 "there is no phase 2 to rank")
    return text + "."


def _finished(sp: RunSpec, root: Path | None) -> tuple[int, dict[str, np.ndarray]] | None:
    """(switch epoch, metrics) of a complete two-phase run that switched, from its file or,
    where there is no complete file, its digest; None for any other."""
    from ..store.reader import open_run

    got = None
    if Path(sp.path).exists():
        with open_run(sp.path) as run:
            if run.attrs["status"] == "complete":
                got = int(run.attrs["switch_epoch"]), run.metrics
    if got is None and root is not None:
        d = matching_digest(root, sp)
        if d is not None:
            got = -1 if d.card.switch_epoch is None else d.card.switch_epoch, digest_curve(d)
    return None if got is None or got[0] < 0 else got


def phase2_curves(suite: Suite, out: str | Path, s: float, *,
                  digests: str | Path | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Per variant, the phase-2 test accuracy of its finished two-phase runs at `s` (from
    their files under `out`, or their digests under `digests`), on the epochs since the
    switch (the evaluation grid of the first run): {"epoch", "mean", "lo", "hi", "n"} (lo
    and hi the seeds' lowest and highest)."""
    out_curves: dict[str, dict[str, np.ndarray]] = {}
    root = _digest_root(suite, digests)
    specs = [sp for sp in suite.runs(Path(out)) if sp.table == "two_phase" and sp.s == s]
    for v in suite.variants:
        series = []
        for sp in specs:
            got = None if sp.variant != v else _finished(sp, root)
            if got is None:
                continue
            switch, m = got
            after = m["epoch"] >= switch
            series.append((m["epoch"][after] - switch, m["test_acc"][after]))
        if not series:
            continue
        grid = series[0][0]
        ys = np.stack([np.interp(grid, e, y) for e, y in series])
        out_curves[v] = {"epoch": grid, "mean": ys.mean(0), "lo": ys.min(0), "hi": ys.max(0),
                         "n": np.array(len(series))}
    return out_curves


__all__ = ["HOLDS", "Stat", "LeaderRow", "Leaderboard", "leaderboard", "epoch_costs",
           "board_conclusion", "phase2_curves"]
