"""`zgdyn analyze`: Fourier measures, both memorization amplitudes and γ(m) over a whole run.

Reads the run's checkpoints and collapse-window records, computes
`fourier.checkpoint_measures` for each, then γ_fd along the trajectory of checkpoints
(the dense window records are left out of it), γ_inst at every keyframe, and the binned
γ(m) curve; writes all of it to the run file's ``analysis/trajectory`` group. Resumable:
records already analyzed with the same settings are skipped.

    >>> summary = analyze_run("data/runs/s1.5.h5")                 # key freqs fixed
    >>> summary = analyze_run(path, key_freqs="auto", top_k=5)     # afresh per checkpoint
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..core.config import LOOKBACK, REFRACTORY, ZgdynError
from ..core.results import Result
from ..core.runtime import progress_bar
from ..core.step import FusedStep
from ..store.reader import Run
from ..store.writer import AnalysisWriter
from .fourier import checkpoint_measures, key_freqs_of, memorization_projector
from .growth import adamw_direction, gamma_curve, gamma_fd, gamma_inst
from .hessian import flatten_params

GROUP = "trajectory"
KEY_MODES = ("fixed", "auto")
NEAR_SOLUTION = 0.95  # "near the Fourier solution": Fourier energy >= this x its peak


def reference_epoch(run: Run) -> int:
    """The checkpoint with the best test accuracy (the latest such), for fixing key freqs."""
    ev, acc = run.metrics["epoch"], run.metrics["test_acc"]
    ck = run.checkpoint_epochs
    at = {int(e): a for e, a in zip(ev, acc)}
    scored = [(at.get(int(e), -1.0), int(e)) for e in ck]
    return max(scored)[1]


def _phase_weights(run: Run) -> Callable[[int], torch.Tensor]:
    """epoch -> the weights of the loss that the step after `epoch` uses (read once)."""
    switch = run.attrs["switch_epoch"]
    weights = [torch.from_numpy(run.weights(i)) for i in range(2 if switch >= 0 else 1)]
    return lambda epoch: weights[1 if 0 <= switch <= epoch else 0]


def _gamma_inst_at_keyframes(run: Run, key: list[int] | None, top_k: int | None,
                             epochs: list[int]) -> tuple[list[int], list[float], list[float]]:
    """(epochs, γ_inst, m_w) at each keyframe."""
    cfg = run.config
    p = cfg.data.p
    split = run.split
    a, b, _ = split.tokens(split.train_idx)
    step = FusedStep(p, cfg.model.hidden, torch.as_tensor(a), torch.as_tensor(b),
                     optim=cfg.optim, dtype=cfg.model.dtype)
    weights_at = _phase_weights(run)
    out_e, out_g, out_m = [], [], []
    for e in epochs:
        snap = run.snapshot_at(e)
        k = key if key is not None else key_freqs_of(snap.params, p, top_k=top_k)
        project = memorization_projector(p, k)
        step.load_params(snap.params)
        step.set_weights(weights_at(e))
        step.loss_and_grad()
        u = adamw_direction(step.grad, flatten_params(snap.exp_avg),
                            flatten_params(snap.exp_avg_sq), snap.step, cfg.optim)
        u_m = flatten_params(project(step.views(u)))
        theta_m = flatten_params(project(step.params))
        out_e.append(e)
        out_g.append(gamma_inst(u_m, theta_m, cfg.optim.lr))
        out_m.append(float(theta_m.double().norm()))
    return out_e, out_g, out_m


def start_group(writer: AnalysisWriter, settings: dict[str, Any], force: bool) -> set[int]:
    """The epochs already recorded in the writer's group; a group computed with other
    settings is refused, or with `force` started afresh."""
    if writer.settings != settings:
        if writer.settings is not None and not force:
            raise ZgdynError(f"{writer.path}: {writer.name} was computed with other settings "
                             f"({writer.settings}); pass --force to recompute it")
        writer.reset(settings)
    return set(int(e) for e in writer.done_epochs())


def record_each(writer: AnalysisWriter, epochs: list[int],
                measure: Callable[[int], dict[str, Any]], *, total: int, unit: str, desc: str,
                progress: bool, commit_every: int) -> None:
    """Append measure(e) for each of `epochs` to the writer's group, committing every
    `commit_every` records, with a tqdm bar on stderr (out of `total`) if `progress`."""
    bar = progress_bar(progress, total=total, initial=total - len(epochs), unit=unit,
                       desc=desc)
    try:
        for i, e in enumerate(epochs):
            writer.append(measure(e))
            if (i + 1) % commit_every == 0:
                writer.commit()
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


@dataclass(frozen=True)
class FourierEnergyPath(Result):
    """The Fourier energy at the first checkpoint, its peak (and where), and at the last."""

    start: float
    peak: float
    peak_epoch: int
    end: float


@dataclass(frozen=True)
class Extent(Result):
    """A quantity's smallest and largest value over the checkpoints, and its last."""

    min: float
    max: float
    end: float


