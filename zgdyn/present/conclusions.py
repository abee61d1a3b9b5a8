"""The sentences a report concludes with, computed from its measurements with stated
thresholds: never written by hand. Pure functions of a suite's result pieces (scorecard
rows, the saddle table, the perturbation rows, metrics arrays); each returns text.

    >>> cycle = full_cycle(metrics, collapse_epochs)
    >>> saddle_conclusion(result.saddle)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ..analysis.perturb import PerturbResult
    from ..analysis.stability import SaddleResult

AGREE = 0.20  # an epoch count "agrees" with the essay's within this relative difference
POINTS = 0.10  # an accuracy "agrees" within this many points (0.10 = 10 percentage points)
CLIMB, RECOVER = 0.90, 0.95  # a full cycle: test >= CLIMB, a collapse, then test >= RECOVER
HOLDS, FALLS = 0.85, 0.10  # two-phase: "holds" above, "falls" below this phase-2 mean test
CONVERGED_GRAD = 1e-4  # a point is converged when its train-loss gradient norm is below this
SAME_GROWTH = 1.5  # perturbation growth factors within this ratio are "as fast"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ep(x: float | None) -> str:
    return "never" if x is None else f"{x:,.0f}"


def _join(xs: list[str]) -> str:
    return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]


# -- the cycle ------------------------------------------------------------------------------


def full_cycle(metrics: dict[str, np.ndarray], collapse_epochs: list[int]) -> dict[str, Any]:
    """The first full cycle of a run: the first evaluation with test accuracy ≥ CLIMB, the
    first collapse after it, and the first evaluation after that collapse with test ≥
    RECOVER. {"climb", "collapse", "recover"} (None where it did not happen), "complete",
    and the lowest test accuracy between the collapse and the recovery."""
    e, t = np.asarray(metrics["epoch"]), np.asarray(metrics["test_acc"])
    up = np.flatnonzero(t >= CLIMB)
    out: dict[str, Any] = {"climb": None, "collapse": None, "recover": None, "trough": None,
                           "complete": False}
    if not len(up):
        return out
    out["climb"] = int(e[up[0]])
    later = [c for c in collapse_epochs if c >= out["climb"]]
    if not later:
        return out
    out["collapse"] = int(later[0])
    after = np.flatnonzero((e > later[0]) & (t >= RECOVER))
    if len(after):
        out["recover"] = int(e[after[0]])
        between = (e >= later[0]) & (e <= out["recover"])
        out["trough"] = float(t[between].min())
        out["complete"] = True
    return out


def cycle_conclusion(name: str, cycle: dict[str, Any], epochs: int) -> str:
    if cycle["complete"]:
        return (f"`{name}` completes a cycle: test accuracy reaches {_pct(CLIMB)} at epoch "
                f"{cycle['climb']:,}, collapses at {cycle['collapse']:,} (down to "
                f"{_pct(cycle['trough'])}) and recovers to {_pct(RECOVER)} at "
                f"{cycle['recover']:,}.")
    if cycle["climb"] is None:
        return (f"`{name}` shows no full cycle: in {epochs:,} epochs its test accuracy never "
                f"reached {_pct(CLIMB)}.")
    if cycle["collapse"] is None:
        return (f"`{name}` shows no full cycle: it reached {_pct(CLIMB)} at "
                f"{cycle['climb']:,} and did not collapse within {epochs:,} epochs.")
    return (f"`{name}` shows no full cycle: it reached {_pct(CLIMB)} at {cycle['climb']:,} "
            f"and collapsed at {cycle['collapse']:,}, but did not recover to "
            f"{_pct(RECOVER)} within {epochs:,} epochs.")


# -- the essay's tables ---------------------------------------------------------------------


def grokking_conclusion(first_95: int | None, essay: int) -> str:
    if first_95 is None:
        return f"The s = 0 run never reached 95% test accuracy (the essay: epoch {essay:,})."
    rel = (first_95 - essay) / essay
    verdict = "agrees with" if abs(rel) <= AGREE else "differs from"
    return (f"Grokking at epoch {first_95:,} {verdict} the essay's {essay:,} ({rel:+.0%}; "
            f"agreement means within {AGREE:.0%}).")


def _rounds_to(value: float, shown: str) -> bool:
    """Whether `value` shown to the precision of the essay's text `shown` reads the same."""
    s = shown.replace(",", "").rstrip("%x")
    x = value * 100 if shown.endswith("%") else value
    decimals = len(s.split(".")[1]) if "." in s else 0
    return round(x, decimals) == round(float(s), decimals)


def table1_conclusion(matches: list[tuple[str, bool]]) -> str:
    """matches: (what, whether zgdyn's value reads as the essay's to its digits)."""
    bad = [w for w, ok in matches if not ok]
    if not bad:
        return (f"All {len(matches)} statistics the essay gives match zgdyn's to the digits "
                "the essay shows.")
    return (f"{len(matches) - len(bad)} of {len(matches)} statistics the essay gives match "
            f"to its digits; {_join(bad)} do not.")


