"""The figures of one run; with `suite_plots`, the only modules that import matplotlib.
Each function takes arrays (or a run's metrics/analysis dicts) and returns a
`matplotlib.figure.Figure`; nothing is shown, and pyplot's global state is never touched.

    >>> with open_run(path) as run:
    ...     fig = plot_dynamics(run.metrics, run.analysis("trajectory"))
    >>> fig.savefig("dynamics.png", dpi=150)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

KINDS = ("dynamics", "memorization", "gamma", "spectrum", "portrait", "events", "rate",
         "sharpness")


def _window(epochs: np.ndarray, lo: float | None, hi: float | None) -> np.ndarray:
    keep = np.ones(len(epochs), bool)
    if lo is not None:
        keep &= epochs >= lo
    if hi is not None:
        keep &= epochs <= hi
    return keep


def _mark_switch(ax: Any, switch_epoch: int | None) -> None:
    if switch_epoch is not None and switch_epoch >= 0:
        ax.axvline(switch_epoch, color="0.4", ls=":", lw=1)


def plot_dynamics(metrics: dict[str, np.ndarray], analysis: dict[str, Any] | None = None, *,
                  switch_epoch: int | None = None, epoch_from: float | None = None,
                  epoch_to: float | None = None, title: str = "") -> Figure:
    """Train/test accuracy and loss (log) against epoch, with Fourier energy overlaid."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax_acc, ax_loss = fig.subplots(2, 1, sharex=True)
    ep = metrics["epoch"]
    k = _window(ep, epoch_from, epoch_to)
    ax_acc.plot(ep[k], metrics["train_acc"][k], color="C0", lw=1, label="train accuracy")
    ax_acc.plot(ep[k], metrics["test_acc"][k], color="C1", lw=1, label="test accuracy")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(-0.02, 1.02)
    ax_loss.semilogy(ep[k], metrics["train_loss"][k], color="C0", lw=1,
                     label="train loss (Zipf-weighted)")
    ax_loss.semilogy(ep[k], metrics["test_loss"][k], color="C1", lw=1, label="test loss")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.set_xlabel("epoch")
    handles = []
    if analysis is not None and "fourier_energy" in analysis:
        ae = analysis["epoch"]
        ka = _window(ae, epoch_from, epoch_to)
        twin = ax_acc.twinx()
        handles = twin.plot(ae[ka], analysis["fourier_energy"][ka], color="C2", lw=1.5,
                            label="Fourier energy (key freqs)")
        twin.set_ylabel("Fourier energy", color="C2")
        twin.set_ylim(-0.02, 1.02)
    for ax in (ax_acc, ax_loss):
        _mark_switch(ax, switch_epoch)
        ax.grid(alpha=0.3)
    h, lab = ax_acc.get_legend_handles_labels()
    ax_acc.legend(h + handles, lab + [x.get_label() for x in handles], loc="lower right",
                  fontsize=8)
    ax_loss.legend(loc="upper right", fontsize=8)
    fig.suptitle(title or "training dynamics")
    return fig


def plot_memorization(metrics: dict[str, np.ndarray], analysis: dict[str, Any], *,
                      switch_epoch: int | None = None, epoch_from: float | None = None,
                      epoch_to: float | None = None, title: str = "") -> Figure:
    """m_w (weight space) and m_f (function space) with Fourier energy and test accuracy."""
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax_m, ax_f = fig.subplots(2, 1, sharex=True)
    ae = analysis["epoch"]
    ka = _window(ae, epoch_from, epoch_to)
    ax_m.plot(ae[ka], analysis["m_w"][ka], color="C3", lw=1.5, label="m_w = ‖θ_M‖ (weights)")
    ax_m.set_ylabel("m_w", color="C3")
    twin = ax_m.twinx()
    twin.plot(ae[ka], analysis["m_f"][ka], color="C4", lw=1.5, label="m_f (non-key logits)")
    twin.set_ylabel("m_f", color="C4")
    h1, l1 = ax_m.get_legend_handles_labels()
    h2, l2 = twin.get_legend_handles_labels()
    ax_m.legend(h1 + h2, l1 + l2, loc="upper left", fontsize=8)
    ep = metrics["epoch"]
    k = _window(ep, epoch_from, epoch_to)
    ax_f.plot(ae[ka], analysis["fourier_energy"][ka], color="C2", lw=1.5, label="Fourier energy")
    ax_f.plot(ep[k], metrics["test_acc"][k], color="C1", lw=1, label="test accuracy")
    ax_f.set_ylim(-0.02, 1.02)
    ax_f.set_xlabel("epoch")
    ax_f.legend(loc="lower left", fontsize=8)
    for ax in (ax_m, ax_f):
        _mark_switch(ax, switch_epoch)
        ax.grid(alpha=0.3)
    fig.suptitle(title or "memorization amplitude")
    return fig