@dataclass(frozen=True)
class GammaCurveSummary(Result):
    """The binned γ(m) curve: m*, where γ crosses λ (None if it does not), and its bins."""

    m_star: float | None
    bins: int


@dataclass(frozen=True)
class GammaNearSolution(Result):
    """The finite-difference γ averaged over the checkpoints near the best Fourier
    solution, how many, and whether it exceeds λ there."""

    gamma_fd_mean: float | None
    n: int
    above_lambda: bool | None


@dataclass(frozen=True)
class GammaInstSummary(Result):
    """γ_inst at the keyframes: how many, the median, and the fraction above λ."""

    n: int
    median: float | None
    frac_above_lambda: float | None


@dataclass(frozen=True)
class AnalysisSummary(Result):
    """What `analyze_run` returns (`zgdyn analyze --json`), also stored with the analysis:
    the key frequencies used, how many checkpoints, and the trajectory in brief."""

    path: str
    key_freqs: str
    ref_epoch: int | None
    top_k: int | None
    key: tuple[int, ...] | None
    n_key: int | None
    n_key_auto_final: int
    n_checkpoints: int
    newly_analyzed: int
    n_window_records: int
    fourier_energy: FourierEnergyPath
    diagonal_fraction_end: float
    m_w: Extent
    m_f: Extent
    lambda_eff: float
    gamma_curve: GammaCurveSummary
    gamma_near_solution: GammaNearSolution
    gamma_inst: GammaInstSummary


def analyze_run(path: str, *, key_freqs: str = "fixed", ref_epoch: int | None = None,
                top_k: int | None = None, force: bool = False, progress: bool = False,
                commit_every: int = 50, desc: str = "analyze") -> AnalysisSummary:
    """Analyze every checkpoint of a run (resumably) and return its summary.

    key_freqs: "fixed" (from `ref_epoch`, default the best-test checkpoint) or "auto"
    (afresh at each checkpoint). top_k: take the top_k diagonal frequencies instead of
    the spectral gap. progress: a tqdm bar named `desc` on stderr.
    """
    if key_freqs not in KEY_MODES:
        raise ZgdynError(f"key_freqs: must be {' | '.join(KEY_MODES)}, got {key_freqs!r}")
    if top_k is not None and top_k < 1:
        raise ZgdynError(f"top_k: must be an integer >= 1, got {top_k}")
    with AnalysisWriter(path, GROUP) as writer:
        return _analyze(writer, writer.reader(), key_freqs, ref_epoch, top_k, force,
                        progress, commit_every, desc)


