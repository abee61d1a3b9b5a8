"""Plain-text renderings of results for the terminal: one `format_*` per command that
prints a table."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..analysis.perturb import PerturbResult
    from ..analysis.stability import SaddleResult
    from ..batch.leaderboard import Leaderboard
    from ..batch.results import SuiteResult


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def optimizer_text(o: dict[str, Any], sch: dict[str, Any]) -> str:
    """An optimizer's name and the settings it uses, from a config's optim section (files
    from before `name` existed are AdamW)."""
    name = o.get("name", "adamw")
    text = f"{name} lr {o['lr']:g}, weight decay {o['weight_decay']:g}"
    if name == "sgd":
        mu = o.get("momentum") or 0.0
        text += f", momentum {mu:g}" + (" (Nesterov)" if o.get("nesterov") else "")
    else:
        text += f", betas ({o['beta1']}, {o['beta2']})"
        if name != "adam_atan2":
            text += f", eps {o['eps']:g}"
        if o.get("sqrt_v_floor"):
            text += f", sqrt(v-hat) floor {o['sqrt_v_floor']:g}"
        if o.get("update_clip"):
            text += ", update clipping"
    if o.get("flush_subnormals"):
        text += ", subnormals flushed to zero"
    if sch.get("switch_optimizer") or sch.get("switch_lr"):
        text += (f"; after the switch {sch.get('switch_optimizer') or name}"
                 + (f" lr {sch['switch_lr']:g}" if sch.get("switch_lr") else ""))
    if sch.get("reset_optimizer_at_switch"):
        text += "; its state reset at the switch"
    return text + (f", hook {o['hook']} (strength {o['hook_strength']:g})" if o.get("hook")
                   else "")


def format_info(s: dict[str, Any]) -> str:
    c = s["config"]
    d, m, o, sch = c["data"], c["model"], c["optim"], c["schedule"]
    fin = s["final"]
    lines = [
        f"run            {s['path']}  ({s['status']}, format v{s['format_version']}, "
        f"{s['file_bytes'] / 1e6:.1f} MB)",
        f"task           (a + b) mod {d['p']}, train fraction {d['train_frac']}, seed {c['seed']}",
        f"weighting      {d['weighting']}, s = {d['zipf_s']}"
        + (f" -> s = {sch['switch_s']} at epoch {s['switch_epoch']}"
           if s["switch_epoch"] is not None else
           (f" -> s = {sch['switch_s']} (switch not reached)" if sch["switch_s"] is not None
            else "")),
        f"model          MLP 2p -> {' -> '.join(map(str, m['hidden']))} -> p, {s['n_params']:,} "
        f"parameters, {m['init']} init, {m['dtype']}"
        + (f", {m['loss']} loss" if m.get("loss", "softmax") != "softmax" else ""),
        f"optimizer      {optimizer_text(o, sch)}",
        f"epochs done    {s['epochs_done']:,} of {sch['epochs']:,}"
        + (f" (+{sch['phase2_epochs']:,} after the switch)" if sch["phase2_epochs"] else ""),
        f"records        {s['n_evals']:,} evaluations, {s['n_checkpoints']:,} checkpoints, "
        f"{s['n_keyframes']:,} keyframes, {s['n_windows']} collapse window(s) of "
        f"{s['n_window_records']:,} per-epoch records",
        f"first >= 95%   {opt(s['first_epoch_test_acc_95'], 'd').replace('-', 'never')} "
        "(test accuracy, on the evaluation grid)",
        f"time >= 95%    {pct(s['frac_evals_test_acc_95'])} of evaluations",
        f"final          epoch {int(fin['epoch']) if fin['epoch'] is not None else '-'}: "
        f"train acc {pct(fin['train_acc'])}, test acc {pct(fin['test_acc'])}, "
        f"train loss {opt(fin['train_loss'], '.3g')}, test loss {opt(fin['test_loss'], '.3g')}",
    ]
    return "\n".join(lines) + "\n"


def opt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def fmt_ratio(x: float) -> str:
    return f"{x:,.0f}" if x < 1e9 else f"{x:.3g}"


def fmt_sig(x: float) -> str:
    return f"{x:,.0f}" if x >= 1000 else f"{x:.3g}" if x < 100 else f"{x:.1f}"


def pm(value: float | None, err: float | None, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}" + ("" if err is None else f" ± {err:{spec}}")


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def format_saddle(r: SaddleResult) -> str:
    lines = [f"saddle test at epoch {r.epoch} ({r.dtype}, {r.n_key} key frequencies); "
             f"decay rate lr*wd = {r.lr_wd:g}/epoch, Adam threshold {r.adam_threshold:.4g}",
             f"{'s':>4} {'|grad L_s|':>11} {'λ_min':>10} {'λ_max':>10} {'pre λ_min':>10} "
             f"{'pre λ_max':>10} {'overlap θ_M':>11} {'growth/epoch':>12}"]
    for row in r.rows:
        lines.append(f"{row.zipf_s:>4g} {fmt(row.grad_norm):>11} "
                     f"{fmt(row.lambda_min):>10} {fmt(row.lambda_max):>10} "
                     f"{fmt(row.pre_lambda_min):>10} {fmt(row.pre_lambda_max):>10} "
                     f"{row.overlap_theta_m:>11.3f} {fmt(row.growth_rate):>12}"
                     + ("" if row.converged else "  (not converged)"))
    lines.append("growth = -lr*(pre λ_min) - lr*wd: > 0 means the linearized AdamW update leaves "
                 "the point along that direction; monotone in s: "
                 f"{'yes' if r.monotone_growth else 'no'}")
    return "\n".join(lines) + "\n"


def format_sharpness(s: dict[str, Any], onsets: dict[str, Any]) -> str:
    th = s["thresholds"]
    lines = [f"measured      {s['n_points']} points ({s['newly_measured']} new of "
             f"{s['n_asked']} asked) -> {s['path']}:{s['group']}",
             f"tolerance     {s['tolerance']}; {s['hvps']} HVPs in all; converged: "
             f"{'all' if s['all_converged'] else 'not all'}",
             f"Adam's state  {s['adam_state']}",
             f"thresholds    38/lr = {th['adam_edge']:.4g}, 2/lr = {th['two_over_lr']:.4g}, "
             f"-wd = {th['minus_wd']:g}, -2*wd = {th['minus_two_wd']:g}"]
    rows = onsets["rows"]
    if rows and "pre_lambda_max" in rows[0]:
        lines.append("at each onset's last point before it (and over its 100 to 10 epochs "
                     "before, the median):")
        lines.append(f"{'onset':>8} {'before':>8} {'λmax(P⁻¹H)':>11} {'/ 38/lr':>8} "
                     f"{'(median)':>9} {'λgrad(P⁻¹H)':>12} {'/ 2/lr':>8} {'λmin(P⁻¹H)':>11} "
                     f"{'/ -2wd':>8}")
        for r in rows:
            near = r["pre_lambda_max/adam_edge@approach"]
            lines.append(f"{r['onset']:>8} {r['before_epoch']:>8} "
                         f"{fmt(r['pre_lambda_max']):>11} "
                         f"{r['pre_lambda_max/adam_edge']:>8.3g} "
                         f"{'-' if near is None else f'{near[0]:.3g}':>9} "
                         f"{fmt(r['pre_lambda_grad']):>12} "
                         f"{r['pre_lambda_grad/two_over_lr']:>8.3g} "
                         f"{fmt(r['pre_lambda_min']):>11} "
                         f"{r['pre_lambda_min/minus_two_wd']:>8.3g}")
        lines += onsets["verdicts"]
    if onsets["unmeasured_onsets"]:
        lines.append("onsets with no measured point in the 10 epochs before: "
                     + ", ".join(str(e) for e in onsets["unmeasured_onsets"]))
    return "\n".join(lines) + "\n"


def format_scorecards(cards: list[dict[str, Any]]) -> str:
    lines = [f"{'run':<34} {'status':>9} {'epochs':>8} {'first>=95%':>10} {'>=95%':>6} "
             f"{'coll/100k':>9} {'period':>7} {'ph2 mean':>8} {'ph2 std':>7} {'ph2<50%':>7} "
             f"{'ph2 coll':>8} {'->coll':>7} {'-><50%':>7}"]
    for c in cards:
        lines.append(
            f"{Path(c['path']).name[-34:]:<34} {c['status']:>9} {c['epochs_done']:>8,} "
            f"{opt(c['first_95'], ',d').replace('-', 'never'):>10} "
            f"{pct(c['frac_above_95']):>6} {opt(c['collapses_per_100k'], '.2f'):>9} "
            f"{opt(c['period_mean'], ',.0f'):>7} {pct(c['phase2_mean_test']):>8} "
            f"{pct(c['phase2_std_test']):>7} {pct(c['phase2_frac_below_50']):>7} "
            f"{opt(c['phase2_collapses'], 'd'):>8} {opt(c['phase2_first_collapse'], ',d'):>7} "
            f"{opt(c['phase2_first_below_50'], ',d'):>7}")
    return "\n".join(lines) + "\n"


def format_two_phase(result: SuiteResult) -> str:
    from ..present.report_sections import TABLE3_COLUMNS, table3_cells

    rows = [list(TABLE3_COLUMNS), *table3_cells(result, digits=2)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TABLE3_COLUMNS))]
    lines = [f"two-phase runs under {result.out}/runs/{result.suite.name} "
             f"(phase-2 statistics over evaluations; mean ± std over seeds)"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines += [f"failed: {p}: {e}" for p, e in result.errors.items()]
    return "\n".join(lines) + "\n"


def format_perturb(r: PerturbResult) -> str:
    lines = [f"perturbations of {r.path} at epoch {r.epoch} ({r.dtype}, {r.epochs} "
             f"epochs; lambda = lr*wd = {r.lam:g}/epoch)"]
    for p in r.predictions:
        lines.append(f"s = {p.zipf_s:g}: predicted growth/epoch: Hessian (preconditioned "
                     f"mu_min = {opt(p.mu_min, '.4g')}) {opt(p.hessian_rate, '.4g')}; "
                     f"1-D law gamma_inst - lambda = {p.law_rate:.4g}")
    lines.append(f"{'s':>5} {'direction':>9} {'eps':>8} {'early rate':>11} {'late rate':>11} "
                 f"{'delta end/start':>15} {'test acc end':>12} {'(unperturbed)':>13}")
    for x in r.rows:
        lines.append(f"{x.zipf_s:>5g} {x.direction:>9} {x.eps:>8.0e} "
                     f"{opt(x.rate_early, '.4g'):>11} {opt(x.rate_late, '.4g'):>11} "
                     f"{x.growth_factor:>15.4g} {pct(x.test_acc_end):>12} "
                     f"{pct(x.base_test_acc_end):>13}")
    return "\n".join(lines) + "\n"


def format_summary(result: SuiteResult) -> str:
    """The demo's terminal summary: grokking, the two-phase table, the saddle table."""
    lines = []
    anchor = result.card(result.anchor) if result.anchor else None
    if anchor is not None:
        lines.append(f"grokking at s = 0: first >= 95% test at epoch "
                     f"{opt(anchor.first_95, ',d')} (essay: 14,000); final test "
                     f"{pct(anchor.final_test_acc)}")
    if any(r["table"] == "two_phase" for r in result.tables):
        lines.append(format_two_phase(result).rstrip("\n"))
    if result.saddle is not None:
        lines.append(format_saddle(result.saddle).rstrip("\n"))
    if result.perturb is not None:
        lines.append(format_perturb(result.perturb).rstrip("\n"))
    lines.append(f"took {result.seconds['total'] / 60:.1f} min "
                 f"(runs {result.seconds['runs'] / 60:.1f} min)")
    return "\n".join(lines) + "\n"