def plot_gamma(analysis: dict[str, Any], lam: float, *, fit: dict[str, Any] | None = None,
               title: str = "") -> Figure:
    """γ(m): binned γ_fd with bootstrap intervals, γ_inst at keyframes, and the decay rate λ."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    mc, g = analysis["gamma_curve/m_center"], analysis["gamma_curve/gamma"]
    ax.fill_between(mc, analysis["gamma_curve/lo"], analysis["gamma_curve/hi"], color="C0",
                    alpha=0.25, label="95% bootstrap interval")
    ax.plot(mc, g, "o-", color="C0", label="γ_fd = d ln m_w/dt + λ, binned")
    if "gamma_inst/gamma" in analysis and len(analysis["gamma_inst/gamma"]):
        ax.plot(analysis["gamma_inst/m_w"], analysis["gamma_inst/gamma"], "x", color="C3",
                label="γ_inst at keyframes")
    law = _law(fit)
    if law is not None:
        grid = np.geomspace(mc.min(), mc.max(), 200)
        ax.plot(grid, law(grid), color="C2", lw=1.5, label="1-D law fitted between collapses")
    ax.axhline(lam, color="k", ls="--", lw=1, label=f"λ = lr·wd = {lam:g}")
    ax.set_xscale("log")
    ax.set_xlabel("memorization amplitude m_w")
    ax.set_ylabel("growth rate γ (per epoch)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "γ(m) against the decay rate")
    return fig


def plot_spectrum(analysis: dict[str, Any], epochs: list[int], *, key: list[int] | None = None,
                  title: str = "") -> Figure:
    """Fraction of logit energy in each diagonal frequency k, at the given checkpoints."""
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    spec = analysis["spectrum"]
    ks = np.arange(1, spec.shape[1] + 1)
    width = 0.8 / max(len(epochs), 1)
    for i, e in enumerate(epochs):
        row = int(np.flatnonzero(analysis["epoch"] == e)[0])
        ax.bar(ks + (i - (len(epochs) - 1) / 2) * width, spec[row], width=width,
               label=f"epoch {e}")
    if key:
        ax.plot(key, np.zeros(len(key)), "k^", ms=6, label="key frequencies")
    ax.set_xlabel("frequency k (diagonal bins (k, k) and (−k, −k))")
    ax.set_ylabel("fraction of logit energy")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title or "diagonal spectrum of the logits")
    return fig


def _law(fit: dict[str, Any] | None) -> Any:
    """γ(m) of the fitted 1-D law, or None."""
    one = (fit or {}).get("1d")
    if not one:
        return None
    law = one["between_events"] or one["whole"]
    g0, g1 = law["params"]
    ref = law["scales"]["m_ref"]
    return lambda m: g0 + g1 * np.log(m / ref)


def plot_portrait(analysis: dict[str, Any], *, event_epochs: list[int] | None = None,
                  fit: dict[str, Any] | None = None, m_name: str = "m_w",
                  title: str = "") -> Figure:
    """Phase portrait: the trajectory in the (Fourier energy, ln m) plane, colored by epoch,
    with the collapses marked and, given a fit with the Fourier energy as slow variable, the
    2-D model's nullclines and vector field."""
    from ..analysis.oscillator import fhn_rhs

    fig = Figure(figsize=(7.5, 5.5), layout="constrained")
    ax = fig.subplots()
    e, fe, lm = analysis["epoch"], analysis["fourier_energy"], np.log(analysis[m_name])
    ax.plot(fe, lm, color="0.75", lw=0.8, zorder=1)
    sc = ax.scatter(fe, lm, c=e, cmap="viridis", s=6, zorder=2)
    fig.colorbar(sc, ax=ax, label="epoch")
    for k, ev in enumerate(event_epochs or []):
        i = min(int(np.searchsorted(e, ev)), len(e) - 1)  # the first record at or after it
        ax.plot(fe[i], lm[i], "rx", ms=9, mew=2, zorder=4,
                label="collapse (first record after)" if k == 0 else None)
    two = ((fit or {}).get("2d") or {}).get("fits", {}).get("fourier")
    if two is not None:
        tau, eps, a, b, x0, xs, y0, ys = two["params"]
        sc_ = two["scales"]
        to_lm = lambda v: sc_["fast_mean"] + sc_["fast_std"] * (x0 + xs * v)
        to_f = lambda w: sc_["slow_mean"] + sc_["slow_std"] * (y0 + ys * w)
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        v = np.linspace(-2.5, 2.5, 400)
        ax.plot(to_f(v - v**3 / 3), to_lm(v), color="C3", lw=1.5,
                label="fast nullcline (dm/dt = 0)")
        ax.plot(to_f((v + a) / b), to_lm(v), color="C1", lw=1.5,
                label="slow nullcline (dF/dt = 0)")
        gf, gl = np.meshgrid(np.linspace(*xlim, 21), np.linspace(*ylim, 21))
        vv = ((gl - sc_["fast_mean"]) / sc_["fast_std"] - x0) / xs
        ww = ((gf - sc_["slow_mean"]) / sc_["slow_std"] - y0) / ys
        dv, dw = fhn_rhs(vv, ww, tau, eps, a, b)
        u, w_ = sc_["slow_std"] * ys * dw, sc_["fast_std"] * xs * dv
        norm = np.hypot(u / np.ptp(xlim), w_ / np.ptp(ylim)) + 1e-300
        ax.quiver(gf, gl, u / norm, w_ / norm, color="0.55", alpha=0.6, angles="xy",
                  scale=30, width=0.002, zorder=0, label="fitted 2-D model's flow")
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
    ax.set_xlabel("Fourier energy F (key frequencies)")
    ax.set_ylabel(f"ln {m_name}  (memorization amplitude, log)")
    ax.grid(alpha=0.3)
    if event_epochs or two is not None:
        ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "phase portrait")
    return fig