def _analyze(writer: AnalysisWriter, run: Run, key_freqs: str, ref_epoch: int | None,
             top_k: int | None, force: bool, progress: bool, commit_every: int,
             desc: str = "analyze") -> AnalysisSummary:
    cfg = run.config
    p = cfg.data.p
    if not len(run.checkpoint_epochs):
        raise ZgdynError(f"{run.path}: has no checkpoints to analyze")
    all_epochs = run.param_epochs
    key: list[int] | None = None
    if key_freqs == "fixed":
        if ref_epoch is None:
            ref_epoch = reference_epoch(run)
        key = key_freqs_of(run.params_at(ref_epoch), p, top_k=top_k)
    settings = {"key_freqs": key_freqs, "ref_epoch": ref_epoch, "top_k": top_k, "key": key}
    done = start_group(writer, settings, force)
    todo = [int(e) for e in all_epochs if int(e) not in done]
    train_idx = torch.from_numpy(run.split.train_idx)
    weights_at = _phase_weights(run)

    def measure(e: int) -> dict[str, Any]:
        params = run.params_at(e)
        k = key if key is not None else key_freqs_of(params, p, top_k=top_k)
        row, diag = checkpoint_measures(params, p, k, train_idx, weights_at(e))
        return {"epoch": e, **row, "n_key": len(k), "spectrum": diag.numpy()}

    record_each(writer, todo, measure, total=len(all_epochs), unit="ckpt", desc=desc,
                progress=progress, commit_every=commit_every)
    res = writer.reader().analysis(GROUP)
    regular = np.isin(res["epoch"], run.checkpoint_epochs)  # not only in a window
    res = {k: v[regular] if isinstance(v, np.ndarray) and len(v) == len(regular) else v
           for k, v in res.items()}
    order = np.argsort(res["epoch"])
    epochs = res["epoch"][order]
    lam = cfg.optim.lr * cfg.optim.weight_decay
    g_w = gamma_fd(epochs, res["m_w"][order], lam)
    g_f = gamma_fd(epochs, res["m_f"][order], lam)
    writer.put("gamma_fd/epoch", epochs)
    writer.put("gamma_fd/m_w", g_w)
    writer.put("gamma_fd/m_f", g_f)
    kf_e, kf_g, kf_m = _gamma_inst_at_keyframes(run, key, top_k,
                                                [int(e) for e in run.keyframe_epochs])
    writer.put("gamma_inst/epoch", np.array(kf_e, np.int64))
    writer.put("gamma_inst/gamma", np.array(kf_g))
    writer.put("gamma_inst/m_w", np.array(kf_m))
    curve = gamma_curve(res["m_w"][order], g_w, lam)
    for name in ("m_center", "gamma", "lo", "hi", "count"):
        writer.put(f"gamma_curve/{name}", getattr(curve, name))
    fe = res["fourier_energy"][order]
    near = fe >= NEAR_SOLUTION * fe.max()  # checkpoints near the best Fourier solution
    g_near = float(np.nanmean(g_w[near])) if near.any() else None
    summary = AnalysisSummary.from_dict({
        "path": str(run.path),
        "key_freqs": key_freqs, "ref_epoch": ref_epoch, "top_k": top_k,
        "key": key, "n_key": len(key) if key is not None else None,
        "n_key_auto_final": int(res["n_key_auto"][order][-1]),
        "n_checkpoints": int(len(epochs)), "newly_analyzed": len(todo),
        "n_window_records": int((~regular).sum()),
        "fourier_energy": {"start": float(fe[0]), "peak": float(fe.max()),
                           "peak_epoch": int(epochs[int(fe.argmax())]), "end": float(fe[-1])},
        "diagonal_fraction_end": float(res["diagonal_fraction"][order][-1]),
        "m_w": {"min": float(res["m_w"].min()), "max": float(res["m_w"].max()),
                "end": float(res["m_w"][order][-1])},
        "m_f": {"min": float(res["m_f"].min()), "max": float(res["m_f"].max()),
                "end": float(res["m_f"][order][-1])},
        "lambda_eff": lam,
        "gamma_curve": {"m_star": curve.m_star, "bins": int(len(curve.m_center))},
        "gamma_near_solution": {"gamma_fd_mean": g_near, "n": int(near.sum()),
                                "above_lambda": None if g_near is None else g_near > lam},
        "gamma_inst": {"n": len(kf_g), "median": float(np.median(kf_g)) if kf_g else None,
                       "frac_above_lambda": float(np.mean(np.array(kf_g) > lam)) if kf_g
                       else None},
    })
    writer.put_attrs({"summary": summary.to_dict()})
    return summary