def table2_conclusion(rows: list[dict[str, Any]], essay: dict[float, tuple]) -> str:
    """rows: (s, mean first_95 or None) of the first variant, ordered by s."""
    have = [(r["s"], r["first_95"]) for r in rows if r["s"] in essay]
    if not have:
        return "No single-phase run at the essay's exponents has finished."
    firsts = [f for _, f in have if f is not None]
    later = all(b >= a for a, b in zip(firsts, firsts[1:])) and len(firsts) == len(have)
    agree = [f"s = {s:g}" for s, f in have if f is not None
             and abs(f - essay[s][0]) <= AGREE * essay[s][0]]
    off = [f"s = {s:g} ({_ep(f)} against {essay[s][0]:,})" for s, f in have
           if f is None or abs(f - essay[s][0]) > AGREE * essay[s][0]]
    text = ("The first epoch with ≥ 95% test accuracy comes later as s grows, as in the "
            "essay" if later else "The first epoch with ≥ 95% test accuracy does not grow "
            "with s everywhere, unlike the essay")
    text += f"; it agrees with the essay's within {AGREE:.0%} at {_join(agree)}" if agree \
        else f"; it agrees with the essay's within {AGREE:.0%} at no exponent"
    return text + (f", and not at {_join(off)}." if off else ".")


def table3_conclusion(rows: list[tuple[float, float | None]],
                      essay: dict[float, tuple]) -> str:
    """rows: (s, mean phase-2 test accuracy or None) of the first variant, ordered by s."""
    have = [(s, m) for s, m in rows if m is not None]
    if not have:
        return "No two-phase run has finished."
    means = [m for _, m in have]
    mono = all(b <= a for a, b in zip(means, means[1:]))
    parts = [("The phase-2 accuracy falls monotonically as s grows, as in the essay" if mono
              else "The phase-2 accuracy does not fall monotonically with s, unlike the "
              "essay")]
    holds = [f"s = {s:g}" for s, m in have if m >= HOLDS]
    falls = [f"s = {s:g}" for s, m in have if m < FALLS]
    if holds:
        parts.append(f"the solution holds (phase-2 mean ≥ {_pct(HOLDS)}) at {_join(holds)}")
    if falls:
        parts.append(f"it falls (below {_pct(FALLS)}) at {_join(falls)}")
    off = [f"s = {s:g} by {100 * (m - essay[s][0]):+.1f} pts" for s, m in have if s in essay
           and abs(m - essay[s][0]) > POINTS]
    text = "; ".join(parts) + "."
    if off:
        text += (f" It differs from the essay by more than {100 * POINTS:.0f} points at "
                 f"{_join(off)}.")
    else:
        text += f" Every phase-2 mean is within {100 * POINTS:.0f} points of the essay's."
    return text


def variant_conclusion(rows: list[dict[str, Any]], baseline: str,
                       stuck: list[str] | tuple[str, ...] = ()) -> str:
    """rows: `report_sections.variant_effects`, one per (variant, s) on the seeds it shares
    with `baseline`. Names the variant that moves the phase-2 mean test accuracy furthest
    toward the essay's where the baseline differs from the essay by more than POINTS, and
    the variants in `stuck`, whose runs never switched."""
    text = _variant_effect(rows, baseline)
    if stuck:
        text += (f" Runs of {_join(list(stuck))} never switched: their phase 1 ended at its "
                 "epoch cap below the switch's test accuracy, so they have no phase 2.")
    return text


def _variant_effect(rows: list[dict[str, Any]], baseline: str) -> str:
    gaps = [r for r in rows if r["gap"] is not None and abs(r["gap"]) > POINTS]
    if not rows:
        return "No variant shares a finished two-phase run's seed with the baseline."
    if not gaps:
        return (f"The {baseline} runs are within {100 * POINTS:.0f} points of the essay at "
                "every exponent the variants ran: there is no gap for a variant to explain.")
    by: dict[str, list[dict[str, Any]]] = {}
    for r in gaps:
        by.setdefault(r["variant"], []).append(r)
    share = {v: float(np.mean([r["share"] for r in rs])) for v, rs in by.items()}
    order = sorted(share, key=lambda v: -share[v])
    best = order[0]

    def said(v: str) -> str:
        return _join([f"s = {r['s']:g} by {100 * r['change']:+.1f} pts ({r['share']:.0%} of "
                      f"the gap, {r['n']} seed{'s' if r['n'] > 1 else ''})" for r in by[v]])

    where = _join([f"s = {s:g}" for s in sorted({r["s"] for r in gaps})])
    text = (f"Where the {baseline} runs hold the solution better or worse than the essay "
            f"(by more than {100 * POINTS:.0f} points: {where}), {best} moves the phase-2 "
            f"mean test accuracy furthest toward the essay's: {said(best)}")
    if share[best] >= 0.5:
        text += "; it explains most of the difference."
    else:
        text += "; no variant explains most of the difference."
    rest = [f"{v}: {said(v)}" for v in order[1:]]
    return text + (f" The others: {'; '.join(rest)}." if rest else "")


# -- the saddle table and the perturbations ---------------------------------------------------


