"""The figures of many runs: accuracy curves over seeds, the perturbation experiment, the
mechanism table's period laws, a sweep's phase diagram and the leaderboard's curves. Like `plots`, it returns
`matplotlib.figure.Figure`s and never touches pyplot's global state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

if TYPE_CHECKING:
    from ..analysis.perturb import PerturbResult


def plot_accuracy_curves(curves: list[dict[str, Any]], *, xlabel: str = "epoch",
                         title: str = "") -> Figure:
    """Test accuracy of several runs on one axis. Each curve: {"label", "epoch", "test_acc",
    optional "marks" (epochs to cross, e.g. collapses), optional "switch" (a dotted line)}."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    for k, c in enumerate(curves):
        color = f"C{k % 10}"
        ax.plot(c["epoch"], c["test_acc"], color=color, lw=1, label=c["label"])
        marks = [m for m in c.get("marks", []) if c["epoch"][0] <= m <= c["epoch"][-1]]
        if marks:
            ax.plot(marks, np.interp(marks, c["epoch"], c["test_acc"]), "x", color=color,
                    ms=8, mew=2)
        if c.get("switch") is not None:
            ax.axvline(c["switch"], color=color, ls=":", lw=1)
    ax.axhline(0.95, color="0.6", lw=0.8, ls="--")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or "test accuracy (crosses: collapses; dashed: 95% and 50%)")
    return fig


def plot_perturb(result: PerturbResult, *, title: str = "") -> Figure:
    """The perturbation experiment: ln of the distance δ(t) to the unperturbed copy, one
    panel per Zipf exponent, one color per direction and one line style per ε, with the
    Hessian's predicted slope from the start drawn dashed."""
    s_values = [p.zipf_s for p in result.predictions]
    fig = Figure(figsize=(4.5 * len(s_values), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(s_values), sharey=True))
    styles = ["-", "--", "-.", ":"]
    colors = {d: f"C{k}" for k, d in enumerate(result.directions)}
    for ax, pred in zip(axes, result.predictions):
        s = pred.zipf_s
        for row, curve in zip(result.rows, result.curves):
            if row.zipf_s != s:
                continue
            k = list(result.eps).index(row.eps)
            ax.semilogy(np.arange(len(curve)), curve, color=colors[row.direction],
                        ls=styles[k % len(styles)], lw=1.2,
                        label=f"{row.direction}, ε = {row.eps:g}")
            if row.direction == "hessian" and pred.hessian_rate is not None:
                t = np.arange(0, min(len(curve), 1 + max(3, int(5 / max(
                    abs(pred.hessian_rate), 1e-9)))))
                ax.semilogy(t, curve[0] * np.exp(pred.hessian_rate * t), color="k",
                            ls=styles[k % len(styles)], lw=0.8, alpha=0.6)
        ax.set_title(f"s = {s:g}: predicted {pred.hessian_rate:.3g}/epoch (black)"
                     if pred.hessian_rate is not None else f"s = {s:g}", fontsize=9)
        ax.set_xlabel("epochs after the perturbation")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("‖θ_perturbed − θ_unperturbed‖")
    axes[-1].legend(fontsize=7, loc="best")
    fig.suptitle(title or "perturbations from the grokked point under Zipf weighting")
    return fig


LAW_TITLES = {"saddle": "saddle: baseline period × λ_base / λ",
              "clock": "Adam's clock, measured onset:\nln(√v̂ after / √v̂ onset) / ((1 − β2)/2)",
              "clock_eps": "Adam's clock, onset at ε:\nln(√v̂ after / ε) / ((1 − β2)/2)"}