def run_events(path: str, *, threshold: float = 100.0, lookback: int = LOOKBACK,
               refractory: int = REFRACTORY) -> dict[str, Any]:
    """Collapse events and cycle statistics of a run (Fourier energy if it was analyzed)."""
    from .events import check_threshold, cycle_statistics, detect_events
    from ..store.reader import open_run

    check_threshold(threshold)
    if lookback < 1 or refractory < 1:
        raise ZgdynError(f"lookback and refractory: must be integers >= 1, got {lookback}, "
                         f"{refractory}")
    with open_run(path) as run:
        m, a = run.dense_metrics(), run.analysis(GROUP)
        windows = {k: v.tolist() for k, v in run.windows.items()}
        sparse = run.metrics["epoch"]
    fourier = (a["epoch"], a["fourier_energy"]) if a is not None else None
    events = detect_events(m["epoch"], m["train_loss"], threshold=threshold, lookback=lookback,
                           refractory=refractory, test_acc=m["test_acc"], fourier=fourier)
    stats = cycle_statistics(events, m["epoch"], m["test_acc"])
    resolution = float(np.median(np.diff(sparse))) if len(sparse) > 1 else None
    return {"path": str(path), "threshold": threshold, "lookback": lookback,
            "refractory": refractory, "eval_resolution": resolution, "windows": windows,
            "events": [e.to_dict() for e in events], "cycles": stats.to_dict()}


FIT_GROUP = "fit"
SLOW_VARIABLES = {"fourier": "fourier_energy", "adam": "adam_scale"}


def sorted_trajectory(run: Run) -> tuple[dict[str, Any], np.ndarray] | None:
    """`analysis/trajectory` with its per-record datasets sorted by epoch, and a mask of the
    records that are regular checkpoints (the rest are collapse-window records); None if
    the run was not analyzed. The γ datasets keep their own order."""
    a = run.analysis(GROUP)
    if a is None:
        return None
    order = np.argsort(a["epoch"])
    n = len(order)
    a = {k: (v[order] if isinstance(v, np.ndarray) and len(v) == n
             and not k.startswith(("gamma", "attrs")) else v) for k, v in a.items()}
    return a, np.isin(a["epoch"], run.checkpoint_epochs)


def _trajectory(run: Run, m_name: str) -> dict[str, np.ndarray]:
    """The analyzed trajectory, sorted, split into the regular checkpoints and all records."""
    traj = sorted_trajectory(run)
    if traj is None:
        raise ZgdynError(f"{run.path}: not analyzed yet; run zgdyn analyze {run.path} first")
    a, regular = traj
    e, m, fe = a["epoch"], a[m_name], a["fourier_energy"]
    met = run.metrics
    adam = (np.interp(e, met["epoch"], met["adam_scale"]) if "adam_scale" in met
            and len(met["adam_scale"]) else None)
    return {"epoch_all": e, "m_all": m, "epoch": e[regular], "m": m[regular],
            "fourier_energy": fe[regular],
            "adam_scale": None if adam is None else adam[regular]}


MIN_EVENTS_2D = 2  # the oscillator's period needs two collapses


def fit_warnings(fits: dict[str, Any]) -> list[str]:
    """What makes `fit_run`'s result unreliable: fewer collapses than the 2-D model needs,
    and every fitted parameter whose standard error exceeds the estimate itself."""
    out = []
    n = len(fits["events"])
    if "2d" in fits and n < MIN_EVENTS_2D:
        out.append(f"the 2-D model's period and duty cycle need at least {MIN_EVENTS_2D} "
                   f"collapses, this run has {n}: its fit and the AIC comparison say nothing "
                   "about a cycle")
    pieces = []
    if "1d" in fits:
        pieces += [("1-D law", fits["1d"]["between_events"] or fits["1d"]["whole"])]
    if "2d" in fits:
        pieces += [(f"2-D model (slow = {k})", f) for k, f in fits["2d"]["fits"].items()]
    for label, f in pieces:
        for name, value, err in zip(f["names"], f["params"], f["stderr"]):
            if err is not None and abs(err) > abs(value):
                out.append(f"{label}: {name} = {value:.3g} has a standard error {err:.3g} "
                           "larger than itself")
    return out


