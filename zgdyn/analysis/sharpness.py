"""`zgdyn sharpness`: the curvature of L_s along a run, for the edge-of-stability figure.

At checkpoints (every `every` epochs), keyframes and the records of collapse windows,
it measures, in float64 with the hand-written HVP (`zgdyn.analysis.hvp`) and the block Krylov
solver (`zgdyn.analysis.krylov`, warm-started from the previous point's eigenvectors):

- λ_max and λ_min of H = ∇²L_s, and λ_grad = gᵀHg / gᵀg along the gradient g = ∇L_s;
- with `preconditioned`, the same of P⁻¹H with Adam's P = diag(D), D = √v̂ + ε
  (computed as D^{-1/2} H D^{-1/2}, which has the same eigenvalues), and
  λ_grad(P⁻¹H) = gᵀP⁻¹HP⁻¹g / gᵀP⁻¹g, the curvature along Adam's unmomented step P⁻¹g.

Adam's second moment v is recorded only at keyframes. Everywhere else it is recomputed:
training is replayed in memory from the previous keyframe, with the run's own thread
count, which is bitwise the original trajectory (each replayed θ is checked against the
stored parameters, and a mismatch is an error). Without `preconditioned` nothing is
replayed. Results go to the run file's ``analysis/sharpness`` group, one record per
point; a second call skips the points already there (so it resumes, and a denser or
longer call adds to it). Each eigenvalue comes with its residual ‖A u − λ u‖; the
tolerance is ‖A u − λ u‖ ≤ tol · max|λ| of the operator.

    >>> summary = sharpness_run("run.h5", every=500, preconditioned=True, progress=True)
    >>> table = sharpness_onsets("run.h5")            # each collapse's onset vs thresholds
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.config import DETECTOR_OFF, ZgdynError
from ..core.data import loss_weights
from ..core.runtime import torch_threads
from ..core.train import Trainer
from ..store.reader import Run, open_run
from ..store.writer import AnalysisWriter
from .analyze import record_each, start_group
from .hessian import adam_preconditioner, adam_stability_threshold, flatten_params
from .hvp import LOSS_HEADS, MLPHessian
from .krylov import BlockOperator, block_extremes, preconditioned_block

GROUP = "sharpness"
COLUMNS = ("lambda_max", "lambda_min", "residual_max", "residual_min", "lambda_grad")


@dataclass
class Curvature:
    """The extremes of one operator at one point, and its Rayleigh quotient along g."""

    lambda_max: float
    lambda_min: float
    residual_max: float  # ‖A u − λ u‖ of the top pair, from a fresh product
    residual_min: float
    lambda_grad: float  # gᵀ A g / gᵀ g for the operator's g
    n_hvp: int
    converged: bool
    vectors: Tensor  # (2, n) the two eigenvectors, rows, for the next warm start


def curvature(op: BlockOperator, n: int, g: Tensor, *, tol: float, seed: int = 0,
              warm: Tensor | None = None) -> Curvature:
    """λ_max, λ_min of the symmetric operator A (n, n) and gᵀAg/gᵀg for g (n,).

    op: V (b, n) ↦ A V (b, n); warm: (r, n) rows to start from (the previous point's
    vectors). One extra product gives λ_grad.
    """
    res = block_extremes(op, n, k=1, which="both", tol=tol, x0=warm, seed=seed)
    gd = g.to(torch.float64)
    ag = op(gd[None])[0].to(torch.float64)
    return Curvature(lambda_max=float(res.eigenvalues[0]), lambda_min=float(res.eigenvalues[1]),
                     residual_max=float(res.residuals[0]), residual_min=float(res.residuals[1]),
                     lambda_grad=float(gd @ ag / (gd @ gd)), n_hvp=res.n_hvp + 1,
                     converged=res.converged, vectors=res.eigenvectors.t().contiguous())


# -- the points and their optimizer state ------------------------------------------------


def measure_epochs(run: Run, *, every: int, epoch_from: int | None = None,
                   epoch_to: int | None = None, windows: bool = True,
                   window_every: int = 1) -> list[int]:
    """The epochs to measure in [from, to]: checkpoints at multiples of `every`, every
    keyframe, and (with `windows`) every `window_every`-th record of each collapse window."""
    lo = 0 if epoch_from is None else epoch_from
    hi = int(run.param_epochs.max()) if epoch_to is None else epoch_to
    ck = run.checkpoint_epochs
    picked = set(int(e) for e in ck[(ck % every) == 0])
    picked |= set(int(e) for e in run.keyframe_epochs)
    if windows:
        w = run.windows
        for first, count in zip(w["first_record"], w["n_records"]):
            picked |= set(int(e) for e in run.window_epochs[first:first + count:window_every])
    return sorted(e for e in picked if lo <= e <= hi)


def adam_states(run: Run, epochs: list[int]) -> Iterator[tuple[int, Tensor, int, bool]]:
    """(epoch, v (N,), Adam's step t, replayed) at each of the sorted `epochs`: read at a
    keyframe, else replayed in memory from the previous keyframe, bitwise, and checked
    against the stored parameters."""
    cfg = run.config
    kf = run.keyframe_epochs
    threads = int(run.attrs.get("threads", torch.get_num_threads()))
    trainer = None
    for e in epochs:
        if e in set(kf.tolist()):
            snap = run.snapshot_at(e)
            v = flatten_params(snap.exp_avg_sq, order=snap.params)
            trainer = None  # the next replay starts at a keyframe at or after this one
            yield e, v, snap.step, False
            continue
        start = kf[kf <= e]
        if not len(start):
            raise ZgdynError(f"{run.path}: epoch {e} has no keyframe before it to replay from")
        if trainer is None or trainer.epoch > e or trainer.epoch < int(start[-1]):
            trainer = Trainer(cfg.replace(**DETECTOR_OFF), run.snapshot_at(int(start[-1])))
        with torch_threads(threads):
            while trainer.epoch < e:
                trainer.after_step(trainer.step.step(), check=True)
                trainer.at_epoch([])
        stored = flatten_params(run.params_at(e), order=trainer.params).to(trainer.step.theta)
        if not torch.equal(trainer.step.theta, stored):
            raise ZgdynError(f"{run.path}: replaying from keyframe {int(start[-1])} does not "
                             f"reproduce epoch {e} bitwise (the run was trained with {threads} "
                             f"thread(s) on {cfg.device}); Adam's state there is unknown")
        yield e, trainer.step.exp_avg_sq.detach().clone(), trainer.step.t, True


# -- the whole run -------------------------------------------------------------------------


def _weights_at(run: Run, zipf_s: float | None) -> Any:
    """epoch ↦ (s, w (n_train,)): the given exponent, or the run's phase at that epoch."""
    cfg, split = run.config, run.split
    switch = int(run.attrs["switch_epoch"])
    phase_s = [cfg.data.zipf_s] + ([cfg.schedule.switch_s] if cfg.schedule.switch_s
                                   is not None else [])
    cache: dict[float, np.ndarray] = {}

    def at(epoch: int) -> tuple[float, np.ndarray]:
        s = zipf_s if zipf_s is not None else phase_s[1 if 0 <= switch <= epoch else 0]
        if s not in cache:
            cache[s] = loss_weights(split, s, cfg.data)
        return s, cache[s]

    return at


def sharpness_run(path: str, *, every: int = 500, epoch_from: int | None = None,
                  epoch_to: int | None = None, zipf_s: float | None = None,
                  preconditioned: bool = False, windows: bool = True, window_every: int = 1,
                  tol: float = 1e-5, force: bool = False, progress: bool = False,
                  commit_every: int = 10, seed: int = 0) -> dict[str, Any]:
    """Measure the curvature at the points of `measure_epochs` (resumably) into
    ``analysis/sharpness``; returns the summary (what `zgdyn sharpness --json` prints).

    zipf_s: the loss's exponent (default: the run's at each epoch). tol: the eigenpairs'
    residual tolerance, relative to the operator's largest |λ|.
    """
    if not (isinstance(every, int) and every >= 1):
        raise ZgdynError(f"every: must be an integer >= 1, got {every!r}")
    if not (isinstance(window_every, int) and window_every >= 1):
        raise ZgdynError(f"window_every: must be an integer >= 1, got {window_every!r}")
    if zipf_s is not None and not (math.isfinite(zipf_s) and zipf_s >= 0):
        raise ZgdynError(f"zipf_s: must be a finite number >= 0, got {zipf_s}")
    if not (0 < tol < 1):
        raise ZgdynError(f"tol: must be a number in (0, 1), got {tol}")
    for name, e in (("from", epoch_from), ("to", epoch_to)):
        if e is not None and e < 0:
            raise ZgdynError(f"--{name}: must be an epoch >= 0, got {e}")
    if epoch_from is not None and epoch_to is not None and epoch_from > epoch_to:
        raise ZgdynError(f"--from/--to: need from <= to, got {epoch_from}, {epoch_to}")
    with AnalysisWriter(path, GROUP) as writer:
        return _sharpness(writer, every, epoch_from, epoch_to, zipf_s, preconditioned,
                          windows, window_every, tol, force, progress, commit_every, seed)


def _sharpness(writer: AnalysisWriter, every: int, epoch_from: int | None,
               epoch_to: int | None, zipf_s: float | None, preconditioned: bool,
               windows: bool, window_every: int, tol: float, force: bool, progress: bool,
               commit_every: int, seed: int) -> dict[str, Any]:
    run = writer.reader()
    cfg = run.config
    if cfg.model.loss not in LOSS_HEADS:
        raise ZgdynError(f"{run.path}: its loss is {cfg.model.loss}; zgdyn sharpness measures "
                         f"{' | '.join(LOSS_HEADS)} (`zgdyn hessian` takes any loss)")
    if preconditioned and any(o.name != "adamw" or o.sqrt_v_floor for o in
                              (cfg.phase_optim(i) for i in range(len(cfg.optimizers)))):
        raise ZgdynError(f"{run.path}: --preconditioned uses AdamW's P = diag(√v̂ + ε); this "
                         f"run trains with {' then '.join(cfg.optimizers)} (or a √v̂ floor)")
    settings = {"zipf_s": zipf_s, "preconditioned": preconditioned, "tol": tol,
                "dtype": "float64", "seed": seed}
    epochs = measure_epochs(run, every=every, epoch_from=epoch_from, epoch_to=epoch_to,
                            windows=windows, window_every=window_every)
    if not epochs:
        raise ZgdynError(f"{run.path}: no checkpoint, keyframe or window record in the range "
                         "asked for")
    done = start_group(writer, settings, force)
    todo = [e for e in epochs if e not in done]
    a, b, y = run.split.tokens(run.split.train_idx)
    weights_at = _weights_at(run, zipf_s)
    keyframes = set(int(e) for e in run.keyframe_epochs)
    in_window = set(int(e) for e in run.window_epochs)
    states = adam_states(run, todo) if preconditioned else None
    o = cfg.optim
    warm: dict[str, Tensor | None] = {"plain": None, "pre": None}

    def measure(e: int) -> dict[str, Any]:
        s, w = weights_at(e)
        params = {k: t.double() for k, t in run.params_at(e).items()}
        mh = MLPHessian(cfg.data.p, params, a, b, y, w)
        plain = curvature(mh.block, mh.n, mh.grad, tol=tol, seed=seed, warm=warm["plain"])
        warm["plain"] = plain.vectors
        row: dict[str, Any] = {"epoch": e, "zipf_s": s, "keyframe": e in keyframes,
                               "window": e in in_window, "loss": mh.loss,
                               "grad_norm": float(mh.grad.norm())}
        row.update({c: getattr(plain, c) for c in COLUMNS})
        n_hvp, converged = plain.n_hvp, plain.converged
        if states is not None:
            e_state, v, t, replayed = next(states)
            assert e_state == e
            row.update({"adam_step": t, "replayed": replayed})
            if t == 0:  # the initialization: Adam has no preconditioner yet
                row.update({f"pre_{c}": math.nan for c in COLUMNS}, adam_scale=0.0)
            else:
                d = adam_preconditioner(v.to(torch.float64), t, o.beta2, o.eps)
                pre = curvature(preconditioned_block(mh.block, d), mh.n, mh.grad / d.sqrt(),
                                tol=tol, seed=seed, warm=warm["pre"])
                warm["pre"] = pre.vectors
                row.update({f"pre_{c}": getattr(pre, c) for c in COLUMNS})
                row["adam_scale"] = float(d.sub(o.eps).square().mean().sqrt())
                n_hvp, converged = n_hvp + pre.n_hvp, converged and pre.converged
        return {**row, "n_hvp": n_hvp, "converged": converged}

    record_each(writer, todo, measure, total=len(epochs), unit="point", desc="sharpness",
                progress=progress, commit_every=commit_every)
    stored = writer.reader().analysis(GROUP)
    summary = {
        "path": str(run.path), "group": f"analysis/{GROUP}", "settings": settings,
        "n_points": int(len(stored["epoch"])), "newly_measured": len(todo),
        "n_asked": len(epochs),
        "tolerance": f"‖A u − λ u‖ ≤ {tol:g} · max|λ| (float64)",
        "thresholds": thresholds(cfg),
        "hvps": int(stored["n_hvp"].sum()), "all_converged": bool(stored["converged"].all()),
        "adam_state": ("keyframes read, every other point replayed in memory from the "
                       "previous keyframe, bitwise" if preconditioned else "not used"),
    }
    writer.put_attrs({"summary": summary})
    return summary


def thresholds(cfg: Any) -> dict[str, float]:
    """The stability thresholds of the run's optimizer: 38/lr (Adam's edge of stability,
    (2 + 2β1)/((1 − β1) lr)), 2/lr along the gradient, −wd and −2·wd."""
    o = cfg.optim
    return {"adam_edge": adam_stability_threshold(o.lr, o.beta1), "two_over_lr": 2.0 / o.lr,
            "minus_wd": -o.weight_decay, "minus_two_wd": -2.0 * o.weight_decay}


def sorted_sharpness(run: Run) -> dict[str, Any] | None:
    """`analysis/sharpness` with every per-point dataset sorted by epoch (None if absent)."""
    a = run.analysis(GROUP)
    if a is None:
        return None
    order = np.argsort(a["epoch"], kind="stable")
    n = len(order)
    return {k: (v[order] if isinstance(v, np.ndarray) and len(v) == n else v)
            for k, v in a.items()}


# -- each collapse's onset against the thresholds --------------------------------------------

# (column, threshold name, side): "above" crosses when value >= threshold, "below" when <=
CRITERIA = (("pre_lambda_max", "adam_edge", "above"),
            ("pre_lambda_grad", "two_over_lr", "above"),
            ("pre_lambda_min", "minus_two_wd", "below"),
            ("pre_lambda_min", "minus_wd", "below"))
LABELS = {"pre_lambda_max": "λ_max(P⁻¹H)", "pre_lambda_grad": "λ_grad(P⁻¹H)",
          "pre_lambda_min": "λ_min(P⁻¹H)", "adam_edge": "38/lr", "two_over_lr": "2/lr",
          "minus_two_wd": "−2·wd", "minus_wd": "−wd"}


def _held(v: np.ndarray, lim: float, side: str) -> np.ndarray:
    return v >= lim if side == "above" else v <= lim


def onset_table(epochs: np.ndarray, values: dict[str, np.ndarray], onsets: list[int],
                limits: dict[str, float], *, approach: tuple[int, int] = (100, 10),
                max_gap: int = 10, settle: int = 2000) -> list[dict[str, Any]]:
    """One row per collapse onset that has a measured point within `max_gap` epochs before
    it. For each criterion: the value at the last point before the onset ("before") and at
    the onset itself if measured ("at"), each over its threshold; value / threshold over
    the points `approach[0]` to `approach[1]` epochs before the onset (median, min, max);
    the first point of the cycle (from `settle` epochs after the previous onset, past its
    aftermath) where the criterion held; and, if it held at the last point before, where
    that streak of points began ("since") and its lead on the onset.

    epochs (m,) sorted; values: {column: (m,)}; limits: `thresholds`.
    """
    rows = []
    for j, onset in enumerate(onsets):
        start = onsets[j - 1] + settle if j else -math.inf
        cycle = np.flatnonzero((epochs > start) & (epochs < onset))
        if not len(cycle) or onset - epochs[cycle[-1]] > max_gap:
            continue
        i = int(cycle[-1])
        at = np.flatnonzero(epochs == onset)
        near = np.flatnonzero((epochs >= onset - approach[0]) & (epochs <= onset - approach[1]))
        row: dict[str, Any] = {"onset": int(onset), "before_epoch": int(epochs[i]),
                               "at_epoch": int(onset) if len(at) else None,
                               "approach_points": int(len(near))}
        for col, name, side in CRITERIA:
            if col not in values:
                continue
            v, lim = values[col], limits[name]
            held = _held(v[cycle], lim, side)
            since = None  # the start of the streak of points that held up to the onset
            if held[-1]:
                breaks = np.flatnonzero(~held)
                since = int(epochs[cycle[breaks[-1] + 1 if len(breaks) else 0]])
            ratio = v[near] / lim
            row.update({
                f"{col}": float(v[i]), f"{col}/{name}": float(v[i] / lim),
                f"{col}/{name}@onset": float(v[at[0]] / lim) if len(at) else None,
                f"{col}/{name}@approach": ([float(np.median(ratio)), float(ratio.min()),
                                            float(ratio.max())] if len(near) else None),
                f"{name}_first": int(epochs[cycle[int(np.argmax(held))]]) if held.any()
                else None,
                f"{name}_since": since,
                f"{name}_lead": None if since is None else int(onset - since),
                f"{name}_before_onset": bool(held[-1])})
        rows.append(row)
    return rows


def onset_verdicts(rows: list[dict[str, Any]], limits: dict[str, float], *,
                   approach: tuple[int, int] = (100, 10)) -> list[str]:
    """One sentence per criterion, computed from the onset table."""
    out = []
    for col, name, side in CRITERIA:
        have = [r for r in rows if col in r]
        if not have:
            continue
        word = "above" if side == "above" else "below"
        held = sum(r[f"{name}_before_onset"] for r in have)
        ratios = [r[f"{col}/{name}"] for r in have]
        parts = [f"{LABELS[col]} against {LABELS[name]} = {limits[name]:.4g}: {word} it at the "
                 f"last point before {held} of {len(have)} onsets (value / threshold "
                 f"{_span(ratios)})"]
        near = [r[f"{col}/{name}@approach"] for r in have if r[f"{col}/{name}@approach"]]
        if near:
            parts.append(f"{approach[0]} to {approach[1]} epochs before the onsets it was "
                         f"{_span([x[1] for x in near] + [x[2] for x in near])} times the "
                         f"threshold (medians {_span([x[0] for x in near])})")
        at = [r[f"{col}/{name}@onset"] for r in have if r[f"{col}/{name}@onset"] is not None]
        if at:
            parts.append(f"at the onsets themselves {_span(at)} times")
        leads = [r[f"{name}_lead"] for r in have if r[f"{name}_lead"] is not None]
        if leads:
            parts.append(f"where it held before the onset, it had held at every measured "
                         f"point for the {_span(leads)} epochs before")
        out.append("; ".join(parts) + ".")
    return out


def _span(xs: list[float]) -> str:
    lo, hi = min(xs), max(xs)
    fmt = (lambda x: f"{x:d}") if all(isinstance(x, int) for x in xs) else \
        (lambda x: f"{x:.3g}")
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def sharpness_onsets(path: str, *, threshold: float | None = None) -> dict[str, Any]:
    """The onset table and its verdicts for a run with ``analysis/sharpness``: collapses
    from `analyze.run_events` at the loss-ratio `threshold` (default: the run's
    collapse_threshold, the one its windows were recorded with)."""
    from .analyze import run_events

    with open_run(path) as run:
        a = sorted_sharpness(run)
        cfg = run.config
    if a is None:
        raise ZgdynError(f"{path}: has no sharpness yet; run zgdyn sharpness {path} first")
    threshold = cfg.record.collapse_threshold if threshold is None else threshold
    onsets = [int(e["epoch"]) for e in run_events(path, threshold=threshold)["events"]]
    cols = {c for c, _, _ in CRITERIA if c in a}
    limits = thresholds(cfg)
    rows = onset_table(a["epoch"], {c: a[c] for c in cols}, onsets, limits)
    return {"path": str(path), "thresholds": limits, "onsets": onsets, "rows": rows,
            "unmeasured_onsets": sorted(set(onsets) - {r["onset"] for r in rows}),
            "verdicts": onset_verdicts(rows, limits)}


__all__ = ["sharpness_run", "sharpness_onsets", "onset_table", "onset_verdicts", "measure_epochs",
           "adam_states", "curvature", "thresholds", "sorted_sharpness", "Curvature"]
