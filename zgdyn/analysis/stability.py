"""The saddle-point test at a checkpoint: Hessian spectra of L_s for any Zipf exponent s,
Adam-preconditioned spectra, overlaps with θ_M, and predicted growth rates.

What `zgdyn hessian` and `zgdyn saddle` run, each one call. Results are also written to
the run's ``analysis/hessian/...`` and ``analysis/saddle/...`` groups.

    >>> res = hessian_at("run.h5", zipf_s=1.5, k=10, which="both", preconditioned=True)
    >>> table = saddle_table("run.h5", exponents=[0, 1, 1.5, 2, 3])
    >>> res.eigenvalues, table.rows[0].pre_lambda_min, res.to_dict()   # the --json form
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..core.config import ZgdynError
from ..core.data import loss_weights
from ..core.model import DTYPES
from ..core.results import Result
from ..core.runtime import progress_bar
from ..store.reader import open_run
from ..store.writer import AnalysisWriter
from .fourier import key_freqs_of, memorization_projector
from .hessian import (adam_preconditioner, adam_stability_threshold, extreme_eigs,
                      lanczos_extremes, flatten_params, gradient, gradient_overlaps,
                      linearized_growth_rates, make_hvp, per_pair_gradients, preconditioned_hvp,
                      subspace_overlap, unflatten, weighted_loss_fn)
from .hvp import LOSS_HEADS, MLPHessian
from .krylov import block_extremes, preconditioned_block

WHICH = ("top", "bottom", "both")
METHODS = {"block": "|H u - λ u| <= {tol:g} * max|λ| (block Krylov, hand-written HVP)",
           "arpack": "|H u - λ u| <= {tol:g} * |λ| for each pair (ARPACK, torch.func HVP)"}


@dataclass
class Point:
    """A checkpoint made ready for curvature questions."""

    run_path: str
    epoch: int
    p: int
    like: dict[str, torch.Tensor]
    theta: torch.Tensor  # (n,)
    pairs: tuple[np.ndarray, np.ndarray, np.ndarray]  # a, b, y of the training pairs
    split: Any
    config: Any
    key: list[int]
    v: torch.Tensor | None  # Adam second moment (n,) at a keyframe, else None
    step: int | None

    def weights(self, s: float) -> np.ndarray:
        return loss_weights(self.split, s, self.config.data)

    def loss(self, s: float, coupled_wd: float = 0.0) -> Callable[[torch.Tensor], torch.Tensor]:
        a, b, y = self.pairs
        return weighted_loss_fn(self.p, a, b, y, self.weights(s), like=self.like,
                                coupled_wd=coupled_wd, loss=self.config.model.loss)

    def project_m(self, flat: torch.Tensor) -> torch.Tensor:
        named = unflatten(flat, self.like)
        return flatten_params(memorization_projector(self.p, self.key)(named))


def load_point(path: str, epoch: int | None = None, *, dtype: str = "float64",
               device: str = "cpu") -> Point:
    """The checkpoint at `epoch` (default: the last), with Adam state if it is a keyframe,
    on `device` (HVPs then run there).

    Key frequencies come from the run's analysis if it has one, else are detected here.
    """
    if dtype not in DTYPES:
        raise ZgdynError(f"dtype: must be float32 | float64, got {dtype!r}")
    with open_run(path) as run:
        if epoch is None:
            epoch = int(run.checkpoint_epochs[-1])
        params = {k: v.to(device, DTYPES[dtype]) for k, v in run.params_at(epoch).items()}
        snap = run.snapshot_at(epoch) if epoch in set(run.keyframe_epochs.tolist()) else None
        analysis = run.analysis("trajectory")
        split, cfg = run.split, run.config
    p = cfg.data.p
    key = (analysis["attrs"]["settings"]["key"] if analysis is not None
           and analysis["attrs"]["settings"]["key"] else None)
    if key is None:
        key = key_freqs_of(params, p)
    v = (flatten_params(snap.exp_avg_sq, order=params).to(device, DTYPES[dtype]) if snap
         else None)
    return Point(run_path=str(path), epoch=epoch, p=p, like=params,
                 theta=flatten_params(params).detach(), pairs=split.tokens(split.train_idx),
                 split=split, config=cfg, key=key, v=v, step=snap.step if snap else None)


def _counted(op: Callable, bar: Any) -> Callable:
    """`op`, advancing `bar` by the vectors it is applied to (a (b, n) block counts b)."""
    if bar is None:
        return op

    def counted(v: torch.Tensor) -> torch.Tensor:
        out = op(v)
        bar.update(v.shape[0] if v.dim() == 2 else 1)
        return out

    return counted


def spectrum_record(point: Point, s: float, k: int, which: str, preconditioned: bool,
                     tol: float, coupled_wd: float, *, steps: int | None = None,
                     method: str = "arpack", bar: Any = None) -> dict[str, Any]:
    """Eigenpairs by ARPACK on torch.func's HVP (method="arpack", steps=None), by a
    fixed-budget Lanczos run (steps, which="both"), or by block Krylov on the hand-written
    HVP (method="block"; for a loss the hand-written HVP does not have, ARPACK)."""
    d = None
    if preconditioned:
        if point.v is None:
            raise ZgdynError(f"{point.run_path}: epoch {point.epoch} is not a keyframe, so it "
                             "has no Adam state for --preconditioned; choose a keyframe epoch")
        o = point.config.optim
        if o.name != "adamw" or o.sqrt_v_floor:
            raise ZgdynError(f"{point.run_path}: --preconditioned uses AdamW's P = diag(√v̂ + "
                             f"ε); this run trains with {o.name}"
                             + (" and a √v̂ floor" if o.sqrt_v_floor else ""))
        d = adam_preconditioner(point.v, point.step, o.beta2, o.eps)
    n = point.theta.numel()
    if method == "block" and steps is None and point.config.model.loss in LOSS_HEADS:
        a, b, y = point.pairs
        mh = MLPHessian(point.p, point.like, a, b, y, point.weights(s), coupled_wd=coupled_wd,
                        dtype=point.theta.dtype, device=point.theta.device)
        op = mh.block if d is None else preconditioned_block(mh.block, d)
        res = block_extremes(_counted(op, bar), n, k=k, which=which, tol=tol)
    else:
        hvp = make_hvp(point.loss(s, coupled_wd), point.theta)
        if d is not None:
            hvp = preconditioned_hvp(hvp, d)
        hvp = _counted(hvp, bar)
        if steps is None:
            res = extreme_eigs(hvp, n, k=k, which=which, tol=tol)
        else:
            res = lanczos_extremes(hvp, n, steps=steps, k=k, tol=tol)
    vecs = res.eigenvectors
    if preconditioned:  # directions in parameter space: D^{-1/2} u, normalized
        vecs = vecs * d.rsqrt().to(vecs)[:, None]
        vecs = vecs / vecs.norm(dim=0, keepdim=True)
    return {"eigenvalues": res.eigenvalues.cpu().numpy(), "eigenvectors": vecs,
            "residuals": res.residuals.cpu().numpy(), "n_hvp": res.n_hvp,
            "converged": res.converged}


@dataclass(frozen=True)
class HessianResult(Result):
    """What `hessian_at` returns (`zgdyn hessian --json`): the extreme eigenvalues (largest
    first) with their residuals, each eigenvector's overlap with θ_M and its cosines with
    the heaviest pairs' gradients; with `preconditioned`, Adam's stability threshold and
    each eigenvalue's linearized growth rate."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("adam_threshold", "growth_rates")

    path: str
    epoch: int
    zipf_s: float
    dtype: str
    which: str
    k: int
    preconditioned: bool
    coupled_wd: float
    method: str
    tolerance: str
    n_key: int
    eigenvalues: tuple[float, ...]
    residuals: tuple[float, ...]
    n_hvp: int
    converged: bool
    overlap_theta_m: tuple[float, ...]
    heavy_pairs: tuple[int, ...]
    cos_heavy_pair_grads: tuple[tuple[float, ...], ...]
    lr_wd: float
    adam_threshold: float | None = None
    growth_rates: tuple[float, ...] | None = None