def format_sweep_report(r: dict[str, Any]) -> str:
    """The sweep's table: one row per run, its varied fields and its scorecard."""
    axes = r["axes"]
    widths = [max(len(a), *(len(f"{x['fields'][a]}") for x in r["rows"])) for a in axes]
    head = " ".join(f"{a:>{w}}" for a, w in zip(axes, widths))
    lines = [f"sweep {r['name']} in {r['out']}: {len(r['rows'])} runs",
             f"{head} {'status':>11} {'epochs':>8} {'first>=95%':>10} {'>=95%':>6} "
             f"{'collapses':>9} {'coll/100k':>9} {'period':>7} {'final':>6}"]
    for x in r["rows"]:
        c = x["card"] or {}
        cells = " ".join(f"{x['fields'][a]!s:>{w}}" for a, w in zip(axes, widths))
        first = opt(c.get("first_95"), ",d").replace("-", "never") if c else "-"
        lines.append(f"{cells} {x['status']:>11} {opt(c.get('epochs_done'), ',d'):>8} "
                     f"{first:>10} {pct(c.get('frac_above_95')):>6} "
                     f"{opt(c.get('collapses'), 'd'):>9} "
                     f"{opt(c.get('collapses_per_100k'), '.2f'):>9} "
                     f"{opt(c.get('period_mean'), ',.0f'):>7} "
                     f"{pct(c.get('final_test_acc')):>6}")
    lines += [f"failed: {x['label']}: {x['error']}" for x in r["rows"] if x["error"]]
    return "\n".join(lines) + "\n"