def plot_rate(analysis: dict[str, Any], lam: float, *, dense: np.ndarray | None = None,
              fit: dict[str, Any] | None = None, m_name: str = "m_w",
              title: str = "") -> Figure:
    """(m, dm/dt): the growth of the memorization amplitude against its size, between
    checkpoints (colored by epoch) and epoch by epoch inside collapse windows, with the
    fitted 1-D law (γ(m) − λ)·m."""
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    e, m = analysis["epoch"], analysis[m_name]
    regular = np.ones(len(e), bool) if dense is None else ~dense
    er, mr = e[regular], m[regular]
    rate = np.gradient(mr, er) if len(er) > 2 else None
    if rate is not None:
        sc = ax.scatter(mr, rate, c=er, cmap="viridis", s=6, zorder=2)
        fig.colorbar(sc, ax=ax, label="epoch")
    if dense is not None and dense.any():
        ed, md = e[dense], m[dense]
        runs = np.split(np.arange(len(ed)), np.flatnonzero(np.diff(ed) > 1) + 1)
        for k, idx in enumerate(runs):
            if len(idx) > 2:
                ax.plot(md[idx], np.gradient(md[idx], ed[idx]), color="C3", lw=0.8,
                        alpha=0.8, label="collapse windows, every epoch" if k == 0 else None)
    law = _law(fit)
    if law is not None:
        grid = np.linspace(mr.min(), mr.max(), 200)
        ax.plot(grid, (law(grid) - lam) * grid, color="k", lw=1.5,
                label="fitted 1-D law (γ(m) − λ)·m")
    ax.axhline(0, color="0.3", lw=0.8)
    typical = 1e-3 if rate is None else float(np.nanmedian(np.abs(rate)))
    ax.set_yscale("symlog", linthresh=max(1e-6, typical))
    ax.set_xlabel(f"memorization amplitude {m_name}")
    ax.set_ylabel(f"d{m_name}/dt (per epoch, symlog)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    ax.set_title(title or "growth of m against m")
    return fig


def plot_events(metrics: dict[str, np.ndarray], events: list[dict[str, Any]], *,
                title: str = "") -> Figure:
    """Train loss (log) and test accuracy with the detected collapses marked."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax_l, ax_a = fig.subplots(2, 1, sharex=True)
    ep = metrics["epoch"]
    ax_l.semilogy(ep, metrics["train_loss"], color="C0", lw=1, label="train loss (weighted)")
    ax_a.plot(ep, metrics["test_acc"], color="C1", lw=1, label="test accuracy")
    for k, ev in enumerate(events):
        for ax in (ax_l, ax_a):
            ax.axvline(ev["epoch"], color="C3", lw=1, ls="--",
                       label="collapse" if k == 0 and ax is ax_l else None)
        ax_l.annotate(f"×{ev['loss_ratio']:.2g}", (ev["epoch"], ev["peak_loss"]), fontsize=8,
                      xytext=(4, -10), textcoords="offset points")
    ax_l.set_ylabel("cross-entropy")
    ax_a.set_ylabel("accuracy")
    ax_a.set_xlabel("epoch")
    ax_a.set_ylim(-0.02, 1.02)
    for ax in (ax_l, ax_a):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title or f"{len(events)} collapse events")
    return fig


def plot_sharpness(metrics: dict[str, np.ndarray], sharp: dict[str, np.ndarray],
                   limits: dict[str, float], *, events: list[int] | None = None,
                   epoch_from: float | None = None, epoch_to: float | None = None,
                   title: str = "") -> Figure:
    """The edge-of-stability figure: train loss and test accuracy on top; λ_max(P⁻¹H) and
    λ_grad(P⁻¹H) against 38/lr and 2/lr; −λ_min(P⁻¹H) against 2·wd (and wd), so that
    λ_min below −2·wd is a point above the line (log scales); collapses marked. Without
    preconditioned columns, the same of H (2/lr the only threshold).

    sharp: the sorted ``analysis/sharpness`` records (epoch (m,), lambda_max, ...,
    optionally pre_*); limits: `sharpness.thresholds`; events: collapse onsets.
    """
    pre = "pre_lambda_max" in sharp
    c = "pre_" if pre else ""
    op = "P⁻¹H" if pre else "H"
    fig = Figure(figsize=(10, 8.5), layout="constrained")
    ax_l, ax_top, ax_min = fig.subplots(3, 1, sharex=True, height_ratios=(1, 1.2, 1))
    ep = metrics["epoch"]
    k = _window(ep, epoch_from, epoch_to)
    ax_l.semilogy(ep[k], metrics["train_loss"][k], color="C0", lw=1,
                  label="train loss (Zipf-weighted)")
    ax_l.set_ylabel("cross-entropy")
    acc = ax_l.twinx()
    acc.plot(ep[k], metrics["test_acc"][k], color="C1", lw=1, label="test accuracy")
    acc.set_ylabel("test accuracy", color="C1")
    acc.set_ylim(-0.02, 1.02)
    se = sharp["epoch"]
    ks = _window(se, epoch_from, epoch_to)
    dots = dict(ms=2.5, lw=0.8)
    ax_top.semilogy(se[ks], sharp[f"{c}lambda_max"][ks], ".-", color="C3",
                    label=f"λ_max({op})", **dots)
    grad = sharp[f"{c}lambda_grad"][ks]
    along = "the step P⁻¹g" if pre else "the gradient"
    ax_top.semilogy(se[ks], np.where(grad > 0, grad, np.nan), ".-", color="C4",
                    label=f"λ_grad({op}): curvature along {along}", **dots)
    if pre:
        ax_top.axhline(limits["adam_edge"], color="C3", ls="--", lw=1,
                       label=f"38/lr = {limits['adam_edge']:.4g} (Adam's edge of stability)")
    ax_top.axhline(limits["two_over_lr"], color="C4", ls="--", lw=1,
                   label=f"2/lr = {limits['two_over_lr']:.4g}")
    ax_top.set_ylabel(f"top curvature of {op}")
    neg = -sharp[f"{c}lambda_min"][ks]
    ax_min.semilogy(se[ks], np.where(neg > 0, neg, np.nan), ".-", color="C2",
                    label=f"−λ_min({op}) (the most negative curvature)", **dots)
    if pre:
        ax_min.axhline(-limits["minus_two_wd"], color="C2", ls="--", lw=1,
                       label=f"2·wd = {-limits['minus_two_wd']:g}")
        ax_min.axhline(-limits["minus_wd"], color="C2", ls=":", lw=1,
                       label=f"wd = {-limits['minus_wd']:g} (the linearized AdamW step "
                       "grows along λ < −wd)")
    ax_min.set_ylabel(f"−λ_min({op})")
    ax_min.set_xlabel("epoch")
    lo_e = epoch_from if epoch_from is not None else -np.inf
    hi_e = epoch_to if epoch_to is not None else np.inf
    for j, ev in enumerate(e for e in (events or []) if lo_e <= e <= hi_e):
        for ax in (ax_l, ax_top, ax_min):
            ax.axvline(ev, color="k", lw=0.8, ls="-.", alpha=0.6,
                       label="collapse onset" if j == 0 and ax is ax_l else None)
    for ax in (ax_l, ax_top, ax_min):
        ax.grid(alpha=0.3)
    h1, l1 = ax_l.get_legend_handles_labels()
    h2, l2 = acc.get_legend_handles_labels()
    ax_l.legend(h1 + h2, l1 + l2, fontsize=8, loc="lower left")
    ax_top.legend(fontsize=8, loc="upper left")
    ax_min.legend(fontsize=8, loc="upper left")
    fig.suptitle(title or f"curvature of the Zipf-weighted loss along the run ({op})")
    return fig


def save(fig: Figure, path: str, *, dpi: int = 150) -> None:
    """Save as the path's format (png, pdf, svg)."""
    fig.savefig(path, dpi=dpi)


def run_figure(path: str, kind: str, *, epoch_from: float | None = None,
               epoch_to: float | None = None, epochs: list[int] | None = None) -> Figure:
    """The figure of `kind` for a run file (analysis-based kinds need `zgdyn analyze` first)."""
    from ..core.config import ZgdynError
    from ..store.reader import open_run

    if kind not in KINDS:
        raise ZgdynError(f"kind: must be {' | '.join(KINDS)}, got {kind!r}")
    for name, e in (("from", epoch_from), ("to", epoch_to)):
        if e is not None and not (math.isfinite(e) and e >= 0):
            raise ZgdynError(f"--{name}: must be an epoch >= 0, got {e}")
    if epoch_from is not None and epoch_to is not None and epoch_from >= epoch_to:
        raise ZgdynError(f"--from/--to: need from < to, got {epoch_from:g}, {epoch_to:g}")
    from ..analysis.analyze import sorted_trajectory

    with open_run(path) as run:
        metrics, traj = run.dense_metrics(), sorted_trajectory(run)
        switch = run.attrs["switch_epoch"]
        cfg = run.config
        fit = run.analysis("fit")
    fit = None if fit is None else fit["attrs"]["summary"]
    analysis, dense = (None, None) if traj is None else (traj[0], ~traj[1])
    title = (f"{Path(path).name}: p = {cfg.data.p}, {cfg.data.weighting} s = {cfg.data.zipf_s:g}"
             + (f" → {cfg.schedule.switch_s:g} at epoch {switch}" if switch >= 0 else ""))
    if kind == "dynamics":
        return plot_dynamics(metrics, analysis, switch_epoch=switch, epoch_from=epoch_from,
                             epoch_to=epoch_to, title=title)
    if kind == "events":
        from ..analysis.analyze import run_events
        return plot_events(metrics, run_events(path)["events"], title=title)
    if kind == "sharpness":
        from ..analysis.analyze import run_events
        from ..analysis.sharpness import sorted_sharpness, thresholds
        with open_run(path) as run:
            sharp = sorted_sharpness(run)
        if sharp is None:
            raise ZgdynError(f"{path}: has no sharpness yet; run `zgdyn sharpness {path} "
                             "--preconditioned` first")
        events = run_events(path, threshold=cfg.record.collapse_threshold)["events"]
        return plot_sharpness(metrics, sharp, thresholds(cfg),
                              events=[e["epoch"] for e in events], epoch_from=epoch_from,
                              epoch_to=epoch_to, title=title)
    if analysis is None:
        raise ZgdynError(f"{path}: has no analysis yet; run `zgdyn analyze {path}` first")
    if kind == "memorization":
        return plot_memorization(metrics, analysis, switch_epoch=switch, epoch_from=epoch_from,
                                 epoch_to=epoch_to, title=title)
    if kind == "gamma":
        return plot_gamma(analysis, cfg.optim.lr * cfg.optim.weight_decay, fit=fit,
                          title=title)
    m_name = fit["m"] if fit else "m_w"
    if kind == "portrait":
        from ..analysis.analyze import run_events
        return plot_portrait(analysis, event_epochs=[e["epoch"] for e in
                                                     run_events(path)["events"]],
                             fit=fit, m_name=m_name, title=title)
    if kind == "rate":
        return plot_rate(analysis, cfg.optim.lr * cfg.optim.weight_decay, dense=dense,
                         fit=fit, m_name=m_name, title=title)
    ae = analysis["epoch"]
    if not epochs:
        fe = analysis["fourier_energy"]
        epochs = sorted({int(ae[0]), int(ae[int(np.argmax(fe))]), int(ae[-1])})
    missing = [e for e in epochs if e not in set(ae.tolist())]
    if missing:
        raise ZgdynError(f"epochs: {missing} have no analyzed checkpoint")
    return plot_spectrum(analysis, epochs, key=analysis["attrs"]["settings"]["key"], title=title)


__all__ = ["KINDS", "plot_dynamics", "plot_memorization", "plot_gamma", "plot_spectrum",
           "plot_portrait", "plot_rate", "plot_events", "plot_sharpness", "save", "run_figure"]