def _advance(bar: Any, stage: str) -> None:
    if bar is not None:
        bar.update(1)
        bar.set_postfix(done=stage)


def fit_run(path: str, *, model: str = "both", slow: str = "best", m_name: str = "m_w",
            segment: int | None = None, threshold: float = 100.0,
            progress: bool = False) -> dict[str, Any]:
    """Fits (a) per-event rates, (b) the 1-D law and (c) the 2-D slow-fast model to a run's
    analyzed trajectory; the summary is stored in `analysis/fit` and returned. progress: a
    bar over the fits on stderr.

    model: "1d" | "2d" | "both". slow: the 2-D model's slow variable, "fourier" | "adam" |
    "best" (both fitted, the lower AIC kept). segment: shooting segment, in checkpoints
    (default: about 1/16 of the observed period).
    """
    from .oscillator import adam_clock
    from .events import cycle_statistics, detect_events, event_rates, oscillation
    from ..store.reader import open_run

    _check_fit_settings(model, slow, m_name)
    with open_run(path) as run:
        tr = _trajectory(run, m_name)
        dense = run.dense_metrics()
        cfg = run.config
    lam = cfg.optim.lr * cfg.optim.weight_decay
    events = detect_events(dense["epoch"], dense["train_loss"], threshold=threshold,
                           test_acc=dense["test_acc"],
                           fourier=(tr["epoch"], tr["fourier_energy"]))
    # the cycle: from the first collapse on (before it, the run memorizes, then groks once)
    keep = tr["epoch"] >= (events[0].epoch if events else -1)
    if keep.sum() >= 40:
        tr.update({k: tr[k][keep] for k in ("epoch", "m", "fourier_energy", "adam_scale")
                   if tr[k] is not None})
    t, m = tr["epoch"], tr["m"]
    if len(t) < 40:
        raise ZgdynError(f"{path}: {len(t)} analyzed checkpoints; the fits need at least 40")
    cycles = cycle_statistics(events, dense["epoch"], dense["test_acc"])
    step = float(np.median(np.diff(t)))
    period = cycles.period_mean
    if segment is None:
        segment = int(np.clip(round((period or (t[-1] - t[0]) / 2) / 16 / step), 4, 64))
    if segment < 2 or segment >= len(t) // 2:
        raise ZgdynError(f"segment: must be an integer in [2, {len(t) // 2 - 1}] checkpoints, "
                         f"got {segment}")
    lm = np.log(m)
    observed = oscillation(t, lm)
    rise = oscillation(tr["epoch_all"], np.log(tr["m_all"])).rise
    out: dict[str, Any] = {
        "path": str(path), "m": m_name, "lambda_eff": lam, "segment_checkpoints": segment,
        "fitted_from_epoch": int(t[0]),
        "segment_epochs": segment * step,
        "events": [e.epoch for e in events],
        "observed": {"period": period, "period_std": cycles.period_std,
                     "duty": observed.duty, "rise_ln_m": rise,
                     "collapse_duration": (float(np.mean([e.duration for e in events]))
                                           if events else None)},
        "rates": [r.to_dict() for r in event_rates(events, tr["epoch_all"], tr["m_all"],
                                                   lam)],
    }
    if "adam_scale" in dense and len(events) >= 2:
        out["adam_clock"] = adam_clock(events, dense["epoch"], dense["adam_scale"],
                                       cfg.optim.beta2).to_dict()
        out["adam_clock"]["eps"] = cfg.optim.eps
    names = list(SLOW_VARIABLES) if slow == "best" else [slow]
    bar = progress_bar(progress, desc="fit", unit="fit",
                       total=(2 if model != "2d" else 0) + (len(names) if model != "1d" else 0))
    if model in ("1d", "both"):
        out["1d"] = _fit_law(t, m, lam, events, segment, step, bar)
    if model in ("2d", "both"):
        out["2d"] = _fit_slow_fast(path, tr, lm, names, slow, segment, period, bar)
    if bar is not None:
        bar.close()
    if "1d" in out and "2d" in out:
        a1 = out["1d"]["whole"]["aic"]
        a2 = out["2d"]["fits"][out["2d"]["chosen"]]["aic"]
        out["aic"] = {"1d": a1, "2d": a2, "delta_1d_minus_2d": a1 - a2,
                      "preferred": "2d" if a2 < a1 else "1d"}
    out["warnings"] = fit_warnings(out)
    with AnalysisWriter(path, FIT_GROUP) as writer:
        writer.reset({"model": model, "slow": slow, "m": m_name, "segment": segment,
                      "threshold": threshold})
        writer.put_attrs({"summary": out})
    return out