def point_converged(saddle: SaddleResult) -> tuple[bool, float | None]:
    """Whether the saddle table's point is converged under its own loss (s = 0 row's
    gradient norm below CONVERGED_GRAD), and that norm."""
    row0 = next((r for r in saddle.rows if r.zipf_s == 0), None)
    if row0 is None:
        return True, None
    return row0.grad_norm < CONVERGED_GRAD, row0.grad_norm


def saddle_conclusion(saddle: SaddleResult, weight_decay: float) -> str:
    rows = saddle.rows
    ok, g0 = point_converged(saddle)
    unconverged = [f"s = {r.zipf_s:g}" for r in rows if not r.converged]
    grow = [r for r in rows if r.growth_rate > 0 and r.converged]
    parts = []
    if not ok:
        parts.append(f"The point is not converged (‖∇L_0‖ = {g0:.2g} ≥ {CONVERGED_GRAD:g}): "
                     "it is moving under its own loss, so the table describes the "
                     "curvature along a trajectory, not a stationary point, and no row "
                     "is evidence of a saddle")
    zipf = [r for r in rows if r.zipf_s > 0]
    if zipf:
        worst = min(zipf, key=lambda r: r.lambda_min)
        ratio = abs(worst.lambda_min) / weight_decay if weight_decay else math.inf
        coupled = "a minimum" if worst.lambda_min + weight_decay > 0 else "a saddle"
        parts.append(f"The loss's own most negative curvature is {worst.lambda_min:.2g} "
                     f"(s = {worst.zipf_s:g}), {ratio:.2g} of wd = {weight_decay:g}, so "
                     f"with the decay counted (H + wd·I) the point is {coupled}")
    if grow:
        names = [f"s = {r.zipf_s:g}" for r in grow]
        ctrl = any(r.zipf_s == 0 for r in grow)
        parts.append(f"Adam's preconditioner makes the linearized step unstable at "
                     f"{_join(names)}" + (", the uniform control included: the instability "
                                          "is not specific to Zipf weighting" if ctrl else ""))
    if unconverged:
        parts.append(f"The eigenvalues did not converge at {_join(unconverged)}, whose "
                     "rows are marked and not counted")
    return ". ".join(parts) + "." if parts else "Nothing to conclude: the table is empty."


def perturb_conclusion(perturb: PerturbResult) -> str:
    """Whether perturbations grow faster with Zipf weighting than in the s = 0 control, and
    whether the Hessian direction grows faster than a random one."""
    rows = perturb.rows
    eps = min(r.eps for r in rows)
    grow = {(r.zipf_s, r.direction): r.growth_factor for r in rows
            if r.eps == eps}
    zipf = sorted({s for s, _ in grow if s > 0})
    parts = []
    if any(s == 0 for s, _ in grow) and zipf:
        for s in zipf:
            ratios = [grow[(s, d)] / grow[(0.0, d)] for (ss, d) in grow if ss == s
                      and (0.0, d) in grow]
            if not ratios:
                continue
            r = float(np.median(ratios))
            word = ("as fast as" if 1 / SAME_GROWTH <= r <= SAME_GROWTH else
                    "faster than" if r > SAME_GROWTH else "slower than")
            parts.append(f"at s = {s:g} perturbations grow {word} in the s = 0 control "
                         f"(median ratio {r:.2g} over the directions)")
    for s in sorted({s for s, _ in grow}):
        if (s, "hessian") in grow and (s, "random") in grow:
            r = grow[(s, "hessian")] / grow[(s, "random")]
            if r > SAME_GROWTH:
                parts.append(f"the Hessian direction outgrows a random one at s = {s:g} "
                             f"({r:.2g}×)")
    singled = any("outgrows" in p for p in parts)
    verdict = ("The perturbations single out the saddle direction"
               if singled and any("faster than" in p for p in parts) else
               "The perturbations do not single out the Zipf saddle")
    rule = (f"ε = {eps:g}, growth factors δ(end)/δ(0) over {perturb.epochs} epochs; "
            f"\"as fast\" means within {SAME_GROWTH:g}×")
    return f"{verdict}: " + "; ".join(parts) + f" ({rule})." if parts else \
        f"Nothing to compare: no s = 0 control or no Zipf rows ({rule})."


def late_rate_agreement(perturb: PerturbResult) -> str:
    """How often the late rate has the sign of the Hessian's prediction."""
    preds = {p.zipf_s: p.hessian_rate for p in perturb.predictions}
    pairs = [(preds[r.zipf_s], r.rate_late) for r in perturb.rows
             if preds.get(r.zipf_s) is not None and r.rate_late is not None]
    if not pairs:
        return ""
    same = sum(np.sign(a) == np.sign(b) for a, b in pairs)
    return (f"The late rate has the sign of the Hessian's predicted rate in {same} of "
            f"{len(pairs)} rows.")


__all__ = ["full_cycle", "cycle_conclusion", "grokking_conclusion", "table1_conclusion",
           "table2_conclusion", "table3_conclusion", "saddle_conclusion", "perturb_conclusion",
           "late_rate_agreement", "point_converged", "variant_conclusion", "AGREE", "POINTS", "CLIMB", "RECOVER",
           "HOLDS", "FALLS", "CONVERGED_GRAD", "SAME_GROWTH"]