def plot_period_laws(laws: dict[str, list[tuple[float, float, str]]], *,
                     title: str = "") -> Figure:
    """Measured period (or interval) against each law's prediction, one panel per law,
    log-log with the line y = x; points coloured by control. laws: `mechanism.
    period_predictions`, {law: [(measured, predicted, control)]}."""
    names = [k for k in LAW_TITLES if k in laws]
    fig = Figure(figsize=(4.2 * len(names), 4.4), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names)))
    controls = sorted({lab for pts in laws.values() for _, _, lab in pts})
    colour = {c: f"C{i % 10}" for i, c in enumerate(controls)}
    marker = {c: "osD^v<>"[i // 10 % 7] for i, c in enumerate(controls)}
    for ax, name in zip(axes, names):
        pts = [(m, p, lab) for m, p, lab in laws[name] if p is not None and p > 0 and m > 0]
        for lab in controls:
            mine = [(m, p) for m, p, c in pts if c == lab]
            if mine:
                ax.scatter([p for _, p in mine], [m for m, _ in mine], s=22,
                           color=colour[lab], marker=marker[lab], label=lab, alpha=0.85)
        if pts:
            lo = min(min(m, p) for m, p, _ in pts) / 1.5
            hi = max(max(m, p) for m, p, _ in pts) * 1.5
            ax.plot([lo, hi], [lo, hi], color="0.3", lw=1, ls="--", label="y = x")
            ax.set_xlim(lo, hi)
            ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):  # decades only: minor labels collide on a log axis
            axis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("predicted (epochs)")
        ax.set_ylabel("measured (epochs)")
        ax.set_title(LAW_TITLES[name], fontsize=9)
    handles, labels = axes[-1].get_legend_handles_labels()
    for ax in axes[:-1]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False)
    if title:
        fig.suptitle(title)
    return fig


PHASE_LABELS = {"collapses_per_100k": "collapses per 100k epochs",
                "frac_above_95": "time above 95% test accuracy"}


def _tick(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else "" if v is None else str(v)


def plot_phase_diagram(phase: dict[str, Any], *, title: str = "") -> Figure:
    """One heat map per metric of a sweep's phase grid (`zgdyn.batch.sweep.phase_grid`): the
    metric's mean at each (x, y) point, written in its cell; grey where no run has it."""
    from matplotlib import colormaps

    metrics = [k for k in phase if k not in ("x", "y", "xs", "ys", "n")]
    xs, ys = phase["xs"], phase["ys"]
    fig = Figure(figsize=(1.2 + 4.2 * len(metrics), 1.4 + 0.55 * max(len(ys), 3)),
                 layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, m in zip(axes, metrics):
        z = np.array(phase[m], dtype=float)  # (len(ys), len(xs)); None -> NaN
        pct = m.startswith("frac")
        cmap = colormaps["viridis" if pct else "magma"].with_extremes(bad="0.55")
        top = 1.0 if pct or not np.isfinite(z).any() else max(float(np.nanmax(z)), 1e-9)
        im = ax.imshow(np.ma.masked_invalid(z), origin="lower", aspect="auto", cmap=cmap,
                       vmin=0, vmax=top)
        for i in range(len(ys)):
            for j in range(len(xs)):
                v = z[i, j]
                text = "–" if not np.isfinite(v) else f"{100 * v:.0f}%" if pct else f"{v:.2g}"
                bright = np.isfinite(v) and im.norm(v) > 0.6
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="black" if bright else "white")
        ax.set_xticks(range(len(xs)), [_tick(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_tick(v) for v in ys])
        ax.set_xlabel(phase["x"])
        ax.set_ylabel(phase["y"] or "")
        ax.set_title(PHASE_LABELS.get(m, m), fontsize=10)
        fig.colorbar(im, ax=ax, shrink=0.9)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def plot_leaderboard(curves: dict[str, dict[str, Any]], s: float, *,
                     title: str = "") -> Figure:
    """Phase-2 test accuracy after the switch to Zipf s, one curve per method (the mean over
    its seeds), the seeds' range shaded; `curves` as `batch.leaderboard.phase2_curves`."""
    fig = Figure(figsize=(9, 4.8), layout="constrained")
    ax = fig.subplots()
    for k, (name, c) in enumerate(curves.items()):
        color = f"C{k % 10}"
        n = int(c["n"])
        ax.plot(c["epoch"], c["mean"], color=color, lw=1.2,
                label=f"{name} ({n} seed{'s' if n != 1 else ''})")
        if n > 1:
            ax.fill_between(c["epoch"], c["lo"], c["hi"], color=color, alpha=0.18, lw=0)
    ax.axhline(0.95, color="0.6", lw=0.8, ls="--")
    ax.axhline(0.5, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(f"epochs since the switch to Zipf s = {s:g}")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title or f"phase 2 at s = {s:g}: the mean over seeds, their range shaded")
    return fig


__all__ = ["plot_leaderboard", "plot_accuracy_curves", "plot_perturb", "LAW_TITLES",
           "plot_period_laws", "PHASE_LABELS", "plot_phase_diagram"]
