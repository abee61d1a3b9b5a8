"""REPORT.md: a suite's measurements beside the essay's numbers, with figures.

`write_report(result, out_dir)` takes what `suite.run_suite` returns and writes
``REPORT.md`` and ``figures/*.png`` under `out_dir`. A REPORT.md that zgdyn did not write
(no marker on its first line) is never replaced.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from .config import ZgdynError

MARKER = "<!-- written by zgdyn reproduce; rerunning it rewrites this file -->"

# The essay's numbers (p = 97, train fraction 0.3, 500k epochs, one seed).
ESSAY_STATS = {  # s: (max/min, ESS, top-10% mass, top-1, top-2)
    0.0: (1, 2822, 0.0999, 0.00035, 0.00035), 1.0: (2822, 44.2, 0.730, 0.117, 0.059),
    1.5: (149_912, 5.51, 0.968, 0.388, 0.137), 2.0: (7_963_684, 2.50, 0.998, 0.608, 0.152),
    3.0: (2.25e10, 1.42, 1.000, 0.832, 0.104)}
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
        missing: str = "–") -> str:
    """mean ± std (n), or the one value; `missing` names runs without a value (e.g.
    "never" for a first epoch that never came)."""
    f = (lambda x: _pct(x)) if pct else (lambda x: _num(x, fmt))
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


def _rows(result: dict[str, Any], table: str, essay: dict[float, Any]) -> list[dict[str, Any]]:
    """The measured rows of a table, plus a "not run" row for each exponent the essay
    reports that was not measured (in the first variant), so every essay number shows."""
    from .scorecard import NUMERIC

    rows = [r for r in result["tables"] if r["table"] == table]
    first = next(iter(result["suite"]["variants"]))
    have = {r["s"] for r in rows if r["variant"] == first}
    empty = {"mean": None, "std": None, "n": 0, "never": 0}
    rows += [{"table": table, "variant": first, "s": s, "n_runs": 0, "missing": True,
              **{k: empty for k in NUMERIC}} for s in essay if s not in have]
    order = list(result["suite"]["variants"])
    return sorted(rows, key=lambda r: (order.index(r["variant"]), r["s"]))


def _seeds(r: dict[str, Any]) -> str:
    return "not run" if r.get("missing") else str(r["n_runs"])


def _variant(r: dict[str, Any], result: dict[str, Any]) -> str:
    return "" if len(result["suite"]["variants"]) == 1 else f"{r['variant']} "


def _epochs_of(result: dict[str, Any], table: str) -> list[int]:
    return sorted({c["epochs_done"] for c in result["cards"]
                   if (c["switch_s"] is not None) == (table == "two_phase")})


# -- figures --------------------------------------------------------------------------------


def _curves(result: dict[str, Any], table: str, align_switch: bool) -> list[dict[str, Any]]:
    from .store import open_run

    first_seed = result["suite"]["seeds"][0]
    out = []
    for t in result["tasks"]:
        if t["table"] != table or t["seed"] != first_seed or not Path(t["path"]).exists():
            continue
        card = next((c for c in result["cards"] if c["path"] == t["path"]), None)
        if card is None:
            continue
        with open_run(t["path"]) as run:
            m = run.metrics
        shift = card["switch_epoch"] if align_switch and card["switch_epoch"] else 0
        label = ("" if len(result["suite"]["variants"]) == 1 else f"{t['variant']} ") + \
            (f"s = 0 → {t['s']:g}" if table == "two_phase" else f"s = {t['s']:g}")
        out.append({"label": label, "epoch": m["epoch"] - shift, "test_acc": m["test_acc"],
                    "marks": [e - shift for e in card["collapse_epochs"]],
                    "switch": 0 if align_switch and card["switch_epoch"] else None})
    return out


def _figures(result: dict[str, Any], fig_dir: Path) -> dict[str, str]:
    from .analyze import sorted_trajectory
    from .plots import plot_accuracy_curves, plot_dynamics, plot_perturb, plot_portrait, save
    from .store import open_run

    fig_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Any] = {}
    if result["anchor"] and any(c["path"] == result["anchor"] for c in result["cards"]):
        with open_run(result["anchor"]) as run:
            traj = sorted_trajectory(run)
            figs["grokking"] = plot_dynamics(
                run.metrics, traj[0] if traj else None,
                title=f"grokking at s = 0 ({Path(result['anchor']).name})")
    if any(t["table"] == "single" for t in result["tasks"]):
        curves = _curves(result, "single", False)
        if curves:
            figs["single"] = plot_accuracy_curves(curves, title="single phase: test accuracy "
                                                  "(crosses: collapses)")
    if any(t["table"] == "two_phase" for t in result["tasks"]):
        curves = _curves(result, "two_phase", True)
        if curves:
            figs["two-phase"] = plot_accuracy_curves(
                curves, xlabel="epochs since the switch to Zipf weighting",
                title="two phase: uniform until 99% test, then Zipf s (crosses: collapses)")
    # the portrait of the run with the most collapses (the later one on a tie)
    cards = [c for c in result["cards"] if c["collapses"]]
    if cards:
        best = max(reversed(cards), key=lambda c: c["collapses"])
        with open_run(best["path"]) as run:
            traj = sorted_trajectory(run)
        if traj is not None:
            figs["portrait"] = plot_portrait(traj[0], event_epochs=best["collapse_epochs"],
                                             title=f"phase portrait: {Path(best['path']).name}")
            result["portrait_run"] = best["path"]
    if result["perturb"] is not None:
        figs["perturb"] = plot_perturb(result["perturb"])
    if result.get("mechanism") and result["mechanism"]["records"]:
        from .mechanism import RunRecord, period_predictions
        from .plots import plot_period_laws
        mech = result["mechanism"]
        laws = period_predictions([RunRecord.from_dict(d) for d in mech["records"]],
                                  mech["baseline"])
        if any(laws.values()):
            figs["mechanism"] = plot_period_laws(laws, title="measured period against each "
                                                 "law's prediction")
    names = {}
    for name, fig in figs.items():
        save(fig, str(fig_dir / f"{name}.png"))
        names[name] = f"figures/{name}.png"
    return names


# -- text -----------------------------------------------------------------------------------


def _table1(result: dict[str, Any]) -> list[str]:
    lines = ["| s | max/min weight (essay / here) | ESS 1/Σw² | top-10% mass | top-1 | "
             "top-2 |", "|---|---|---|---|---|---|"]
    for r in result["stats"]:
        e = ESSAY_STATS.get(r["s"])
        if e is None:
            continue
        ratio = (f"{e[0]:.3g}" if e[0] > 1e9 else f"{e[0]:,}", f"{r['ratio']:.3g}"
                 if r["ratio"] > 1e9 else f"{r['ratio']:,.0f}")
        ess = f"{r['ess']:,.0f}" if r["ess"] >= 100 else f"{r['ess']:.3g}"
        lines.append(f"| {r['s']:g} | {ratio[0]} / {ratio[1]} | {e[1]:,} / {ess} | "
                     f"{_pct(e[2])} / {_pct(r['top10_mass'])} | "
                     f"{_pct(e[3], 3 if e[3] < 0.01 else 1)} / "
                     f"{_pct(r['top1'], 3 if r['top1'] < 0.01 else 1)} | "
                     f"{_pct(e[4], 3 if e[4] < 0.01 else 1)} / "
                     f"{_pct(r['top2'], 3 if r['top2'] < 0.01 else 1)} |")
    return lines


def _table2(result: dict[str, Any]) -> list[str]:
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
    return lines


def _table3(result: dict[str, Any]) -> list[str]:
    rows = _rows(result, "two_phase", ESSAY_TWO_PHASE)
    epochs = sorted({c["phase2_epochs"] for c in result["cards"] if c.get("phase2_epochs")})
    lasted = (f"Phase 2 lasted {', '.join(f'{e:,}' for e in epochs)} epochs" if epochs
              else "No two-phase run has finished")
    lines = [f"{lasted} (the essay does not say how long its phase 2 was).", "",
             "| run | seeds | phase-2 mean test: essay | here | difference | std: essay | here "
             "| lowest | < 50%: essay | here | collapses in phase 2 | to the first collapse | "
             "to test < 50% |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e = ESSAY_TWO_PHASE.get(r["s"], (None, None, None))
        lines.append(
            f"| {_variant(r, result)}s = 0 → {r['s']:g} | {_seeds(r)} | {_pct(e[0])} | "
            f"{_ms(r['phase2_mean_test'], pct=True)} | "
            f"{_diff(r['phase2_mean_test'], e[0], True)} | {_pct(e[1])} | "
            f"{_ms(r['phase2_std_test'], pct=True)} | {_ms(r['phase2_min_test'], pct=True)} | "
            f"{_pct(e[2])} | {_ms(r['phase2_frac_below_50'], pct=True)} | "
            f"{_ms(r['phase2_collapses'], '.1f')} | "
            f"{_ms(r['phase2_first_collapse'], missing='never')} | "
            f"{_ms(r['phase2_first_below_50'], missing='never')} |")
    return lines


def _saddle(result: dict[str, Any]) -> list[str]:
    sd = result["saddle"]
    lines = [f"At the last keyframe (epoch {sd['epoch']:,}) of `{Path(result['anchor']).name}`"
             f", {sd['dtype']}. Growth = −lr·μ_min − lr·wd per epoch, μ_min the most negative "
             "eigenvalue of Adam's preconditioned Hessian D^-1/2 H_s D^-1/2: > 0 means the "
             "linearized AdamW step leaves the point along that direction.", "",
             "| s | ‖∇L_s‖ | λ_min(H) | λ_max(H) | pre λ_min | pre λ_max | overlap θ_M | "
             "growth/epoch |", "|---|---|---|---|---|---|---|---|"]
    for r in sd["rows"]:
        lines.append(f"| {r['zipf_s']:g} | {r['grad_norm']:.3g} | {r['lambda_min']:.3g} | "
                     f"{r['lambda_max']:.3g} | {r['pre_lambda_min']:.3g} | "
                     f"{r['pre_lambda_max']:.3g} | {r['overlap_theta_m']:.3f} | "
                     f"{r['growth_rate']:.3g} |")
    growth = [r["growth_rate"] for r in sd["rows"]]
    mono = bool(np.all(np.diff(growth) >= 0))
    unstable = ", ".join(format(r["zipf_s"], "g") for r in sd["rows"] if r["growth_rate"] > 0)
    lines += ["", f"The predicted growth rate is {'monotone' if mono else 'not monotone'} in s"
              f"; it is positive (a saddle for AdamW) for s ∈ {{{unstable}}}."]
    return lines


def _perturb(result: dict[str, Any]) -> list[str]:
    pt = result["perturb"]
    lines = [f"From the same keyframe, {pt['dtype']}: the point is moved by ε·‖θ‖ along a unit "
             f"direction and trained {pt['epochs']} epochs under Zipf s beside an unperturbed "
             f"copy. Early rate: ln(δ({pt['early']}) / δ(0)) / {pt['early']}; late rate: the "
             "slope of ln δ over the second half. Per epoch; λ = lr·wd = "
             f"{pt['lambda']:g}.", "",
             "| s | Hessian's prediction | 1-D law's γ − λ | direction | ε | early rate | late "
             "rate | δ(end)/δ(0) |", "|---|---|---|---|---|---|---|---|"]
    preds = {p["zipf_s"]: p for p in pt["predictions"]}
    for r in pt["rows"]:
        p = preds[r["zipf_s"]]
        lines.append(f"| {r['zipf_s']:g} | {_num(p['hessian_rate'], '.3g')} | "
                     f"{_num(p['law_rate'], '.3g')} | {r['direction']} | {r['eps']:g} | "
                     f"{_num(r['rate_early'], '.3g')} | {_num(r['rate_late'], '.3g')} | "
                     f"{r['growth_factor']:.3g} |")
    return lines


def _cycle(result: dict[str, Any]) -> list[str]:
    cards = [c for c in result["cards"] if c["switch_s"] is None and c["zipf_s"] == 1.5
             and c["collapses"]]
    if not cards:
        return []
    from .analyze import run_events

    lines = ["## The s = 1.5 cycle", "",
             f"The essay: build ~{ESSAY_CYCLE['build']:,} epochs, collapse in "
             f"~{ESSAY_CYCLE['collapse']} epochs, Fourier energy down to "
             f"~{ESSAY_CYCLE['fourier_after']} after it, peak test ~"
             f"{_pct(ESSAY_CYCLE['peak_test'], 0)}.", "",
             "| run | collapse (epoch) | train-loss rise (epochs) | test before → after | "
             "Fourier energy before → after |", "|---|---|---|---|---|"]
    for c in cards:
        for e in run_events(c["path"])["events"]:
            lines.append(f"| {Path(c['path']).name} | {e['epoch']:,} | {e['duration']:.1f} | "
                         f"{_pct(e['test_acc_before'])} → {_pct(e['test_acc_after'])} | "
                         f"{_num(e['fourier_before'], '.3f')} → "
                         f"{_num(e['fourier_after'], '.3f')} |")
    return lines + [""]


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


def mechanism_rows(mech: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per control of the mechanism table: what was measured over its seeds and
    what each mechanism predicts for it (see `zgdyn.mechanism`)."""
    from .mechanism import RunRecord

    recs = [RunRecord.from_dict(d) for d in mech["records"]]
    base = {r.seed: r for r in recs if r.variant == mech["baseline"]}
    rows = []
    for variant in mech["variants"]:
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


