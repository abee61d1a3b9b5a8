"""The scorecard of a run, and of a group of seeds: what the essay's tables measure.

Per run (`scorecard`): first epoch with test accuracy >= 95%, the fraction of evaluations
at or above 95%, collapses (train-loss spikes, `events.detect_events`, without the
detector's re-firings as its rest ends, `drop_continuations`) per 100k epochs and their
mean period; for a two-phase run also the phase-2 test accuracy (mean, standard
deviation, minimum, fraction of evaluations below 50%), the collapses after the switch, the epochs
from the switch to the first of them, and to the first evaluation below 50% test.

Everything is measured on the evaluation grid (`eval_every`), as the essay's figures are
on its 100-epoch grid; collapse windows add per-epoch records that would weigh their
epochs more, so they serve only the collapse detector.

    >>> card = scorecard("data/runs/two-phase-s3.h5")
    >>> card.phase2_mean_test, card.to_dict()       # a frozen Scorecard; a dict for JSON
    >>> rows = aggregate([card1, card2, card3])  # mean ± std over seeds
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.events import check_threshold, cycle_statistics, detect_events, drop_continuations
from ..store.reader import Run, open_run

# the fields `aggregate` averages over seeds
NUMERIC = ("first_95", "frac_above_95", "collapses_per_100k", "period_mean",
           "phase2_mean_test", "phase2_std_test", "phase2_min_test", "phase2_frac_below_50",
           "phase2_collapses",
           "phase2_first_collapse", "phase2_first_below_50", "final_test_acc")


def _first(epochs: np.ndarray, mask: np.ndarray) -> int | None:
    i = np.flatnonzero(mask)
    return int(epochs[i[0]]) if len(i) else None


@dataclass(frozen=True)
class Scorecard:
    """One run's scorecard (see the module docstring); the phase-2 fields are None for a
    single-phase run. `to_dict` is its JSON form (`zgdyn scorecard --json`)."""

    path: str
    status: str
    seed: int
    zipf_s: float
    switch_s: float | None
    dtype: str
    hook: str | None
    epochs_done: int
    n_evals: int
    first_95: int | None
    frac_above_95: float | None
    collapses: int
    collapse_epochs: tuple[int, ...]
    collapses_per_100k: float | None
    period_mean: float | None
    final_test_acc: float | None
    switch_epoch: int | None
    phase2_mean_test: float | None = None
    phase2_std_test: float | None = None
    phase2_min_test: float | None = None
    phase2_frac_below_50: float | None = None
    phase2_collapses: int | None = None
    phase2_first_collapse: int | None = None
    phase2_first_below_50: int | None = None
    phase2_epochs: int | None = None  # only after a switch

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["collapse_epochs"] = list(self.collapse_epochs)
        if self.switch_epoch is None:
            del out["phase2_epochs"]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scorecard:
        return cls(**{**d, "collapse_epochs": tuple(d["collapse_epochs"])})


def run_scorecard(run: Run, *, threshold: float = 100.0) -> Scorecard:
    """The scorecard of an open run (see the module docstring)."""
    cfg, m = run.config, run.metrics
    e, test = m["epoch"], m["test_acc"]
    done = int(run.attrs["epochs_done"])
    dense = run.dense_metrics()
    events = drop_continuations(detect_events(dense["epoch"], dense["train_loss"],
                                              threshold=threshold),
                                grid=cfg.record.eval_every)
    cycles = cycle_statistics(events, dense["epoch"], dense["test_acc"])
    switch = int(run.attrs["switch_epoch"])
    sch = cfg.schedule
    card: dict[str, Any] = {
        "path": str(run.path), "status": run.attrs["status"], "seed": cfg.seed,
        "zipf_s": cfg.data.zipf_s, "switch_s": sch.switch_s,
        "dtype": cfg.model.dtype, "hook": cfg.optim.hook or None,
        "epochs_done": done, "n_evals": int(len(e)),
        "first_95": _first(e, test >= 0.95),
        "frac_above_95": float(np.mean(test >= 0.95)) if len(test) else None,
        "collapses": len(events), "collapse_epochs": [ev.epoch for ev in events],
        "collapses_per_100k": len(events) * 1e5 / done if done > 0 else None,
        "period_mean": cycles.period_mean,
        "final_test_acc": float(test[-1]) if len(test) else None,
        "switch_epoch": switch if switch >= 0 else None,
    }
    phase2 = {k: None for k in NUMERIC if k.startswith("phase2_")}
    if switch >= 0:
        after = e > switch
        t2 = test[after]
        later = [ev.epoch for ev in events if ev.epoch > switch]
        below = _first(e[after], t2 < 0.5)
        phase2.update({
            "phase2_mean_test": float(t2.mean()) if len(t2) else None,
            "phase2_std_test": float(t2.std()) if len(t2) else None,
            "phase2_min_test": float(t2.min()) if len(t2) else None,
            "phase2_frac_below_50": float(np.mean(t2 < 0.5)) if len(t2) else None,
            "phase2_collapses": len(later),
            "phase2_first_collapse": later[0] - switch if later else None,
            "phase2_first_below_50": below - switch if below is not None else None,
            "phase2_epochs": done - switch,
        })
    card.update(phase2)
    return Scorecard.from_dict(card)


def scorecard(path: str | Path, *, threshold: float = 100.0) -> Scorecard:
    """The scorecard of the run file at `path`."""
    check_threshold(threshold)  # before the file is opened
    with open_run(path) as run:
        return run_scorecard(run, threshold=threshold)


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample std or None, count) of the values that exist."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return None, None, 0
    return (float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else None, len(xs))


def aggregate(cards: list[Scorecard]) -> dict[str, Any]:
    """Mean ± std over the seeds of one setting: {field: {"mean", "std", "n"}} for every
    numeric field, plus "seeds" and "never" (how many runs lack the field: a run that never
    reached 95% has no first_95, and counts there, not in the mean)."""
    out: dict[str, Any] = {"seeds": [c.seed for c in cards], "n_runs": len(cards)}
    for k in NUMERIC:
        vals = [getattr(c, k) for c in cards]
        mean, std, n = _mean_std(vals)
        out[k] = {"mean": mean, "std": std, "n": n, "never": len(cards) - n}
    return out


__all__ = ["Scorecard", "scorecard", "run_scorecard", "aggregate", "NUMERIC"]
