"""What `run_suite` returns: a `SuiteResult`, everything a suite's report shows, typed.

Its `to_dict()` is the JSON `zgdyn reproduce --json` prints (without the perturbation
curves); `from_dict()` reads that back, so a report can be rebuilt from a saved result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    `zgdyn.present.report.reproduce` has written it."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("report",)

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

    def card(self, path: str) -> Scorecard | None:
        """The scorecard of the run at `path`, or None."""
        return next((c for c in self.cards if c.path == path), None)


__all__ = ["SuiteInfo", "TaskEntry", "MechanismSummary", "SuiteResult"]
