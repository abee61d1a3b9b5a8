"""REPORT.md: a suite's measurements beside the essay's numbers, with figures.

`write_report(result, out_dir)` takes what `suite.run_suite` returns and writes
``REPORT.md`` and ``figures/*.png`` under `out_dir`. A REPORT.md that zgdyn did not write
(no marker on its first line) is never replaced.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
from pathlib import Path
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..core.config import ZgdynError
from .conclusions import grokking_conclusion
from .report_sections import (ESSAY_SINGLE, ESSAY_STATS, ESSAY_TWO_PHASE, _num, _pct, cycle_runs,
                              section_cycle, section_mechanism, section_perturb, section_saddle,
                              section_table1, section_table2, section_table3, section_variants)

if TYPE_CHECKING:
    from ..batch.results import SuiteResult

MARKER = "<!-- written by zgdyn reproduce; rerunning it rewrites this file -->"

# -- figures --------------------------------------------------------------------------------


def _curves(result: SuiteResult, table: str, align_switch: bool) -> list[dict[str, Any]]:
    first_seed = result.suite.seeds[0]
    out = []
    for t in result.tasks:
        card = result.card(t.path)
        if t.table != table or t.seed != first_seed or card is None:
            continue
        m = result.run_metrics(t.path)
        if m is None:
            continue
        shift = card.switch_epoch if align_switch and card.switch_epoch else 0
        label = ("" if len(result.suite.variants) == 1 else f"{t.variant} ") + \
            (f"s = 0 → {t.s:g}" if table == "two_phase" else f"s = {t.s:g}")
        out.append({"label": label, "epoch": m["epoch"] - shift, "test_acc": m["test_acc"],
                    "marks": [e - shift for e in card.collapse_epochs],
                    "switch": 0 if align_switch and card.switch_epoch else None})
    return out


def _figures(result: SuiteResult, fig_dir: Path) -> tuple[dict[str, str], str | None]:
    """The report's figures saved under `fig_dir` (name -> path relative to the report),
    and the run the phase portrait shows (None without one)."""
    from ..analysis.analyze import sorted_trajectory
    from .plots import plot_dynamics, plot_portrait, save
    from .suite_plots import plot_accuracy_curves, plot_perturb
    from ..store.reader import open_run

    fig_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Any] = {}
    portrait_run = None
    if result.anchor and result.card(result.anchor) is not None and Path(result.anchor).exists():
        with open_run(result.anchor) as run:
            traj = sorted_trajectory(run)
            figs["grokking"] = plot_dynamics(
                run.metrics, traj[0] if traj else None,
                title=f"grokking at s = 0 ({Path(result.anchor).name})")
    if any(t.table == "single" for t in result.tasks):
        curves = _curves(result, "single", False)
        if curves:
            figs["single"] = plot_accuracy_curves(curves, title="single phase: test accuracy "
                                                  "(crosses: collapses)")
    if any(t.table == "two_phase" for t in result.tasks):
        curves = _curves(result, "two_phase", True)
        if curves:
            figs["two-phase"] = plot_accuracy_curves(
                curves, xlabel="epochs since the switch to Zipf weighting",
                title="two phase: uniform until 99% test, then Zipf s (crosses: collapses)")
    # the portrait of a single-phase Zipf run: the first with a full cycle, else the one
    # with the most collapses (the later one on a tie)
    cards = [(c, cycle) for c, cycle in cycle_runs(result) if c.collapses
             and Path(c.path).exists()]  # a digest has no trajectory to draw
    if cards:
        full = [c for c, cycle in cards if cycle["complete"]]
        best = full[0] if full else max(reversed([c for c, _ in cards]),
                                        key=lambda c: c.collapses)
        with open_run(best.path) as run:
            traj = sorted_trajectory(run)
        if traj is not None:
            figs["portrait"] = plot_portrait(traj[0], event_epochs=list(best.collapse_epochs),
                                             title=f"phase portrait: {Path(best.path).name}")
            portrait_run = best.path
    if result.perturb is not None:
        figs["perturb"] = plot_perturb(result.perturb)
    if result.mechanism is not None and result.mechanism.records:
        from ..analysis.mechanism import period_predictions
        from .suite_plots import plot_period_laws
        laws = period_predictions(list(result.mechanism.records), result.mechanism.baseline)
        if any(laws.values()):
            figs["mechanism"] = plot_period_laws(laws, title="measured period against each "
                                                 "law's prediction")
    names = {}
    for name, fig in figs.items():
        save(fig, str(fig_dir / f"{name}.png"))
        names[name] = f"figures/{name}.png"
    return names, portrait_run


# -- text -----------------------------------------------------------------------------------


def _sections(result: SuiteResult, figures: dict[str, str],
              portrait_run: str | None = None) -> list[tuple[str, list[str], str]]:
    """(title, lines, conclusion) of every section the result has, in report order."""
    out = []
    card = result.card(result.anchor) if result.anchor else None
    if card is not None:
        lines = [f"`{Path(result.anchor).name}`: first ≥ 95% test accuracy at epoch "
                 f"{_num(card.first_95)} (the essay: {ESSAY_SINGLE[0.0][0]:,}), final "
                 f"test accuracy {_pct(card.final_test_acc, 2)}."]
        if "grokking" in figures:
            lines += ["", f"![grokking]({figures['grokking']})"]
        out.append(("Grokking at s = 0", lines,
                    grokking_conclusion(card.first_95, ESSAY_SINGLE[0.0][0])))
    out.append(("Table 1: the Zipf weights", *section_table1(result)))
    lines, concl = section_table2(result)
    if "single" in figures:
        lines += ["", f"![single phase]({figures['single']})"]
    out.append(("Table 2: single phase", lines, concl))
    lines, concl = section_cycle(result)
    if lines:
        if "portrait" in figures and portrait_run is not None:
            lines += ["", f"Phase portrait of `{Path(portrait_run).name}` in the "
                      "(Fourier energy, ln m_w) plane, its collapses crossed:", "",
                      f"![phase portrait]({figures['portrait']})"]
        out.append(("The s = 1.5 cycle", lines, concl))
    if result.mechanism is not None:
        out.append(("Why the Fourier solution falls: the mechanism table",
                    *section_mechanism(result, figures)))
    if any(t.table == "two_phase" for t in result.tasks):
        lines, concl = section_table3(result)
        if "two-phase" in figures:
            lines += ["", f"![two phase]({figures['two-phase']})"]
        out.append(("Table 3: two phase", lines, concl))
        if len({t.variant for t in result.tasks if t.table == "two_phase"}) > 1:
            out.append(("Table 3 under the variants", *section_variants(result)))
    if result.saddle is not None:
        out.append(("The saddle table", *section_saddle(result)))
    if result.perturb is not None:
        lines, concl = section_perturb(result)
        if "perturb" in figures:
            lines += ["", f"![perturbations]({figures['perturb']})"]
        out.append(("The perturbation experiment", lines, concl))
    return out


# the sections whose conclusions make the summary, in its order
SUMMARY = ("Grokking at s = 0", "The s = 1.5 cycle",
           "Why the Fourier solution falls: the mechanism table", "Table 3: two phase",
           "Table 3 under the variants",
           "The saddle table", "The perturbation experiment")


def format_report(result: SuiteResult, figures: dict[str, str],
                  portrait_run: str | None = None) -> str:
    s = result.suite
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sec = result.seconds
    ok = sum(r["ok"] and r["action"] != "skipped" for r in result.results)
    sections = _sections(result, figures, portrait_run)
    found = {title: concl for title, _, concl in sections if concl}
    summary = " ".join(found[t] for t in SUMMARY if t in found)
    lines = [MARKER, f"# zgdyn report: suite `{s.name}`", "",
             f"**Summary.** {summary or 'No run of this suite has finished yet.'}", "",
             s.description, "",
             f"Written {now} on {platform.machine()} with {os.cpu_count()} cores, "
             f"{len(result.results)} runs ({ok} finished), seeds {s.seeds}; the runs took "
             f"{sec['runs'] / 60:.1f} min, everything {sec['total'] / 60:.1f} min. Suite file: "
             f"`{s.source}`; runs under `{result.out}/runs`. Each run file opens with "
             "`zgdyn info`, and `zgdyn scorecard` prints any run's row. Every conclusion "
             "below is computed from the numbers beside it, with the thresholds it states.", ""]
    if result.errors:
        lines += ["**Runs that failed:**", ""] + [f"- `{p}`: {e}" for p, e in
                                                  result.errors.items()] + [""]
    skipped = [r for r in result.results if r["action"] == "skipped"]
    if skipped:
        lines += [f"**Runs of this suite not run this time ({len(skipped)}), so missing from "
                  "the tables:** " + ", ".join(f"`{Path(r['path']).name}` ({r['note']})"
                                               for r in skipped), ""]
    for title, body, concl in sections:
        lines += [f"## {title}", "", *body, ""]
        if concl:
            lines += [f"**Conclusion.** {concl}", ""]
    return "\n".join(lines) + "\n"


def check_report_path(out_dir: str | Path) -> Path:
    """OUT/REPORT.md, if zgdyn may write it: absent, or written by zgdyn before."""
    path = Path(out_dir) / "REPORT.md"
    if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
        raise ZgdynError(f"{path}: exists and was not written by zgdyn; move it away or give "
                         "another --out (it is never replaced)")
    return path


def write_report(result: SuiteResult, out_dir: str | Path) -> Path:
    """Write REPORT.md and its figures under `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    path = check_report_path(out_dir)
    figures, portrait_run = _figures(result, out_dir / "figures")
    text = format_report(result, figures, portrait_run)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def reproduce(suite: str | Any, out: str | Path = "data/report", *,
              seeds: list[int] | None = None, **kw: Any) -> SuiteResult:
    """What `zgdyn reproduce` does: run a suite (a name, a file or a `Suite`), analyze it and
    write OUT/REPORT.md. `seeds` overrides the suite's; `kw` goes to `suite.run_suite`
    (jobs, threads, plugins, progress, report_only, only). Returns run_suite's result with
    the report's path as its `report`."""
    from ..batch.suite import Suite, load_suite, suite_from_dict, with_seeds

    if not isinstance(suite, Suite):
        suite = load_suite(str(suite))
    if seeds:
        import tomllib
        with open(suite.source, "rb") as fh:
            suite = suite_from_dict(with_seeds(tomllib.load(fh), list(seeds)), suite.source)
    check_report_path(out)  # before hours of runs, not after
    from ..batch.suite import run_suite
    result = run_suite(suite, out, **kw)
    return replace(result, report=str(write_report(result, out)))


__all__ = ["reproduce", "write_report", "check_report_path", "format_report", "ESSAY_STATS",
           "ESSAY_SINGLE", "ESSAY_TWO_PHASE"]