def _check_fit_settings(model: str, slow: str, m_name: str) -> None:
    if model not in ("1d", "2d", "both"):
        raise ZgdynError(f"model: must be 1d | 2d | both, got {model!r}")
    if slow not in (*SLOW_VARIABLES, "best"):
        raise ZgdynError(f"slow: must be fourier | adam | best, got {slow!r}")
    if m_name not in ("m_w", "m_f"):
        raise ZgdynError(f"m: must be m_w | m_f, got {m_name!r}")


def _fit_law(t: np.ndarray, m: np.ndarray, lam: float, events: list[Any], segment: int,
             step: float, bar: Any) -> dict[str, Any]:
    """The 1-D law fitted between events (each collapse and its first response left out)
    and over the whole trajectory, with the fixed point m* of the between-events fit."""
    from .oscillator import fit_1d

    near = np.zeros(len(t), bool)
    for e in events:
        near |= (t >= e.epoch - 2 * step) & (t <= e.epoch + 4 * step)
    between = fit_1d(t, m, lam, segment=segment, mask=~near) if events else None
    _advance(bar, "1-D, between events")
    whole = fit_1d(t, m, lam, segment=segment)
    _advance(bar, "1-D, whole")
    law = between or whole
    g0, g1 = law.params
    m_star = law.scales["m_ref"] * np.exp((lam - g0) / g1) if g1 != 0 else None
    return {"between_events": None if between is None else between.to_dict(),
            "whole": whole.to_dict(), "m_star": None if m_star is None else float(m_star)}


def _fit_slow_fast(path: str, tr: dict[str, Any], lm: np.ndarray, names: list[str],
                   slow: str, segment: int, period: float | None, bar: Any) -> dict[str, Any]:
    """The 2-D slow-fast model with each slow variable of `names`; the lowest AIC chosen."""
    from .oscillator import fit_2d

    fits = {}
    for name in names:
        y = tr[SLOW_VARIABLES[name]]
        if y is not None and name == "adam":  # a sawtooth in the log: fit ln a
            y = np.log(np.maximum(y, 1e-300))
        if y is None:
            if slow != "best":
                raise ZgdynError(f"{path}: has no {SLOW_VARIABLES[name]} metric (written "
                                 "by an earlier zgdyn); use --slow fourier")
            continue
        fits[name] = fit_2d(tr["epoch"], lm, y, segment=segment, slow_name=name,
                            period_hint=period)
        _advance(bar, f"2-D, {name}")
    best = min(fits.values(), key=lambda f: f.aic)
    return {"chosen": best.slow, "fits": {k: f.to_dict() for k, f in fits.items()}}


__all__ = ["AnalysisSummary", "FourierEnergyPath", "Extent", "GammaCurveSummary",
           "GammaNearSolution", "GammaInstSummary", "GROUP", "KEY_MODES", "NEAR_SOLUTION",
           "reference_epoch", "start_group", "record_each", "analyze_run", "run_events",
           "FIT_GROUP", "SLOW_VARIABLES", "sorted_trajectory", "MIN_EVENTS_2D", "fit_warnings",
           "fit_run"]
