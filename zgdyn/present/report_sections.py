"""The sections of REPORT.md: each renders its table from a suite's result and ends with a
conclusion computed from the measurements (`zgdyn.present.conclusions`), never written by hand.
Each `section_*` returns (markdown lines, conclusion sentence)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .conclusions import (CONVERGED_GRAD, cycle_conclusion, full_cycle, late_rate_agreement,
                          perturb_conclusion, point_converged, saddle_conclusion,
                          table1_conclusion, table2_conclusion, table3_conclusion,
                          variant_conclusion)

if TYPE_CHECKING:
    from ..batch.results import MechanismSummary, SuiteResult
    from ..batch.scorecard import Scorecard

# The essay's numbers (p = 97, train fraction 0.3, 500k epochs, one seed).
# Table 1 as the essay prints it (None: the essay gives no number); the top-1 and top-2
# weights at s = 1.5 are from its text ("about 38%", "about 14%")
ESSAY_STATS = {  # s: (max/min, ESS, top-10% mass, top-1, top-2)
    0.0: ("1x", "2,822", "10%", None, None), 1.0: ("2,822x", "44", "73%", None, None),
    1.5: ("149,912x", "5.5", "97%", "38%", "14%"),
    2.0: ("7,963,684x", "2.5", "99.8%", None, None)}
ESSAY_SINGLE = {0.0: (14_000, 0.97), 1.0: (15_500, 0.97), 1.5: (25_000, 0.44),
                2.0: (61_000, 0.21)}  # s: (first >= 95% test, fraction of time above 95%)
ESSAY_SINGLE_EPOCHS = 500_000
ESSAY_TWO_PHASE = {1.0: (0.948, 0.043, 0.0), 1.5: (0.732, 0.124, 0.051),
                   2.0: (0.444, 0.191, 0.517), 3.0: (0.003, 0.015, 0.999)}
# the s = 1.5 cycle: build epochs, collapse epochs, Fourier energy after a collapse
ESSAY_CYCLE = {"build": 20_000, "collapse": 50, "fourier_after": 0.72, "peak_test": 0.97}


def _num(x: float | None, spec: str = ",.0f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) \
        else format(x, spec)


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _ms(cell: dict[str, Any], fmt: str = ",.0f", pct: bool = False,
        missing: str = "–", digits: int = 1) -> str:
    """mean ± std (n), or the one value; `missing` names runs without a value (e.g.
    "never" for a first epoch that never came); percentages to `digits` decimals."""
    f = (lambda x: _pct(x, digits)) if pct else (lambda x: _num(x, fmt))
    if cell["n"] == 0:
        return missing if cell["never"] else "–"
    out = f(cell["mean"]) + ("" if cell["std"] is None else f" ± {f(cell['std'])}")
    out += f" (n={cell['n']})" if cell["n"] > 1 or cell["never"] else ""
    if cell["never"]:
        out += f", {cell['never']} {missing}"
    return out


def _diff(cell: dict[str, Any], essay: float | None, pct: bool = False) -> str:
    if cell["n"] == 0 or essay is None:
        return "–"
    d = cell["mean"] - essay
    return f"{100 * d:+.1f} pts" if pct else f"{d:+,.0f}"


def _rows(result: SuiteResult, table: str, essay: dict[float, Any]) -> list[dict[str, Any]]:
    """The measured rows of a table, plus a "not run" row for each exponent the essay
    reports that was not measured (in the first variant), so every essay number shows."""
    from ..batch.scorecard import NUMERIC

    rows = [r for r in result.tables if r["table"] == table]
    first = next(iter(result.suite.variants))
    have = {r["s"] for r in rows if r["variant"] == first}
    empty = {"mean": None, "std": None, "n": 0, "never": 0}
    rows += [{"table": table, "variant": first, "s": s, "n_runs": 0, "missing": True,
              **{k: empty for k in NUMERIC}} for s in essay if s not in have]
    order = list(result.suite.variants)
    return sorted(rows, key=lambda r: (order.index(r["variant"]), r["s"]))


def _seeds(r: dict[str, Any]) -> str:
    return "not run" if r.get("missing") else str(r["n_runs"])


def _variant(r: dict[str, Any], result: SuiteResult) -> str:
    return "" if len(result.suite.variants) == 1 else f"{r['variant']} "


def _epochs_of(result: SuiteResult, table: str) -> list[int]:
    return sorted({c.epochs_done for c in result.cards
                   if (c.switch_s is not None) == (table == "two_phase")})


def _reads_as(value: float, shown: str) -> bool:
    """Whether `value` is within one unit of the last digit of the essay's `shown` (the
    essay rounds, and says "about" of some numbers)."""
    text = shown.replace(",", "").rstrip("%x")
    x = 100 * value if shown.endswith("%") else value
    unit = 10.0 ** -(len(text.split(".")[1]) if "." in text else 0)
    return abs(x - float(text)) < unit


def section_table1(result: SuiteResult) -> tuple[list[str], str]:
    lines = ["The essay's Table 1 beside zgdyn's (\"–\": the essay gives no number; its "
             "top-1 and top-2 weights at s = 1.5 are from its text).", "",
             "| s | max/min weight: essay | here | ESS 1/Σw²: essay | here | top-10% mass: "
             "essay | here | top-1: essay | here | top-2: essay | here |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    matches = []
    for r in result.stats:
        e = ESSAY_STATS.get(r["s"], (None,) * 5)
        here = (r["ratio"], r["ess"], r["top10_mass"], r["top1"], r["top2"])
        names = ("max/min", "ESS", "top-10% mass", "top-1", "top-2")
        shown = [f"{r['ratio']:.3g}" if r["ratio"] > 1e9 else f"{r['ratio']:,.0f}",
                 f"{r['ess']:,.0f}" if r["ess"] >= 100 else f"{r['ess']:.3g}",
                 _pct(r["top10_mass"]), _pct(r["top1"], 3 if r["top1"] < 0.01 else 1),
                 _pct(r["top2"], 3 if r["top2"] < 0.01 else 1)]
        cells = []
        for name, ess, val, txt in zip(names, e, here, shown):
            cells += [ess or "–", txt]
            if ess is not None:
                matches.append((f"{name} at s = {r['s']:g}", _reads_as(val, ess)))
        lines.append(f"| {r['s']:g} | " + " | ".join(cells) + " |")
    return lines, table1_conclusion(matches)


def section_table2(result: SuiteResult) -> tuple[list[str], str]:
    rows = _rows(result, "single", ESSAY_SINGLE)
    epochs = _epochs_of(result, "single")
    length = (f"Runs of {', '.join(f'{e:,}' for e in epochs)} epochs" if epochs
              else "No single-phase run has finished")
    lines = [f"{length} (the essay's: {ESSAY_SINGLE_EPOCHS:,}); the fraction of time above "
             "95% depends on the length, so it compares only at equal length.", "",
             "| run | seeds | first ≥ 95% test: essay | here | difference | time above 95%: "
             "essay | here | difference | collapses / 100k epochs | mean period |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = ESSAY_SINGLE.get(r["s"], (None, None))
        lines.append(
            f"| {_variant(r, result)}s = {r['s']:g} | {_seeds(r)} | {_num(e[0])} | "
            f"{_ms(r['first_95'], missing='never')} | {_diff(r['first_95'], e[0])} | "
            f"{_pct(e[1], 0) if e[1] is not None else '–'} | "
            f"{_ms(r['frac_above_95'], pct=True)} | {_diff(r['frac_above_95'], e[1], True)} | "
            f"{_ms(r['collapses_per_100k'], '.2f')} | {_ms(r['period_mean'])} |")
    first = next(iter(result.suite.variants))
    mine = [{"s": r["s"], "first_95": r["first_95"]["mean"]} for r in rows
            if r["variant"] == first and not r.get("missing")]
    return lines, table2_conclusion(mine, ESSAY_SINGLE)


TABLE3_COLUMNS = ("run", "seeds", "phase-2 mean test: essay", "here", "difference",
                  "std: essay", "here", "lowest", "< 50%: essay", "here",
                  "collapses in phase 2", "to the first collapse", "to test < 50%")


def table3_cells(result: SuiteResult, digits: int = 1) -> list[list[str]]:
    """The two-phase table's cells, one list per row (columns `TABLE3_COLUMNS`), with
    percentages to `digits` decimals: REPORT.md (1) and `zgdyn two-phase` (2) show it."""
    out = []
    pc = lambda x: _pct(x, digits)  # noqa: E731
    ms = lambda cell: _ms(cell, pct=True, digits=digits)  # noqa: E731
    for r in _rows(result, "two_phase", ESSAY_TWO_PHASE):
        e = ESSAY_TWO_PHASE.get(r["s"], (None, None, None))
        if not r.get("missing") and r["phase2_mean_test"]["n"] == 0:  # phase 1 never ended
            out.append([f"{_variant(r, result)}s = 0 → {r['s']:g}", _seeds(r), pc(e[0]),
                        "did not switch", "–", pc(e[1]), "–", "–", pc(e[2]),
                        *["–"] * 4])
            continue
        out.append([
            f"{_variant(r, result)}s = 0 → {r['s']:g}", _seeds(r), pc(e[0]),
            ms(r["phase2_mean_test"]), _diff(r["phase2_mean_test"], e[0], True),
            pc(e[1]), ms(r["phase2_std_test"]), ms(r["phase2_min_test"]), pc(e[2]),
            ms(r["phase2_frac_below_50"]), _ms(r["phase2_collapses"], ".1f"),
            _ms(r["phase2_first_collapse"], missing="never"),
            _ms(r["phase2_first_below_50"], missing="never")])
    return out


def section_table3(result: SuiteResult) -> tuple[list[str], str]:
    epochs = sorted({c.phase2_epochs for c in result.cards if c.phase2_epochs})
    lasted = (f"Phase 2 lasted {', '.join(f'{e:,}' for e in epochs)} epochs" if epochs
              else "No two-phase run has finished")
    lines = [f"{lasted} (the essay does not say how long its phase 2 was).", "",
             "| " + " | ".join(TABLE3_COLUMNS) + " |",
             "|" + "---|" * len(TABLE3_COLUMNS)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table3_cells(result)]
    first = next(iter(result.suite.variants))
    mine = [(r["s"], r["phase2_mean_test"]["mean"])
            for r in _rows(result, "two_phase", ESSAY_TWO_PHASE)
            if r["variant"] == first and not r.get("missing")]
    return lines, table3_conclusion(mine, ESSAY_TWO_PHASE)


def variant_effects(result: SuiteResult) -> list[dict[str, Any]]:
    """Each two-phase variant against the first (the baseline), per s, on the seeds both
    finished: the mean change of the phase-2 mean test accuracy, and the share of the gap
    between the baseline and the essay that the change closes (1 = all of it)."""
    variants = list(result.suite.variants)
    by_path = {c.path: c for c in result.cards if c.status == "complete"}
    score: dict[tuple[str, float, int], float] = {}
    for t in result.tasks:
        card = by_path.get(t.path)
        if t.table == "two_phase" and card and card.phase2_mean_test is not None:
            score[t.variant, t.s, t.seed] = card.phase2_mean_test
    base, out = variants[0], []
    for v in variants[1:]:
        for s in sorted({s for (w, s, _) in score if w == v}):
            seeds = sorted(k for (w, x, k) in score if w == v and x == s
                           and (base, s, k) in score)
            if not seeds:
                continue
            b = float(np.mean([score[base, s, k] for k in seeds]))
            m = float(np.mean([score[v, s, k] for k in seeds]))
            essay = ESSAY_TWO_PHASE.get(s, (None,))[0]
            gap = None if essay is None else essay - b
            out.append({"variant": v, "s": s, "n": len(seeds), "seeds": seeds, "baseline": b,
                        "mean": m, "change": m - b, "essay": essay, "gap": gap,
                        "share": None if not gap else (m - b) / gap})
    return out


def section_variants(result: SuiteResult) -> tuple[list[str], str]:
    rows = variant_effects(result)
    base = next(iter(result.suite.variants))
    lines = [f"Each variant's phase-2 mean test accuracy against {base}'s on the seeds both "
             "ran (mean over them); \"share\" is the part of the gap between "
             f"{base} and the essay that the variant closes (100%: all of it, below 0: it "
             "widens it).", "",
             f"| variant | s | seeds | {base} | variant | change | essay | share of the gap |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        share = "–" if r["share"] is None else f"{r['share']:.0%}"
        lines.append(f"| {r['variant']} | {r['s']:g} | {r['n']} | {_pct(r['baseline'])} | "
                     f"{_pct(r['mean'])} | {100 * r['change']:+.1f} pts | {_pct(r['essay'])} "
                     f"| {share} |")
    stuck = sorted({t.variant for t in result.tasks if t.table == "two_phase"
                    and any(c.path == t.path and c.status == "complete"
                            and c.switch_epoch is None for c in result.cards)})
    return lines, variant_conclusion(rows, base, stuck)


def section_saddle(result: SuiteResult) -> tuple[list[str], str]:
    sd = result.saddle
    ok, g0 = point_converged(sd)
    state = ("converged" if ok else "not converged") + (
        "" if g0 is None else f": ‖∇L_0‖ = {g0:.2g}, against {CONVERGED_GRAD:g}")
    lines = [f"At the last keyframe (epoch {sd.epoch:,}) of `{Path(result.anchor).name}`"
             f", {sd.dtype}; the point is {state}. Growth = −lr·μ_min − lr·wd per "
             "epoch, μ_min the most negative eigenvalue of Adam's preconditioned Hessian "
             "D^-1/2 H_s D^-1/2: > 0 means the linearized AdamW step leaves the point along "
             "that direction. \"eigs\" says whether both spectra converged.", "",
             "| s | ‖∇L_s‖ | λ_min(H) | λ_max(H) | pre λ_min | pre λ_max | overlap θ_M | "
             "growth/epoch | eigs |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sd.rows:
        lines.append(f"| {r.zipf_s:g} | {r.grad_norm:.3g} | {r.lambda_min:.3g} | "
                     f"{r.lambda_max:.3g} | {r.pre_lambda_min:.3g} | "
                     f"{r.pre_lambda_max:.3g} | {r.overlap_theta_m:.3f} | "
                     f"{r.growth_rate:.3g} | "
                     f"{'converged' if r.converged else 'not converged'} |")
    wd = 1.0 if result.anchor_weight_decay is None else result.anchor_weight_decay
    return lines, saddle_conclusion(sd, wd)


def section_perturb(result: SuiteResult) -> tuple[list[str], str]:
    pt = result.perturb
    lines = [f"From the same keyframe, {pt.dtype}: the point is moved by ε·‖θ‖ along a unit "
             f"direction and trained {pt.epochs} epochs under Zipf s beside an unperturbed "
             f"copy. Early rate: ln(δ({pt.early}) / δ(0)) / {pt.early}; late rate: the "
             "slope of ln δ over the second half. Per epoch; λ = lr·wd = "
             f"{pt.lam:g}.", "",
             "| s | Hessian's prediction | 1-D law's γ − λ | direction | ε | early rate | late "
             "rate | δ(end)/δ(0) |", "|---|---|---|---|---|---|---|---|"]
    preds = {p.zipf_s: p for p in pt.predictions}
    for r in pt.rows:
        p = preds[r.zipf_s]
        lines.append(f"| {r.zipf_s:g} | {_num(p.hessian_rate, '.3g')} | "
                     f"{_num(p.law_rate, '.3g')} | {r.direction} | {r.eps:g} | "
                     f"{_num(r.rate_early, '.3g')} | {_num(r.rate_late, '.3g')} | "
                     f"{r.growth_factor:.3g} |")
    agree = late_rate_agreement(pt)
    return lines, perturb_conclusion(pt) + (f" {agree}" if agree else "")


def cycle_runs(result: SuiteResult) -> list[tuple[Scorecard, dict[str, Any]]]:
    """The single-phase Zipf runs (s > 0, in suite order), each scorecard with its first
    full cycle (`conclusions.full_cycle`)."""
    out = []
    for c in result.cards:
        m = None if c.switch_s is not None or not c.zipf_s > 0 else result.run_metrics(c.path)
        if m is not None:
            out.append((c, full_cycle(m, c.collapse_epochs)))
    return out


def section_cycle(result: SuiteResult) -> tuple[list[str], str]:
    runs = [(c, cycle) for c, cycle in cycle_runs(result) if c.zipf_s == 1.5]
    if not runs:
        return [], ""
    lines = [f"The essay: build ~{ESSAY_CYCLE['build']:,} epochs, collapse in "
             f"~{ESSAY_CYCLE['collapse']} epochs, Fourier energy down to "
             f"~{ESSAY_CYCLE['fourier_after']} after it, peak test ~"
             f"{_pct(ESSAY_CYCLE['peak_test'], 0)}.", "",
             "| run | collapse (epoch) | train-loss rise (epochs) | test before → after | "
             "Fourier energy before → after |", "|---|---|---|---|---|"]
    for c, _ in runs:
        for e in result.run_events(c.path):
            lines.append(f"| {Path(c.path).name} | {e['epoch']:,} | {e['duration']:.1f} | "
                         f"{_pct(e['test_acc_before'])} → {_pct(e['test_acc_after'])} | "
                         f"{_num(e['fourier_before'], '.3f')} → "
                         f"{_num(e['fourier_after'], '.3f')} |")
        if not c.collapses:
            lines.append(f"| {Path(c.path).name} | no collapse | | | |")
    return lines, " ".join(cycle_conclusion(Path(c.path).name, cycle, c.epochs_done)
                           for c, cycle in runs)


def _med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return float(np.median(xs)) if xs else None


def _mean_sd(xs: list[float | None], fmt: str = ",.0f") -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return format(xs[0], fmt)
    return f"{format(float(np.mean(xs)), fmt)} ± {format(float(np.std(xs, ddof=1)), fmt)}"


def mechanism_rows(mech: MechanismSummary) -> list[dict[str, Any]]:
    """One row per control of the mechanism table: what was measured over its seeds and
    what each mechanism predicts for it (see `zgdyn.analysis.mechanism`)."""
    recs = mech.records
    base = {r.seed: r for r in recs if r.variant == mech.baseline}
    rows = []
    for variant in mech.variants:
        mine = [r for r in recs if r.variant == variant]
        if not mine:
            continue
        saddle = [base[r.seed].period_mean * base[r.seed].lam / r.lam for r in mine
                  if r.seed in base and base[r.seed].period_mean is not None
                  and r.loss == base[r.seed].loss]
        onsets = [(o, r) for r in mine for o in r.onsets]
        rows.append({
            "variant": variant, "n": len(mine), "collapses": [r.collapses for r in mine],
            "epochs": [r.epochs_done for r in mine],
            "period": [r.period_mean for r in mine],
            "first_95": [r.first_95 for r in mine],
            "onset_over_eps": _med([o.adam_scale / r.eps for o, r in onsets
                                    if r.optimizer in ("adamw", "amsgrad")]),
            "median_over_eps": _med([o.sqrt_v_median / r.eps for o, r in onsets
                                     if r.optimizer in ("adamw", "amsgrad")]),
            "onset_adam_scale": _med([o.adam_scale for o, _ in onsets]),
            "saddle": saddle,
            "clock": [x for r in mine for x in r.clock if x is not None],
            "clock_eps": [x for r in mine for x in r.clock_eps if x is not None],
            "intervals": [x for r in mine for x in r.intervals],
            "numerics": "none" if any(r.dtype == "float64" or r.loss == "stablemax"
                                      for r in mine) else "as baseline",
            "eos": _med([o.lambda_max / r.threshold for o, r in onsets
                         if o.lambda_max is not None]),
            "lambda_grad": _med([o.lambda_grad * r.lr / 2 for o, r in onsets
                                 if o.lambda_grad is not None]),
            "lambda_min": _med([o.lambda_min / (-2 * r.weight_decay) for o, r in onsets
                                if o.lambda_min is not None]),
        })
    return rows


def section_mechanism(result: SuiteResult,
                      figures: dict[str, str]) -> tuple[list[str], str]:
    mech = result.mechanism
    rows = mechanism_rows(mech)
    if not rows:
        return ["No run of this suite is complete yet, so there is no mechanism table."], ""
    lines = [
        "Each row is one control of the s = 1.5 run, over its seeds (mean ± std where there "
        "are several). Measured: collapses per run, the mean period, √mean v̂ at the last "
        "record before each onset over ε and the median √v̂ at the last evaluation over ε "
        "(medians over onsets), the first epoch with ≥ 95% test. Predicted: "
        "the saddle's period (the same seed's baseline period × λ_base/λ), Adam's clock "
        "with the onset at ε (ln(√v̂ after / ε)/((1 − β2)/2) per interval), what numerics "
        "predicts, and at onset λ_max(P⁻¹H) / the optimizer's threshold (38/lr for Adam), "
        "λ_grad / (2/lr) and λ_min(P⁻¹H) / (−2·wd) (medians over onsets).", "",
        "| control | runs | collapses | mean period | √mean v̂/ε at onset | median √v̂/ε | "
        "first ≥ 95% | saddle predicts | clock (onset ε) predicts | numerics predicts | "
        "λ_max(P⁻¹H)/thr | λ_grad/(2/lr) | λ_min/(−2wd) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        never = sum(x is None for x in r["first_95"])
        first = _mean_sd(r["first_95"]) + (f" ({never} never)" if never else "")
        lines.append(
            f"| {r['variant']} | {r['n']} | {', '.join(map(str, r['collapses']))} | "
            f"{_mean_sd(r['period'])} | {_num(r['onset_over_eps'], '.3g')} | "
            f"{_num(r['median_over_eps'], '.3g')} | {first} | "
            f"{_mean_sd(r['saddle'])} | {_mean_sd(r['clock_eps'])} | {r['numerics']} | "
            f"{_num(r['eos'], '.3g')} | {_num(r['lambda_grad'], '.3g')} | "
            f"{_num(r['lambda_min'], '.3g')} |")
    lines += ["", "**Verdicts** (a period law holds where its median relative error is within "
              "15%; \"near ε\" is within a factor 10; \"at the threshold\" within a factor "
              "2):", ""]
    for v in mech.verdicts:
        lines.append(f"- **{v.mechanism}**: {v.summary}.")
        for p in v.predictions:
            mark = "untested" if p.held is None else "held" if p.held else "failed"
            lines.append(f"  - {p.claim}: {mark} ({p.detail}).")
    if "mechanism" in figures:
        lines += ["", f"![measured period against each law]({figures['mechanism']})"]
    return lines, mechanism_conclusion(mech)


def mechanism_conclusion(mech: MechanismSummary) -> str:
    """One or two sentences from the verdicts: which mechanisms held and which failed."""
    held = [v.mechanism for v in mech.verdicts if v.summary == "held"]
    failed = [v.mechanism for v in mech.verdicts if v.summary == "failed"]
    mixed = [f"{v.mechanism} ({v.summary})" for v in mech.verdicts
             if v.summary not in ("held", "failed", "untested")]
    parts = []
    if held:
        parts.append(f"every tested prediction of {' and '.join(held)} held")
    if mixed:
        parts.append(f"{', '.join(mixed)} held in part")
    if failed:
        parts.append(f"{' and '.join(failed)} failed every prediction tested")
    n = len({r.variant for r in mech.records})
    text = "; ".join(parts) if parts else "nothing could be tested yet"
    return f"From {len(mech.records)} runs of {n} controls: {text}." + _seeds_sentence(mech)


def _seeds_sentence(mech: MechanismSummary) -> str:
    """" The seeds disagree on whether X collapses (k of n runs) ..." where they do, or that
    they agree everywhere, from `mechanism.seed_agreement`; nothing with one seed."""
    from ..analysis.mechanism import seed_agreement

    agree = seed_agreement(list(mech.records))
    split = [f"{v} ({k} of {n} runs)" for v, (k, n) in agree.items() if 0 < k < n]
    if not agree:
        return ""
    if not split:
        return (f" The seeds agree on whether each of the {len(agree)} controls run on "
                "several seeds collapses.")
    return (f" The seeds disagree on whether {', '.join(split)} collapse"
            f"{'s' if len(split) == 1 else ''}; they agree on the other "
            f"{len(agree) - len(split)} of {len(agree)} controls run on several seeds.")


__all__ = ["ESSAY_STATS", "ESSAY_SINGLE", "ESSAY_SINGLE_EPOCHS", "ESSAY_TWO_PHASE", "ESSAY_CYCLE",
           "section_table1", "section_table2", "section_table3", "section_saddle",
           "section_perturb", "cycle_runs", "section_cycle", "mechanism_rows", "section_mechanism",
           "mechanism_conclusion", "TABLE3_COLUMNS", "table3_cells", "variant_effects",
           "section_variants"]