def format_leaderboard(board: Leaderboard) -> str:
    """The leaderboard: one row per method, ranked, then the conclusion."""
    def ms(st: Any, fn: Any = pct, none: str = "no switch") -> str:
        if st.mean is None:  # no run, or runs without the value: phase 1 never ended
            return "-" if st.runs == 0 else none
        return fn(st.mean) + ("" if st.std is None else f" ± {fn(st.std)}") + \
            ("" if st.n == st.runs else f" ({st.n}/{st.runs})")
    k = f"{board.rank_s:g}"
    head = ["#", "method", *(f"ph2 mean s={s:g}" for s in board.two_phase_s),
            f"ph2 min s={k}", f"<50% s={k}", "coll/100k", "first>=95%", "cost"]
    rows = [["-" if r.rank is None else str(r.rank), r.variant,
             *(ms(r.phase2_mean[f"{s:g}"]) for s in board.two_phase_s),
             ms(r.phase2_min), ms(r.phase2_below_50),
             ms(r.collapses_per_100k, lambda x: f"{x:.2f}", "-"),
             ms(r.first_95, lambda x: f"{x:,.0f}", "never"),
             "-" if r.cost is None else f"{r.cost:.2f}x"] for r in board.rows]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(len(head))]
    lines = [f"leaderboard of suite {board.suite} in {board.out}: baseline {board.baseline}, "
             f"ranked by the phase-2 mean test accuracy at s = {k} (mean ± std over seeds; "
             "(n/runs) where some runs lack the value; cost: epoch time over the baseline's)"]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)).rstrip()
              for row in [head, *rows]]
    if board.missing:
        lines.append(f"not finished: {len(board.missing)} runs")
    lines.append(board.conclusion)
    return "\n".join(lines) + "\n"


__all__ = ["format_leaderboard", "pct", "optimizer_text", "format_info", "opt", "fmt_ratio",
           "fmt_sig", "pm", "fmt",
           "format_saddle", "format_sharpness", "format_scorecards", "format_two_phase",
           "format_perturb", "format_summary", "format_sweep_report"]
