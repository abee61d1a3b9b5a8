"""What `run_suite` returns: a `SuiteResult`, everything a suite's report shows, typed.

Its `to_dict()` is the JSON `zgdyn reproduce --json` prints (without the perturbation
curves); `from_dict()` reads that back, so a report can be rebuilt from a saved result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..analysis.mechanism import RunRecord, Verdict
from ..analysis.perturb import PerturbResult
from ..analysis.stability import SaddleResult
from ..core.results import Result
from .scorecard import Scorecard


@dataclass(frozen=True)
class SuiteInfo(Result):
    """The suite as it was run: its name, description, file, seeds, variants and base."""

    name: str
    description: str
    source: str | None
    seeds: list[int]
    variants: dict[str, dict[str, Any]]
    base: dict[str, Any]


@dataclass(frozen=True)
class TaskEntry(Result):
    """One run of the suite: its file, table, variant, exponent and seed, what the plan did
    with it (train, resume, done, skipped, failed) and why."""

    path: str
    table: str
    variant: str
    s: float
    seed: int
    planned: str
    note: str | None


@dataclass(frozen=True)
class MechanismSummary(Result):
    """A mechanism suite's table: one record per complete run, the verdicts of the rival
    mechanisms against the baseline variant, and the curvature at the onsets in brief
    (`zgdyn.analysis.mechanism.onset_summary`)."""

    baseline: str
    variants: tuple[str, ...]
    records: tuple[RunRecord, ...]
    verdicts: tuple[Verdict, ...]
    onset: dict[str, Any]


@dataclass(frozen=True)
class SuiteResult(Result):
    """Everything a suite's report shows. `results` is the execution log (one entry a run:
    path, action, ok, error, seconds), `errors` the runs that failed or could not be scored
    (by path), `tables` one aggregate per (table, variant, s) over the seeds, `stats` the
    Zipf weights' distribution per exponent; `anchor` is the run the saddle table and the
    perturbations were measured on, at `anchor_epoch`. `report` is REPORT.md's path, once
    `zgdyn.present.report.reproduce` has written it; `digests` the folder of the suite's
    digests, where it was given one (`zgdyn.batch.digest`)."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("report", "digests")

    suite: SuiteInfo
    out: str
    tasks: tuple[TaskEntry, ...]
    results: tuple[dict[str, Any], ...]
    errors: dict[str, str]
    cards: tuple[Scorecard, ...]
    tables: tuple[dict[str, Any], ...]
    anchor: str | None
    anchor_epoch: int | None
    saddle: SaddleResult | None
    perturb: PerturbResult | None
    anchor_weight_decay: float | None
    stats: tuple[dict[str, Any], ...]
    seconds: dict[str, float]
    jobs: int
    threads: int | None
    mechanism: MechanismSummary | None
    report: str | None = field(default=None)
    digests: str | None = field(default=None)

    def card(self, path: str) -> Scorecard | None:
        """The scorecard of the run at `path`, or None."""
        return next((c for c in self.cards if c.path == path), None)

    def _digest(self, path: str) -> Any:
        from .digest import digest_file, read_digest

        if self.digests is None or not digest_file(self.digests, Path(path).stem).is_file():
            return None
        return read_digest(digest_file(self.digests, Path(path).stem))

    def run_metrics(self, path: str) -> dict[str, np.ndarray] | None:
        """The evaluation-grid metrics of the run at `path` ("epoch", "test_acc",
        "train_loss", ...): from its file, else from its digest; None without either."""
        from ..store.reader import open_run
        from .digest import digest_curve

        if Path(path).exists():
            with open_run(path) as run:
                return run.metrics
        d = self._digest(path)
        return None if d is None else digest_curve(d)

    def run_events(self, path: str) -> list[dict[str, Any]]:
        """The collapses of the run at `path` (`analysis.analyze.run_events`): from its
        file, else from its digest; none without either."""
        from ..analysis.analyze import run_events

        if Path(path).exists():
            return run_events(path)["events"]
        d = self._digest(path)
        return [] if d is None else list(d.events)


__all__ = ["SuiteInfo", "TaskEntry", "MechanismSummary", "SuiteResult"]
