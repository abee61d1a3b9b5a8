"""The perturbation experiment: the saddle-point prediction tested directly.

Start from a keyframe of a converged run (parameters and Adam's state), switch the loss to
Zipf exponent s, and train two copies side by side: the unperturbed one, and one moved by
ε·‖θ‖·v along a unit direction v. The distance δ(t) = ‖θ_pert(t) − θ_base(t)‖ grows or
decays. Two rates of it (see `rates`) meet two predictions:

- the early rate (first `early` epochs) meets the Hessian's: along the most negative
  eigenvector of Adam's preconditioned Hessian D^{-1/2} H_s D^{-1/2} at the point
  (eigenvalue μ_min), −lr·μ_min − lr·wd per epoch, with D frozen;
- the late rate (the second half) meets the 1-D law's: γ_inst − λ, the growth rate of the
  memorization amplitude m under L_s at the point (the AdamW direction projected on θ_M),
  against λ = lr·wd.

Directions: ``theta_m`` (the point's own memorization component θ_M, normalized),
``hessian`` (that eigenvector) and ``random`` (a seeded Gaussian direction). Each is unit
norm, so the three start at the same distance. Both copies run in float64 by default, so
rounding does not drown the smallest ε.

    >>> r = perturb_run("data/runs/grok-s0.h5", zipf_s=(1.5,), eps=(1e-4, 1e-3), epochs=300)
    >>> r.rows[0].rate_early, r.predictions[0].hessian_rate
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.config import DETECTOR_OFF, ZgdynError
from ..core.results import Result
from ..core.runtime import progress_bar
from ..core.train import Trainer
from ..store.reader import open_run
from .fourier import key_freqs_of, memorization_projector
from .growth import adamw_direction, gamma_inst
from .hessian import flatten_params, linearized_growth_rates, unflatten

DIRECTIONS = ("theta_m", "hessian", "random")


@dataclass(frozen=True)
class PerturbPrediction(Result):
    """The two predicted rates under L_s at the point: the 1-D law's γ_inst − λ, and (with
    the hessian direction) −lr·μ_min − lr·wd along the most negative preconditioned
    eigenvector; with |θ| and m_w = |θ_M| there."""

    zipf_s: float
    gamma_inst: float
    law_rate: float
    hessian_rate: float | None
    mu_min: float | None
    theta_norm: float
    m_w: float


@dataclass(frozen=True)
class PerturbRow(Result):
    """One (s, direction, ε): the distance curve's two rates (see `rates`), its ends and
    growth factor, and the test accuracy of the perturbed and unperturbed copies at the end."""

    zipf_s: float
    direction: str
    eps: float
    overlap_theta_m: float
    rate_early: float | None
    rate_late: float | None
    start: float
    end: float
    growth_factor: float
    test_acc_end: float
    base_test_acc_end: float


@dataclass(frozen=True)
class PerturbResult(Result):
    """What `perturb_run` returns (`zgdyn perturb --json`): its settings, one prediction per
    s, one row per (s, direction, ε) and each row's distance curve δ(t), t = 0..epochs."""

    KEYS: ClassVar[dict[str, str]] = {"lam": "lambda"}
    OMIT_NONE: ClassVar[tuple[str, ...]] = ("curves",)

    path: str
    epoch: int
    epochs: int
    dtype: str
    zipf_s: tuple[float, ...]
    lam: float
    early: int
    seed: int
    n_key: int
    directions: tuple[str, ...]
    eps: tuple[float, ...]
    predictions: tuple[PerturbPrediction, ...]
    rows: tuple[PerturbRow, ...]
    curves: tuple[tuple[float, ...], ...] | None = None


