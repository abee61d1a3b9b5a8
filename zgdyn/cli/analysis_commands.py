"""The commands that analyze a run file: analyze, plot, events, fit, replay, hessian, saddle,
sharpness and perturb. Each calls one library function and prints or saves its result."""

from __future__ import annotations

import argparse
import sys

from ..core.config import ZgdynError
from .common import check_finite, device_arg, figure_paths, print_json, save_figure
from .text import fmt, format_perturb, format_saddle, format_sharpness, opt, pct, pm


def cmd_analyze(args: argparse.Namespace) -> int:
    from ..analysis.analyze import analyze_run

    s = analyze_run(args.run, key_freqs=args.key_freqs, ref_epoch=args.ref_epoch,
                    top_k=args.top_k, force=args.force, progress=not args.no_progress)
    if args.json:
        print_json(s)
        return 0
    fe, g = s.fourier_energy, s.gamma_curve
    key = (f"{s.n_key} fixed from epoch {s.ref_epoch}: {list(s.key)}"
           if s.key is not None else f"chosen afresh at each checkpoint "
           f"({s.n_key_auto_final} at the last)")
    m_star = "none (gamma stays on one side of lambda)" if g.m_star is None \
        else f"{g.m_star:.3g}"
    gn = s.gamma_near_solution
    near = "-" if gn.gamma_fd_mean is None else \
        f"{gn.gamma_fd_mean:.3g} ({'above' if gn.above_lambda else 'below'} lambda)"
    gi = s.gamma_inst
    lines = [
        f"analyzed       {s.n_checkpoints} checkpoints + {s.n_window_records} window "
        f"records ({s.newly_analyzed} new) -> "
        f"{s.path}:analysis/trajectory",
        f"key freqs      {key}",
        f"Fourier energy start {fe.start:.3f}, peak {fe.peak:.3f} (epoch "
        f"{fe.peak_epoch}), end {fe.end:.3f}; all-diagonal fraction at the end "
        f"{s.diagonal_fraction_end:.3f}",
        f"m_w (weights)  {s.m_w.min:.3g} .. {s.m_w.max:.3g}, end {s.m_w.end:.3g}",
        f"m_f (logits)   {s.m_f.min:.3g} .. {s.m_f.max:.3g}, end {s.m_f.end:.3g}",
        f"gamma(m)       lambda_eff = lr*wd = {s.lambda_eff:.3g}/epoch; crossing m* = {m_star}; "
        f"gamma_fd near the solution (energy >= 95% of peak, {gn.n} checkpoints): {near}",
        f"gamma_inst     {gi.n} keyframes, median {opt(gi.median, '.3g')}/epoch, "
        f"fraction above lambda {opt(gi.frac_above_lambda, '.2f')}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ..present.plots import run_figure

    if args.figure is None:
        raise ZgdynError("plot: --figure FIG.png is required (where the figure goes)")
    outs = figure_paths(args.figure, args.force)
    fig = run_figure(str(args.run), args.kind, epoch_from=args.epoch_from,
                     epoch_to=args.epoch_to, epochs=args.epochs)
    save_figure(fig, outs)
    sys.stdout.write(f"wrote {', '.join(str(o) for o in outs)}\n")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from ..analysis.analyze import run_events

    r = run_events(str(args.run), threshold=args.threshold, lookback=args.lookback,
                   refractory=args.refractory)
    if args.json:
        print_json(r)
        return 0
    lines = [f"{len(r['events'])} collapse(s) in {r['path']} (train loss > {r['threshold']:g}x "
             f"its minimum over the previous {r['lookback']} epochs; evaluations every "
             f"{opt(r['eval_resolution'], 'g')} epochs, every epoch in "
             f"{len(r['windows']['trigger'])} collapse window(s))",
             f"{'epoch':>8} {'loss ratio':>11} {'rise (ep)':>9} {'test before':>11} "
             f"{'test after':>10} {'Fourier before':>14} {'after':>6}"]
    for e in r["events"]:
        lines.append(f"{e['epoch']:>8} {e['loss_ratio']:>11.3g} {e['duration']:>9.1f} "
                     f"{pct(e['test_acc_before']):>11} {pct(e['test_acc_after']):>10} "
                     f"{opt(e['fourier_before'], '.3f'):>14} {opt(e['fourier_after'], '.3f'):>6}")
    c = r["cycles"]
    if c["period_mean"] is not None:
        lines.append(f"period {c['period_mean']:,.0f} epochs"
                     + (f" ± {c['period_std']:,.0f}" if c["period_std"] is not None else "")
                     + f"; recovery to the test-accuracy trough {c['recovery']}; build "
                     f"{c['build']}; time at the peak {c['peak']}")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from ..analysis.analyze import fit_run

    r = fit_run(str(args.run), model=args.model, slow=args.slow, m_name=args.m,
                segment=args.segment, threshold=args.threshold,
                progress=not args.no_progress)
    if args.json:
        print_json(r)
        return 0
    lam, obs = r["lambda_eff"], r["observed"]
    lines = [f"fits of {r['m']} in {r['path']} (lambda = lr*wd = {lam:g}; shooting segments of "
             f"{r['segment_epochs']:,.0f} epochs; {len(r['events'])} collapse(s))"]
    if r["rates"]:
        lines.append("(a) per collapse: growth of m while it jumps, decay after (per epoch)")
        for x in r["rates"]:
            lines.append(f"  {x['epoch']:>8}  growth {pm(x['growth'], x['growth_stderr'])} "
                         f"(= {opt(x['growth_over_lambda'], '.3g')} lambda)   decay "
                         f"{pm(x['decay'], x['decay_stderr'])} "
                         f"(= {opt(x['decay_over_lambda'], '.3g')} lambda)")
    if "1d" in r:
        law = r["1d"]["between_events"] or r["1d"]["whole"]
        (g0, g1), (e0, e1) = law["params"], law["stderr"]
        lines.append(f"(b) 1-D law d ln m/dt = gamma(m) - lambda, gamma(m) = g0 + g1 ln(m / "
                     f"{law['scales']['m_ref']:.4g}): g0 {pm(g0, e0)}, g1 {pm(g1, e1)}; "
                     f"gamma = lambda at m* = {opt(r['1d']['m_star'], '.4g')} (fitted "
                     f"{'between collapses' if r['1d']['between_events'] else 'on all data'})")
    if "2d" in r:
        for name, f in r["2d"]["fits"].items():
            chosen = " (chosen)" if name == r["2d"]["chosen"] else ""
            ps = ", ".join(f"{n} {pm(v, e)}" for n, v, e in
                           zip(f["names"][:4], f["params"][:4], f["stderr"][:4]))
            lines.append(f"(c) 2-D slow-fast, slow = {name}{chosen}: {ps}; AIC {f['aic']:.1f}")
        sim = r["2d"]["fits"][r["2d"]["chosen"]]["simulated"] or {}
        lines.append(f"{'':4}{'':24}{'observed':>12}{'2-D model':>12}")
        for label, o, s in (("period (epochs)", obs["period"], sim.get("period")),
                            ("duty cycle (m high)", obs["duty"], sim.get("duty")),
                            ("rise of ln m (epochs)", obs["rise_ln_m"], sim.get("rise"))):
            lines.append(f"{'':4}{label:<24}{opt(o, '.4g'):>12}{opt(s, '.4g'):>12}")
        lines.append(f"{'':4}{'collapse, train loss':<24}"
                     f"{opt(obs['collapse_duration'], '.4g'):>12}{'':>12}")
    if "adam_clock" in r:
        c = r["adam_clock"]
        mean_rate = sum(c["rate"]) / len(c["rate"]) if c["rate"] else float("nan")
        lines.append(f"Adam's clock: ln sqrt(v_hat) falls at {mean_rate:.3g}/epoch "
                     f"between collapses (each: {', '.join(f'{x:.3g}' for x in c['rate'])}; "
                     f"(1 - beta2)/2 = {c['rate_expected']:.3g}); sqrt(v_hat) at each collapse "
                     f"onset {', '.join(f'{x:.2g}' for x in c['a_onset'])} (eps = "
                     f"{c['eps']:g}); period predicted from it "
                     f"{', '.join(f'{x:,.0f}' for x in c['period_predicted'])} against observed "
                     f"{', '.join(f'{x:,.0f}' for x in c['period_observed'])}")
    if "aic" in r:
        a = r["aic"]
        lines.append(f"AIC on ln m: 1-D {a['1d']:.1f}, 2-D {a['2d']:.1f}; "
                     + (f"the {a['preferred']} model has the lower AIC (difference "
                        f"{a['delta_1d_minus_2d']:.1f}), but see the warnings" if r["warnings"]
                        else f"the data choose the {a['preferred']} model (difference "
                        f"{a['delta_1d_minus_2d']:.1f})"))
    lines += [f"warning: {w}" for w in r["warnings"]]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ..store.runner import replay_run
    from ..store.reader import open_run

    replay_run(args.run, args.out, epoch_from=args.epoch_from, epoch_to=args.epoch_to,
               every=args.every, force=args.force, force_disk=args.force,
               progress=not args.no_progress)
    with open_run(args.out) as run:
        s = run.summary()
    if args.json:
        print_json(s)
    else:
        sys.stdout.write(f"wrote {args.out}: epochs {int(run.checkpoint_epochs[0])}.."
                         f"{s['epochs_done']} every {args.every} ({s['n_checkpoints']} "
                         "checkpoints)\n")
    return 0


def cmd_hessian(args: argparse.Namespace) -> int:
    from ..analysis.stability import hessian_at

    check_finite("--zipf-s", args.zipf_s)
    check_finite("--coupled-wd", args.coupled_wd)
    if args.k < 1:
        raise ZgdynError(f"--k: must be an integer >= 1, got {args.k}")
    r = hessian_at(str(args.run), epoch=args.epoch, zipf_s=args.zipf_s, k=args.k,
                   device=device_arg(args.device),
                   which=args.which, preconditioned=args.preconditioned, dtype=args.dtype,
                   coupled_wd=args.coupled_wd, method=args.method,
                   progress=not args.no_progress)
    if args.json:
        print_json(r)
        return 0
    kind = "D^-1/2 H D^-1/2 (Adam-preconditioned)" if r.preconditioned else "H"
    lines = [f"{kind} of L_s, s = {r.zipf_s:g}, at epoch {r.epoch} ({r.dtype}; "
             f"{r.n_hvp} HVPs, converged: {r.converged})",
             f"tolerance: {r.tolerance}",
             f"{'#':>3} {'eigenvalue':>12} {'residual':>10} {'overlap θ_M':>12} "
             f"{'max |cos| heavy-pair grads':>27}"
             + (f" {'growth/epoch':>13}" if r.preconditioned else "")]
    for i, lam in enumerate(r.eigenvalues):
        cos = max(abs(c) for c in r.cos_heavy_pair_grads[i])
        row = (f"{i + 1:>3} {fmt(lam):>12} {fmt(r.residuals[i]):>10} "
               f"{r.overlap_theta_m[i]:>12.3f} {cos:>27.3f}")
        if r.preconditioned:
            row += f" {fmt(r.growth_rates[i]):>13}"
        lines.append(row)
    if r.preconditioned:
        lines.append(f"Adam stability threshold 38/lr = {r.adam_threshold:.4g}; "
                     f"decay lr*wd = {r.lr_wd:g}/epoch")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def cmd_saddle(args: argparse.Namespace) -> int:
    from ..analysis.stability import saddle_table

    check_finite("--zipf-s", args.zipf_s)
    r = saddle_table(str(args.run), epoch=args.epoch, exponents=tuple(args.zipf_s),
                     device=device_arg(args.device),
                     dtype=args.dtype, progress=not args.no_progress)
    if args.json:
        print_json(r)
    else:
        sys.stdout.write(format_saddle(r))
    return 0


def cmd_sharpness(args: argparse.Namespace) -> int:
    from ..analysis.sharpness import sharpness_onsets, sharpness_run

    s = sharpness_run(str(args.run), every=args.every, epoch_from=args.epoch_from,
                      epoch_to=args.epoch_to, zipf_s=args.zipf_s,
                      preconditioned=args.preconditioned, windows=not args.no_windows,
                      window_every=args.window_every, tol=args.tol, force=args.force,
                      progress=not args.no_progress)
    onsets = sharpness_onsets(str(args.run))
    if args.json:
        print_json({**s, "onsets": onsets})
    else:
        sys.stdout.write(format_sharpness(s, onsets))
    return 0


def cmd_perturb(args: argparse.Namespace) -> int:
    from ..analysis.perturb import perturb_run

    outs = []
    if args.figure is not None:
        outs = figure_paths(args.figure, args.force)
    r = perturb_run(str(args.run), epoch=args.epoch, zipf_s=tuple(args.zipf_s),
                    eps=tuple(args.eps), epochs=args.epochs, directions=tuple(args.directions),
                    seed=args.seed, dtype=args.dtype, early=args.early,
                    progress=not args.no_progress and not args.json)
    if outs:
        from ..present.suite_plots import plot_perturb
        save_figure(plot_perturb(r), outs)
    if args.json:
        print_json({k: v for k, v in r.to_dict().items() if k != "curves"})
    else:
        sys.stdout.write(format_perturb(r) + (f"wrote {', '.join(map(str, outs))}\n"
                                              if outs else ""))
    return 0


__all__ = ["cmd_analyze", "cmd_plot", "cmd_events", "cmd_fit", "cmd_replay", "cmd_hessian",
           "cmd_saddle", "cmd_sharpness", "cmd_perturb"]