@dataclass(frozen=True)
class SaddleRow(Result):
    """One Zipf exponent of the saddle table (see `saddle_table`)."""

    zipf_s: float
    grad_norm: float
    lambda_min: float
    lambda_max: float
    pre_lambda_min: float
    pre_lambda_max: float
    overlap_theta_m: float
    growth_rate: float
    curvature_rate: float
    converged: bool
    residual_pre_min: float
    n_hvp: int


@dataclass(frozen=True)
class SaddleResult(Result):
    """What `saddle_table` returns (`zgdyn saddle --json`): one row per exponent, and
    whether the growth rate rises with s; `stored` where it was read back from the run
    file instead of computed."""

    OMIT_NONE: ClassVar[tuple[str, ...]] = ("stored",)

    path: str
    epoch: int
    dtype: str
    n_key: int
    lr_wd: float
    adam_threshold: float
    rows: tuple[SaddleRow, ...]
    monotone_growth: bool
    stored: bool | None = None


def hessian_at(path: str, *, epoch: int | None = None, zipf_s: float | None = None,
               k: int = 10, which: str = "both", preconditioned: bool = False,
               dtype: str = "float64", tol: float | None = None, coupled_wd: float = 0.0,
               n_pairs: int = 5, store: bool = True, device: str = "cpu",
               method: str = "block", progress: bool = False) -> HessianResult:
    """Extreme eigenpairs of the Hessian of L_s (or of D^{-1/2} H D^{-1/2}) at a checkpoint.

    zipf_s: the exponent of the loss (default: the run's, after any switch). method:
    "block" (block Krylov on the hand-written HVP; a pair is converged when
    ‖H u − λ u‖ ≤ tol·max|λ|) or "arpack" (ARPACK on torch.func's HVP, the reference;
    ‖H u − λ u‖ ≤ tol·|λ| for each pair). Returns eigenvalues (largest first), residuals,
    HVP count, the tolerance's meaning, each eigenvector's overlap with θ_M and cosines
    with the gradients of the `n_pairs` heaviest training pairs. progress: a count of the
    HVPs on stderr.
    """
    if which not in WHICH:
        raise ZgdynError(f"which: must be {' | '.join(WHICH)}, got {which!r}")
    if method not in METHODS:
        raise ZgdynError(f"method: must be {' | '.join(METHODS)}, got {method!r}")
    point = load_point(path, epoch, dtype=dtype, device=device)
    if not 1 <= k < point.theta.numel() // 2:
        raise ZgdynError(f"k: must be an integer in [1, {point.theta.numel() // 2}), got {k}")
    cfg = point.config
    if zipf_s is None:
        zipf_s = cfg.schedule.switch_s if cfg.schedule.switch_s is not None else cfg.data.zipf_s
    if zipf_s < 0:
        raise ZgdynError(f"zipf_s: must be a number >= 0, got {zipf_s}")
    tol = tol if tol is not None else (1e-6 if dtype == "float64" else 1e-4)
    bar = progress_bar(progress, desc=f"hessian s={zipf_s:g}", unit="HVP")
    try:
        rec = spectrum_record(point, zipf_s, k, which, preconditioned, tol, coupled_wd,
                               method=method, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    vecs = rec["eigenvectors"].to(point.theta)
    overlap_m = subspace_overlap(vecs, point.project_m).double().cpu().numpy()
    heavy = np.argsort(-point.weights(zipf_s), kind="stable")[:n_pairs]
    a, b, y = point.pairs
    grads = per_pair_gradients(point.p, point.theta, point.like, a, b, y, heavy)
    cos = gradient_overlaps(vecs, grads).double().cpu().numpy()
    o = cfg.optim
    result = HessianResult.from_dict({
        "path": str(path), "epoch": point.epoch, "zipf_s": float(zipf_s), "dtype": dtype,
        "which": which, "k": k, "preconditioned": preconditioned, "coupled_wd": coupled_wd,
        "method": method, "tolerance": METHODS[method].format(tol=tol),
        "n_key": len(point.key), "eigenvalues": rec["eigenvalues"].tolist(),
        "residuals": rec["residuals"].tolist(), "n_hvp": rec["n_hvp"],
        "converged": rec["converged"], "overlap_theta_m": overlap_m.tolist(),
        "heavy_pairs": heavy.tolist(), "cos_heavy_pair_grads": cos.tolist(),
        "lr_wd": o.lr * o.weight_decay,
        "adam_threshold": adam_stability_threshold(o.lr, o.beta1) if preconditioned else None,
        "growth_rates": linearized_growth_rates(rec["eigenvalues"], o.lr,
                                                o.weight_decay).tolist()
        if preconditioned else None})
    if store:
        name = (f"hessian/epoch{point.epoch}_s{zipf_s:g}_{which}_k{k}"
                f"{'_pre' if preconditioned else ''}_{dtype}")
        write_result(path, name, result.to_dict(), {"eigenvectors": vecs.float().cpu().numpy(),
                                    "eigenvalues": rec["eigenvalues"],
                                    "overlap_theta_m": overlap_m})
    return result


def write_result(path: str, group: str, attrs: dict[str, Any],
                 arrays: dict[str, Any]) -> None:
    """Store a result in `analysis/<group>`: its attributes (lists of 64 or more items left
    out) as the group's settings, and `arrays` as datasets."""
    with AnalysisWriter(path, group) as w:
        w.reset({k: v for k, v in attrs.items() if not isinstance(v, list) or len(v) < 64})
        for name, arr in arrays.items():
            w.put(name, arr)


def saddle_table(path: str, *, epoch: int | None = None,
                 exponents: tuple[float, ...] = (0.0, 1.0, 1.5, 2.0, 3.0),
                 dtype: str = "float64", tol: float | None = None, steps: int = 150,
                 store: bool = True, device: str = "cpu",
                 progress: bool = False) -> SaddleResult:
    """One row per Zipf exponent at one checkpoint (default: the last keyframe).

    Columns: ‖∇L_s‖; λ_min, λ_max of H_s; λ_min, λ_max of D^{-1/2} H_s D^{-1/2}; the overlap
    of the most negative preconditioned direction with θ_M; and its predicted growth rate
    −lr·μ_min − lr·wd per epoch (> 0: the Fourier solution is unstable along it). Each
    spectrum is one Lanczos run of `steps` HVPs (both ends at once), residuals reported.
    progress: a bar over the HVPs on stderr.
    """
    if epoch is None:
        with open_run(path) as run:
            epoch = run.last_keyframe
    point = load_point(path, epoch, dtype=dtype, device=device)
    if point.v is None:
        raise ZgdynError(f"{path}: epoch {epoch} is not a keyframe; the saddle table needs "
                         "Adam's state there")
    if any(s < 0 for s in exponents):
        raise ZgdynError(f"zipf_s: must be numbers >= 0, got {list(exponents)}")
    tol = tol if tol is not None else 1e-4  # relative; μ_min is compared with wd
    o = point.config.optim
    rows, bottom_vecs = [], []
    bar = progress_bar(progress, desc="saddle", unit="HVP",
                       total=2 * len(exponents) * (steps + 2))
    for s in exponents:
        if bar is not None:
            bar.set_postfix(s=f"{s:g}")
        raw = spectrum_record(point, s, 1, "both", False, tol, 0.0, steps=steps, bar=bar)
        pre = spectrum_record(point, s, 1, "both", True, tol, 0.0, steps=steps, bar=bar)
        v_min = pre["eigenvectors"][:, -1:].to(point.theta)
        mu_min = float(pre["eigenvalues"][-1])
        rows.append(SaddleRow(**{
            "zipf_s": float(s),
            "grad_norm": float(gradient(point.loss(s), point.theta).norm()),
            "lambda_min": float(raw["eigenvalues"][-1]),
            "lambda_max": float(raw["eigenvalues"][0]),
            "pre_lambda_min": mu_min, "pre_lambda_max": float(pre["eigenvalues"][0]),
            "overlap_theta_m": float(subspace_overlap(v_min, point.project_m)[0]),
            "growth_rate": float(linearized_growth_rates([mu_min], o.lr, o.weight_decay)[0]),
            "curvature_rate": -o.lr * mu_min,
            "converged": bool(raw["converged"] and pre["converged"]),
            "residual_pre_min": float(pre["residuals"][-1]),
            "n_hvp": raw["n_hvp"] + pre["n_hvp"],
        }))
        bottom_vecs.append(v_min[:, 0].float().cpu().numpy())
    if bar is not None:
        bar.close()
    result = SaddleResult(
        path=str(path), epoch=epoch, dtype=dtype, n_key=len(point.key),
        lr_wd=o.lr * o.weight_decay, adam_threshold=adam_stability_threshold(o.lr, o.beta1),
        rows=tuple(rows),
        monotone_growth=bool(np.all(np.diff([r.growth_rate for r in rows]) >= 0)))
    if store:
        table = [r.to_dict() for r in rows]
        cols = {c: np.array([r[c] for r in table], dtype=np.float64)
                for c in table[0]}  # converged as 1.0 / 0.0
        write_result(path, f"saddle/epoch{epoch}_{dtype}", {k: v for k, v in result.to_dict().items()
                                                      if k != "rows"},
               {**cols, "bottom_direction": np.stack(bottom_vecs)})
    return result


def stored_saddle(path: str | Path, epoch: int, dtype: str,
                  exponents: list[float]) -> SaddleResult | None:
    """The table `saddle_table` stored for keyframe `epoch` in `dtype`, if it has these
    exponents; None otherwise."""
    with open_run(path) as run:
        a = run.analysis(f"saddle/epoch{epoch}_{dtype}")
    if a is None or [float(x) for x in a["zipf_s"]] != [float(x) for x in exponents]:
        return None
    rows = []
    for i in range(len(a["zipf_s"])):
        row = {f: float(a[f][i]) for f in SaddleRow.__dataclass_fields__ if f in a}
        # files written before convergence was stored: unknown, say no
        row["converged"] = bool(row.get("converged", 0.0))
        row["n_hvp"] = int(row["n_hvp"])
        rows.append(SaddleRow(**row))
    return SaddleResult(**{**a["attrs"]["settings"], "rows": tuple(rows), "stored": True})


__all__ = ["HessianResult", "SaddleRow", "SaddleResult", "hessian_at", "saddle_table",
           "stored_saddle", "load_point", "Point", "write_result", "spectrum_record"]