def rates(dist: np.ndarray, early: int) -> dict[str, float | None]:
    """Growth rates of a distance curve δ(t), t = 0..T, per epoch.

    rate_early = ln(δ(early) / δ(0)) / early: the linear regime, where the Hessian's
    prediction applies; rate_late = the least-squares slope of ln δ over [T/2, T]: what is
    left once the fast transients are over, where the 1-D law's γ − λ applies.
    """
    t = np.arange(len(dist), dtype=np.float64)
    y = np.log(np.maximum(np.asarray(dist, dtype=np.float64), 1e-300))
    early = min(early, len(dist) - 1)
    half = slice(len(dist) // 2, len(dist))
    late = float(np.polyfit(t[half], y[half], 1)[0]) if len(t[half]) >= 2 else None
    return {"rate_early": float((y[early] - y[0]) / early) if early >= 1 else None,
            "rate_late": late}


def check_settings(zipf_s: tuple[float, ...], eps: tuple[float, ...], epochs: int,
                   directions: tuple[str, ...], early: int, dtype: str, seed: int = 0) -> None:
    """Raise a one-line ZgdynError for settings `perturb_run` cannot use."""
    if not (isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**63):
        raise ZgdynError(f"seed: must be an integer in [0, 2^63), got {seed!r}")
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad or not directions:
        raise ZgdynError(f"directions: must be among {', '.join(DIRECTIONS)}, got "
                         f"{', '.join(map(str, directions)) or 'none'}")
    if not eps or any(not (isinstance(e, (int, float)) and 0 < e < 1) for e in eps):
        raise ZgdynError(f"eps: must be numbers in (0, 1) (relative to |theta|), got {list(eps)}")
    if not zipf_s or any(not isinstance(s, (int, float)) or s < 0 for s in zipf_s):
        raise ZgdynError(f"zipf_s: must be numbers >= 0, got {list(zipf_s)}")
    if not isinstance(early, int) or early < 1:
        raise ZgdynError(f"early: must be an integer >= 1, got {early}")
    if not isinstance(epochs, int) or epochs < max(early, 4):
        raise ZgdynError(f"epochs: must be an integer >= {max(early, 4)}, got {epochs}")
    if dtype not in ("float32", "float64"):
        raise ZgdynError(f"dtype: must be float32 | float64, got {dtype!r}")


def perturb_run(path: str | Path, *, epoch: int | None = None,
                zipf_s: tuple[float, ...] = (1.5,),
                eps: tuple[float, ...] = (1e-4, 1e-3, 1e-2), epochs: int = 300,
                directions: tuple[str, ...] = DIRECTIONS, seed: int = 0,
                dtype: str = "float64", early: int = 5, lanczos_steps: int = 150,
                store: bool = True, progress: bool = False) -> PerturbResult:
    """Run the perturbation experiment at a keyframe (default: the last) of `path`.

    Returns a `PerturbResult`: one row per (s, direction, ε) with rate_early and
    rate_late, δ(t) per row (len epochs + 1), one prediction per s; with `store`, the
    summary and curves also go to the run's ``analysis/perturb/epoch<E>`` group.
    progress: a tqdm bar on stderr, over the exponents' epochs.
    """
    from .stability import load_point

    check_settings(zipf_s, eps, epochs, directions, early, dtype, seed)
    with open_run(path) as run:
        epoch = run.last_keyframe if epoch is None else epoch
        snap = run.snapshot_at(epoch)
        cfg = run.config
        analysis = run.analysis("trajectory")
    key = (analysis["attrs"]["settings"]["key"] if analysis is not None
           and analysis["attrs"]["settings"].get("key") else None)
    p = cfg.data.p
    if key is None:
        key = key_freqs_of(snap.params, p)
    o = cfg.optim
    lam = o.lr * o.weight_decay
    snap = dataclasses.replace(snap, phase=0, switch_epoch=-1)
    point = load_point(str(path), epoch, dtype=dtype) if "hessian" in directions else None
    project = memorization_projector(p, key)

    rows: list[dict[str, Any]] = []
    curves: list[np.ndarray] = []
    predictions: list[dict[str, Any]] = []
    bar = progress_bar(progress, total=len(zipf_s) * epochs, desc="perturb", unit="epoch")
    for s in zipf_s:
        if bar is not None:
            bar.set_postfix(s=f"{s:g}", stage="directions")
        run_cfg = cfg.replace(zipf_s=float(s), switch_s=None, switch_at_test_acc=None,
                              switch_at_epoch=None, phase2_epochs=None, **DETECTOR_OFF,
                              epochs=epoch + epochs, dtype=dtype)
        base = Trainer(run_cfg, snap)
        pred, theta_m = _law_prediction(base, project, float(s), lam)
        vecs, overlap = _unit_directions(base, directions, theta_m, project, point, pred,
                                         seed=seed, lanczos_steps=lanczos_steps)
        predictions.append(pred)
        if bar is not None:
            bar.set_postfix(s=f"{s:g}", stage="train")
        trainers = []
        for d in directions:
            for e in eps:
                t = Trainer(run_cfg, snap)
                t.step.theta.add_(vecs[d], alpha=e * pred["theta_norm"])
                trainers.append((d, float(e), t))
        dist = _distances(base, trainers, vecs, epochs, bar)
        base_acc = base.evaluate()["test_acc"]
        for i, (d, e, t) in enumerate(trainers):
            rows.append({"zipf_s": float(s), "direction": d, "eps": e,
                         "overlap_theta_m": overlap[d],
                         **rates(dist[i], early), "start": dist[i, 0],
                         "end": dist[i, -1], "growth_factor": dist[i, -1] / dist[i, 0],
                         "test_acc_end": t.evaluate()["test_acc"],
                         "base_test_acc_end": base_acc})
            curves.append(dist[i])
    if bar is not None:
        bar.close()
    result = {"path": str(path), "epoch": epoch, "epochs": epochs, "dtype": dtype,
              "zipf_s": [float(s) for s in zipf_s],
              "lambda": lam, "early": early, "seed": seed,
              "n_key": len(key), "directions": list(directions), "eps": [float(e) for e in eps],
              "predictions": predictions, "rows": rows}
    if store:
        from .stability import write_result
        write_result(str(path), f"perturb/epoch{epoch}", {"summary": result},
               {"curves": np.stack(curves)})
    return PerturbResult.from_dict({**result, "curves": [c.tolist() for c in curves]})


def stored_perturb(path: str | Path, epoch: int) -> PerturbResult | None:
    """The result `perturb_run` stored for keyframe `epoch`, or None."""
    with open_run(path) as run:
        a = run.analysis(f"perturb/epoch{epoch}")
    if a is None:
        return None
    return PerturbResult.from_dict({**a["attrs"]["settings"]["summary"],
                                    "curves": a["curves"].tolist()})


def _law_prediction(base: Trainer, project: Any, s: float,
                    lam: float) -> tuple[dict[str, Any], torch.Tensor]:
    """The 1-D law's prediction γ_inst − λ under L_s at the point `base` holds, with θ_M
    (the memorization part of θ, flat)."""
    st, o = base.step, base.step.optim
    names = list(st.shapes)
    theta0 = st.theta.clone()
    st.loss_and_grad()
    u = adamw_direction(st.grad, st.exp_avg, st.exp_avg_sq, st.t, o)
    theta_m = flatten_params(project(st.views(theta0)), order=names)
    g_inst = gamma_inst(flatten_params(project(st.views(u)), order=names), theta_m, o.lr)
    return {"zipf_s": s, "gamma_inst": g_inst, "law_rate": g_inst - lam,
            "hessian_rate": None, "mu_min": None, "theta_norm": float(theta0.norm()),
            "m_w": float(theta_m.norm())}, theta_m


def _unit_directions(base: Trainer, directions: tuple[str, ...], theta_m: torch.Tensor,
                     project: Any, point: Any, pred: dict[str, Any], *, seed: int,
                     lanczos_steps: int) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Each direction as a unit vector in the trainer's flat layout, and |P_M v| of each;
    the Hessian direction's eigenvalue and linearized rate go into `pred`."""
    from .stability import spectrum_record

    st, o = base.step, base.step.optim
    names = list(st.shapes)
    vecs: dict[str, torch.Tensor] = {}
    overlap: dict[str, float] = {}
    for d in directions:
        if d == "theta_m":
            v = theta_m
        elif d == "random":
            gen = torch.Generator().manual_seed(seed)
            v = torch.randn(st.theta.numel(), generator=gen, dtype=torch.float64)
        else:
            rec = spectrum_record(point, pred["zipf_s"], 1, "both", True, 1e-4, 0.0,
                                  steps=lanczos_steps)
            mu = float(rec["eigenvalues"][-1])
            pred["mu_min"] = mu
            pred["hessian_rate"] = float(linearized_growth_rates([mu], o.lr,
                                                                 o.weight_decay)[0])
            v = rec["eigenvectors"][:, -1]  # flattened in the checkpoint's name order
            v = flatten_params(unflatten(v, point.like), order=names)
        vecs[d] = (v / v.norm()).to(st.theta)  # dtype and device
        overlap[d] = float(flatten_params(project(st.views(vecs[d])), order=names).norm())
    return vecs, overlap


def _distances(base: Trainer, trainers: list[tuple[str, float, Trainer]],
               vecs: dict[str, torch.Tensor], epochs: int, bar: Any) -> np.ndarray:
    """‖θ_perturbed − θ_base‖ of each perturbed trainer at epochs 0 .. `epochs`, all
    stepping beside the unperturbed one."""
    dist = np.zeros((len(trainers), epochs + 1))
    for k in range(epochs + 1):
        for i, (_, _, t) in enumerate(trainers):
            dist[i, k] = float((t.step.theta - base.step.theta).norm())
        if k < epochs:
            base.step.step()
            for _, _, t in trainers:
                t.step.step()
            if bar is not None:
                bar.update(1)
    return dist


__all__ = ["PerturbPrediction", "PerturbRow", "PerturbResult", "perturb_run", "stored_perturb",
           "DIRECTIONS", "check_settings"]