def _mechanism(result: dict[str, Any], figures: dict[str, str]) -> list[str]:
    mech = result["mechanism"]
    rows = mechanism_rows(mech)
    if not rows:
        return ["No run of this suite is complete yet, so there is no mechanism table.", ""]
    lines = [
        "Each row is one control of the s = 1.5 run, over its seeds (mean ± std where there "
        "are several). Measured: collapses per run, the mean period, √mean v̂ at the last "
        "evaluation before each onset over ε, the first epoch with ≥ 95% test. Predicted: "
        "the saddle's period (the same seed's baseline period × λ_base/λ), Adam's clock "
        "with the onset at ε (ln(√v̂ after / ε)/((1 − β2)/2) per interval), what numerics "
        "predicts, and at onset λ_max(P⁻¹H) / the optimizer's threshold (38/lr for Adam), "
        "λ_grad / (2/lr) and λ_min(P⁻¹H) / (−2·wd) (medians over onsets).", "",
        "| control | runs | collapses | mean period | √v̂/ε at onset | first ≥ 95% | saddle "
        "predicts | clock (onset ε) predicts | numerics predicts | λ_max(P⁻¹H)/thr | "
        "λ_grad/(2/lr) | λ_min/(−2wd) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        never = sum(x is None for x in r["first_95"])
        first = _mean_sd(r["first_95"]) + (f" ({never} never)" if never else "")
        lines.append(
            f"| {r['variant']} | {r['n']} | {', '.join(map(str, r['collapses']))} | "
            f"{_mean_sd(r['period'])} | {_num(r['onset_over_eps'], '.3g')} | {first} | "
            f"{_mean_sd(r['saddle'])} | {_mean_sd(r['clock_eps'])} | {r['numerics']} | "
            f"{_num(r['eos'], '.3g')} | {_num(r['lambda_grad'], '.3g')} | "
            f"{_num(r['lambda_min'], '.3g')} |")
    lines += ["", "**Verdicts** (a period law holds where its median relative error is within "
              "15%; \"near ε\" is within a factor 10; \"at the threshold\" within a factor "
              "2):", ""]
    for v in mech["verdicts"]:
        lines.append(f"- **{v['mechanism']}**: {v['summary']}.")
        for p in v["predictions"]:
            mark = "untested" if p["held"] is None else "held" if p["held"] else "failed"
            lines.append(f"  - {p['claim']}: {mark} ({p['detail']}).")
    if "mechanism" in figures:
        lines += ["", f"![measured period against each law]({figures['mechanism']})"]
    lines += ["", _mechanism_conclusion(mech), ""]
    return lines


def _mechanism_conclusion(mech: dict[str, Any]) -> str:
    """One or two sentences from the verdicts: which mechanisms held and which failed."""
    held = [v["mechanism"] for v in mech["verdicts"] if v["summary"] == "held"]
    failed = [v["mechanism"] for v in mech["verdicts"] if v["summary"] == "failed"]
    mixed = [f"{v['mechanism']} ({v['summary']})" for v in mech["verdicts"]
             if v["summary"] not in ("held", "failed", "untested")]
    parts = []
    if held:
        parts.append(f"every tested prediction of {' and '.join(held)} held")
    if mixed:
        parts.append(f"{', '.join(mixed)} held in part")
    if failed:
        parts.append(f"{' and '.join(failed)} failed every prediction tested")
    n = len({r["variant"] for r in mech["records"]})
    return (f"**Conclusion** (from {len(mech['records'])} runs of {n} controls): "
            + ("; ".join(parts) if parts else "nothing could be tested yet") + ".")


def format_report(result: dict[str, Any], figures: dict[str, str]) -> str:
    s = result["suite"]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    sec = result["seconds"]
    ok = sum(r["ok"] and r["action"] != "skipped" for r in result["results"])
    lines = [MARKER, f"# zgdyn report: suite `{s['name']}`", "",
             s["description"], "",
             f"Written {now} on {platform.machine()} with {os.cpu_count()} cores, "
             f"{len(result['results'])} runs ({ok} finished), seeds {s['seeds']}; the runs took "
             f"{sec['runs'] / 60:.1f} min, everything {sec['total'] / 60:.1f} min. Suite file: "
             f"`{s['source']}`; runs under `{result['out']}/runs`. Each run file opens with "
             "`zgdyn info`, and `zgdyn scorecard` prints any run's row.", ""]
    if result["errors"]:
        lines += ["**Runs that failed:**", ""] + [f"- `{p}`: {e}" for p, e in
                                                  result["errors"].items()] + [""]
    skipped = [r for r in result["results"] if r["action"] == "skipped"]
    if skipped:
        lines += [f"**Runs of this suite not run this time ({len(skipped)}), so missing from "
                  "the tables:** " + ", ".join(f"`{Path(r['path']).name}` ({r['note']})"
                                               for r in skipped), ""]
    if "grokking" in figures:
        card = next(c for c in result["cards"] if c["path"] == result["anchor"])
        lines += ["## Grokking at s = 0", "",
                  f"`{Path(result['anchor']).name}`: first ≥ 95% test accuracy at epoch "
                  f"{_num(card['first_95'])} (the essay: 14,000), final test accuracy "
                  f"{_pct(card['final_test_acc'], 2)}.", "", f"![grokking]({figures['grokking']})",
                  ""]
    lines += ["## Table 1: the Zipf weights (essay / here)", ""] + _table1(result) + [""]
    lines += ["## Table 2: single phase", ""] + _table2(result) + [""]
    if "single" in figures:
        lines += [f"![single phase]({figures['single']})", ""]
    lines += _cycle(result)
    if result.get("mechanism") is not None:
        lines += ["## Why the Fourier solution falls: the mechanism table", ""] + \
            _mechanism(result, figures)
    lines += ["## Table 3: two phase", ""] + _table3(result) + [""]
    if "two-phase" in figures:
        lines += [f"![two phase]({figures['two-phase']})", ""]
    if "portrait" in figures:
        lines += ["## Phase portrait", "", f"`{Path(result['portrait_run']).name}`, the run "
                  "with the most collapses: the trajectory in the (Fourier energy, ln m_w) "
                  "plane, collapses crossed.", "", f"![phase portrait]({figures['portrait']})",
                  ""]
    if result["saddle"] is not None:
        lines += ["## The saddle table", ""] + _saddle(result) + [""]
    if result["perturb"] is not None:
        lines += ["## The perturbation experiment", ""] + _perturb(result) + [""]
        if "perturb" in figures:
            lines += [f"![perturbations]({figures['perturb']})", ""]
    return "\n".join(lines) + "\n"


def check_report_path(out_dir: str | Path) -> Path:
    """OUT/REPORT.md, if zgdyn may write it: absent, or written by zgdyn before."""
    path = Path(out_dir) / "REPORT.md"
    if path.exists() and not path.read_text(errors="replace").startswith(MARKER):
        raise ZgdynError(f"{path}: exists and was not written by zgdyn; move it away or give "
                         "another --out (it is never replaced)")
    return path


def write_report(result: dict[str, Any], out_dir: str | Path) -> Path:
    """Write REPORT.md and its figures under `out_dir`; returns the report's path."""
    out_dir = Path(out_dir)
    path = check_report_path(out_dir)
    figures = _figures(result, out_dir / "figures")
    text = format_report(result, figures)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path


def reproduce(suite: str | Any, out: str | Path = "data/report", *,
              seeds: list[int] | None = None, **kw: Any) -> dict[str, Any]:
    """What `zgdyn reproduce` does: run a suite (a name, a file or a `Suite`), analyze it and
    write OUT/REPORT.md. `seeds` overrides the suite's; `kw` goes to `suite.run_suite`
    (jobs, threads, plugins, progress, report_only, only). Returns run_suite's result with
    the report's path under "report"."""
    from .suite import Suite, load_suite, suite_from_dict

    if not isinstance(suite, Suite):
        suite = load_suite(str(suite))
    if seeds:
        import tomllib
        with open(suite.source, "rb") as fh:
            suite = suite_from_dict({**tomllib.load(fh), "seeds": list(seeds)}, suite.source)
    check_report_path(out)  # before hours of runs, not after
    from .suite import run_suite
    result = run_suite(suite, out, **kw)
    result["report"] = str(write_report(result, out))
    return result


__all__ = ["reproduce", "write_report", "check_report_path", "format_report", "ESSAY_STATS",
           "ESSAY_SINGLE", "ESSAY_TWO_PHASE"]
