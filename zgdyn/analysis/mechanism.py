"""Why the Fourier solution falls: each run's collapses, what the rival mechanisms predict
for them, and a verdict per mechanism over a suite of controls.

The mechanisms and the predictions tested (REFERENCE.md, "Rival mechanisms"):

- **saddle** (the essay): the period is set by the decay rate λ = lr·wd alone. Predicted
  period of a control = the baseline's period × λ_baseline / λ (for the same seed); the
  collapses persist under every optimizer and setting that leaves the loss unchanged.
- **Adam's clock** (Thilak et al. 2022, Bai et al. 2025): between collapses the gradients
  are tiny, so v̂ decays as β2^t and ln √v̂ falls at (1 − β2)/2 per epoch; a collapse
  fires when √v̂ has decayed to near ε. Predicted interval k → k + 1:
  ln(a_after_k / a_onset_k+1) / ((1 − β2)/2), with a = adam_scale = √mean v̂ (measured
  onset: this holds whenever v̂ decays freely, whatever starts the collapse), and
  ln(a_after_k / ε) / ((1 − β2)/2) (onset at ε: the prediction proper, which the ε and
  β2 controls test). No second moment (SGD), no clock.
- **numerics** (Prieto et al. 2025): collapses vanish in float64 or with StableMax.
- **edge of stability** (Cohen et al. 2022): λ_max(P⁻¹H) at onset ≈ the optimizer's
  threshold, 38/lr for Adam with β1 = 0.9, (2 + 2μ)/lr for SGD with momentum μ.
  Reported beside it: λ_grad = gᵀP⁻¹HP⁻¹g / gᵀP⁻¹g against 2/lr (Bai et al.), and
  λ_min(P⁻¹H) against −2·wd.

Pure functions over a run's metrics (`run_record`, `verdicts`), plus `onset_curvature`,
which replays the run from the keyframe before an onset (bitwise, in memory) and takes
the preconditioned Hessian's extremes there.

    >>> rec = mechanism_record("data/mechanism/runs/mechanism/baseline-single-s1.5-seed42.h5")
    >>> table = verdicts([rec, ...], baseline="baseline")
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..core.config import DETECTOR_OFF, Config
from ..core.runtime import torch_threads
from .events import cycle_statistics, detect_events, drop_continuations

CLOCK_AFTER = 500  # epochs after a collapse in which √v̂'s peak is taken
ONSET_BEFORE = 10  # the curvature at onset is measured this many epochs before the trigger
TOLERANCE = 0.15  # a period law "holds" where its median relative error is within this
EOS_BAND = (0.5, 2.0)  # λ_max(P⁻¹H) / threshold within this band "is at" the threshold
NEAR_EPS = 10.0  # "onset near ε": √v̂ at onset within this factor of ε
REACHED = 0.95  # a run "reached the solution" once its test accuracy got to this


@dataclass(frozen=True)
class Onset:
    """One collapse and the optimizer's state at its onset."""

    epoch: int  # the detector's epoch (first evaluation above threshold × the minimum)
    adam_scale: float  # √mean v̂ at the last evaluation (or window epoch) before it
    sqrt_v_median: float  # median √v̂ at the last evaluation before it (windows lack it;
    # NaN in files from before it was recorded)
    adam_scale_after: float  # the largest √mean v̂ within CLOCK_AFTER epochs after
    curvature_epoch: int | None = None  # where the curvature below was measured
    lambda_max: float | None = None  # λ_max(P⁻¹H) there
    lambda_min: float | None = None  # λ_min(P⁻¹H) there
    lambda_grad: float | None = None  # gᵀP⁻¹HP⁻¹g / gᵀP⁻¹g there
    converged: bool | None = None  # the Lanczos residuals met their tolerance

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RunRecord:
    """One run of a mechanism suite: its control, its collapses and the laws' predictions."""

    label: str
    variant: str
    seed: int
    optimizer: str
    lr: float
    weight_decay: float
    beta2: float
    eps: float
    dtype: str
    loss: str
    threshold: float  # the optimizer's stability threshold for λ_max(P⁻¹H)
    epochs_done: int
    status: str
    first_95: int | None
    collapses: int
    intervals: list[float]  # epochs between consecutive collapses
    period_mean: float | None
    onsets: list[Onset] = field(default_factory=list)
    clock: list[float | None] = field(default_factory=list)  # predicted intervals, measured onset
    clock_eps: list[float | None] = field(default_factory=list)  # predicted, onset at ε

    @property
    def lam(self) -> float:
        return self.lr * self.weight_decay

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lam"] = self.lam
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunRecord:
        """The inverse of `to_dict`; an onset's measure given as None (strict JSON's
        null for NaN) is NaN."""
        d = {k: v for k, v in d.items() if k != "lam"}
        nan = {k: math.nan for k in ("adam_scale", "sqrt_v_median", "adam_scale_after")}
        return cls(**{**d, "onsets": [Onset(**{**o, **{k: v for k, v in nan.items()
                                                       if o.get(k) is None}})
                                      for o in d.get("onsets", [])]})


def stability_threshold(config: Config) -> float:
    """The threshold of λ_max(P⁻¹H) for linear stability of the run's optimizer on a
    quadratic: (2 + 2β1)/((1 − β1)·lr) for the Adam family (38/lr at β1 = 0.9; Cohen et
    al. 2022), (2 + 2μ)/lr for heavy-ball SGD with momentum μ."""
    o = config.optim
    if o.name == "sgd":
        return (2 + 2 * o.momentum_or_zero) / o.lr
    return (2 + 2 * o.beta1) / ((1 - o.beta1) * o.lr)


def _clock_rate(beta2: float) -> float:
    return (1 - beta2) / 2


def run_record(config: Config, metrics: dict[str, np.ndarray], *, label: str, variant: str,
               epochs_done: int, status: str, threshold: float = 100.0,
               curvature: dict[int, dict[str, Any]] | None = None) -> RunRecord:
    """The record of one run from its dense metrics (evaluations merged with collapse
    windows, as `Run.dense_metrics`); `curvature` maps a collapse epoch to the
    `onset_curvature` measured before it."""
    e = np.asarray(metrics["epoch"], np.float64)
    events = drop_continuations(detect_events(e, metrics["train_loss"], threshold=threshold),
                                grid=config.record.eval_every)
    stats = cycle_statistics(events, e, metrics["test_acc"])
    test = np.asarray(metrics["test_acc"])
    above = np.flatnonzero(test >= REACHED)
    a = np.asarray(metrics.get("adam_scale", np.full(len(e), np.nan)), np.float64)
    med = np.asarray(metrics.get("sqrt_v_median", np.full(len(e), np.nan)), np.float64)
    o = config.optim
    onsets = []
    for ev in events:
        before = np.flatnonzero(e < ev.epoch)
        after = (e >= ev.epoch) & (e <= ev.epoch + CLOCK_AFTER)
        i = before[-1] if len(before) else 0
        # the median is recorded at evaluations, not in collapse windows
        evals = before[np.isfinite(med[before])]
        c = (curvature or {}).get(ev.epoch, {})
        onsets.append(Onset(epoch=ev.epoch, adam_scale=float(a[i]),
                            sqrt_v_median=float(med[evals[-1]]) if len(evals) else math.nan,
                            adam_scale_after=float(np.nanmax(a[after])) if after.any()
                            and not np.isnan(a[after]).all() else math.nan,
                            curvature_epoch=c.get("epoch"), lambda_max=c.get("lambda_max"),
                            lambda_min=c.get("lambda_min"), lambda_grad=c.get("lambda_grad"),
                            converged=c.get("converged")))
    rate = _clock_rate(o.beta2)
    clock, clock_eps = [], []
    for k in range(len(onsets) - 1):
        a_after, a_next = onsets[k].adam_scale_after, onsets[k + 1].adam_scale
        ok = o.name != "sgd" and a_after > 0 and a_next > 0
        clock.append(float(np.log(a_after / a_next) / rate) if ok else None)
        clock_eps.append(float(np.log(a_after / o.eps) / rate) if ok else None)
    return RunRecord(
        label=label, variant=variant, seed=config.seed, optimizer=o.name, lr=o.lr,
        weight_decay=o.weight_decay, beta2=o.beta2, eps=o.eps, dtype=config.model.dtype,
        loss=config.model.loss, threshold=stability_threshold(config),
        epochs_done=int(epochs_done), status=status,
        first_95=int(e[above[0]]) if len(above) else None, collapses=len(events),
        intervals=[float(x) for x in np.diff([ev.epoch for ev in events])],
        period_mean=stats.period_mean, onsets=onsets, clock=clock, clock_eps=clock_eps)


# -- the curvature at an onset ------------------------------------------------------------


def onset_curvature(run: Any, epoch: int, *, steps: int = 60, tol: float = 1e-3,
                    dtype: str = "float64") -> dict[str, Any]:
    """λ_max, λ_min of P⁻¹H and λ_grad at `epoch` of an open run (`store.Run`), replayed
    from the keyframe at
    or before it with the thread count the run was trained with (bitwise, for a run
    trained on this device), then measured in `dtype`.

    P = the optimizer's denominator (`optim.denominator`) from the replayed state, H the
    Hessian of the weighted train loss in force there; the extremes of the symmetric
    D^{-1/2} H D^{-1/2} from one Krylov space of `steps` HVPs (`hessian.lanczos_extremes`,
    converged where every residual ≤ tol·max|θ|).
    """
    import torch

    from .hessian import gradient, lanczos_extremes, make_hvp, preconditioned_hvp, \
        step_curvature, weighted_loss_fn
    from ..core.model import DTYPES
    from ..core.optim import denominator
    from ..core.train import Trainer

    cfg, threads = run.config, int(run.attrs["threads"])
    starts = run.keyframe_epochs[run.keyframe_epochs <= epoch]
    if not len(starts):
        raise ValueError(f"{run.path}: no keyframe at or before epoch {epoch}")
    snap = run.snapshot_at(int(starts[-1]))
    with torch_threads(threads):
        trainer = Trainer(cfg.replace(**DETECTOR_OFF), snap)
        trainer.advance_to(epoch)
    st = trainer.step
    dt = DTYPES[dtype]
    a, b, _ = trainer.split.tokens(trainer.split.train_idx)
    a_t, b_t = torch.as_tensor(a), torch.as_tensor(b)
    loss_fn = weighted_loss_fn(st.p, a_t, b_t, (a_t + b_t) % st.p,
                               trainer.phase_weights[trainer.phase], like=st.shapes,
                               loss=st.loss)
    theta = st.theta.detach().to(dt)
    d = denominator(st.exp_avg_sq.to(dt), None if st.max_exp_avg_sq is None
                    else st.max_exp_avg_sq.to(dt), st.t, st.optim)
    hvp = make_hvp(loss_fn, theta)
    res = lanczos_extremes(preconditioned_hvp(hvp, d), theta.numel(), steps=steps, tol=tol)
    lam_grad = step_curvature(hvp, gradient(loss_fn, theta), d)
    return {"epoch": int(epoch), "lambda_max": float(res.eigenvalues[0]),
            "lambda_min": float(res.eigenvalues[-1]), "lambda_grad": lam_grad,
            "converged": bool(res.converged), "n_hvp": int(res.n_hvp)}


def mechanism_record(path: str | Path, *, variant: str = "", curvature: bool = True,
                     threshold: float = 100.0,
                     progress: Callable[[int, int], None] | None = None) -> RunRecord:
    """The `RunRecord` of a run file, its onset curvatures computed (or read back from
    ``analysis/mechanism``, where they are stored as they are computed)."""
    from ..store.reader import open_run
    from ..store.writer import AnalysisWriter

    path = Path(path)
    with open_run(path) as run:
        cfg, status = run.config, str(run.attrs["status"])
        done = int(run.attrs["epochs_done"])
        dense = run.dense_metrics()
        stored = run.analysis("mechanism")
    rec = run_record(cfg, dense, label=path.stem, variant=variant, epochs_done=done,
                     status=status, threshold=threshold)
    if not curvature or not rec.onsets:
        return rec
    have: dict[int, dict[str, Any]] = {}
    if stored is not None and stored["attrs"].get("settings") == _SETTINGS:
        for i, e in enumerate(stored.get("collapse_epoch", [])):
            have[int(e)] = {k: (bool(stored[k][i]) if k == "converged" else
                                int(stored[k][i]) if k == "epoch" else float(stored[k][i]))
                            for k in ("epoch", "lambda_max", "lambda_min", "lambda_grad",
                                      "converged")}
    todo = [o.epoch for o in rec.onsets if o.epoch not in have]
    if todo:
        with AnalysisWriter(path, "mechanism") as writer:  # each onset commits as it is done
            if writer.settings != _SETTINGS:
                writer.reset(_SETTINGS)
                have = {}
                todo = [o.epoch for o in rec.onsets]
            reader = writer.reader()
            for i, e in enumerate(todo):
                c = onset_curvature(reader, max(0, e - ONSET_BEFORE))
                writer.append({"collapse_epoch": e, "epoch": c["epoch"],
                               "lambda_max": c["lambda_max"], "lambda_min": c["lambda_min"],
                               "lambda_grad": c["lambda_grad"],
                               "converged": int(c["converged"])})
                writer.commit()
                have[e] = c
                if progress is not None:
                    progress(i + 1, len(todo))
    return run_record(cfg, dense, label=path.stem, variant=variant, epochs_done=done,
                      status=status, threshold=threshold, curvature=have)


_SETTINGS = {"before": ONSET_BEFORE, "steps": 60, "tol": 1e-3, "dtype": "float64", "version": 2}


# -- the verdicts --------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One prediction of a mechanism, checked: what it says, what was measured, whether
    it held, and the numbers it rests on."""

    mechanism: str
    claim: str
    held: bool | None  # None: nothing to test it on
    detail: str
    median_error: float | None = None  # median relative error of a period law
    n: int = 0  # how many runs or intervals it rests on
    broke: list[str] = field(default_factory=list)  # the controls that broke it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Verdict:
    mechanism: str
    predictions: list[Prediction]

    @property
    def summary(self) -> str:
        tested = [p for p in self.predictions if p.held is not None]
        held = sum(p.held for p in tested)
        if not tested:
            return "untested"
        return "held" if held == len(tested) else "failed" if held == 0 else \
            f"{held} of {len(tested)} predictions held"

    def to_dict(self) -> dict[str, Any]:
        return {"mechanism": self.mechanism, "summary": self.summary,
                "predictions": [p.to_dict() for p in self.predictions]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        """The inverse of `to_dict` (its summary is recomputed, not read)."""
        return cls(mechanism=d["mechanism"],
                   predictions=[Prediction(**p) for p in d["predictions"]])


def _median_rel(pairs: list[tuple[float, float, str]]) -> tuple[float | None, list[str]]:
    """Median |measured − predicted| / predicted over (measured, predicted, label), and
    the labels whose error exceeds TOLERANCE."""
    errs = [(abs(m - p) / p, lab) for m, p, lab in pairs if p is not None and p > 0]
    if not errs:
        return None, []
    return float(np.median([x for x, _ in errs])), sorted({lab for x, lab in errs
                                                           if x > TOLERANCE})


def period_predictions(records: list[RunRecord], baseline: str) -> dict[str, list[tuple]]:
    """(measured, predicted, variant) per law: "saddle" per run (mean period; not for a
    control of another loss, whose landscape is another), "clock" and "clock_eps" per
    interval; runs with fewer than two collapses have no period."""
    base = {r.seed: r for r in records if r.variant == baseline}
    out: dict[str, list[tuple]] = {"saddle": [], "clock": [], "clock_eps": []}
    for r in records:
        b = base.get(r.seed)
        if r.period_mean is not None and r.variant != baseline and b is not None \
                and b.period_mean is not None and r.loss == b.loss:  # the same landscape
            out["saddle"].append((r.period_mean, b.period_mean * b.lam / r.lam, r.variant))
        for obs, pred, pe in zip(r.intervals, r.clock, r.clock_eps):
            if pred is not None:
                out["clock"].append((obs, pred, r.variant))
                out["clock_eps"].append((obs, pe, r.variant))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _reached(r: RunRecord) -> bool:
    """Whether the run reached the solution (REACHED test accuracy) at all."""
    return r.first_95 is not None


def _never(runs: Any) -> str:
    """"; not counted: ... never reached 95% test" for the runs among `runs` that did not."""
    names = sorted({r.variant for r in runs if not _reached(r) and r.collapses == 0})
    return (f"; not counted, as they never reached {_pct(REACHED)} test: {', '.join(names)}"
            if names else "")


def verdicts(records: list[RunRecord], *, baseline: str = "baseline") -> list[Verdict]:
    """Each mechanism's predictions checked against the runs (thresholds: TOLERANCE for a
    period law, NEAR_EPS for "near ε", EOS_BAND for "at the threshold")."""
    laws = period_predictions(records, baseline)
    base = [r for r in records if r.variant == baseline]
    controls = [r for r in records if r.variant != baseline]
    return [Verdict("saddle", _saddle_predictions(laws, base, controls)),
            Verdict("Adam's clock", _clock_predictions(laws, records)),
            Verdict("numerics", _numerics_predictions(base, controls)),
            Verdict("edge of stability", _eos_predictions(records))]


def _collapses(base: list[RunRecord]) -> bool:
    return bool(base) and all(r.collapses >= 1 for r in base)


def _saddle_predictions(laws: dict[str, list], base: list[RunRecord],
                        controls: list[RunRecord]) -> list[Prediction]:
    err, broke = _median_rel(laws["saddle"])
    preds = [Prediction(
        "saddle", "the period is the baseline's × λ_baseline/λ, whatever the optimizer, ε or β2",
        None if err is None else err <= TOLERANCE,
        "no control had two collapses and a baseline period" if err is None else
        f"median error {_pct(err)} over {len(laws['saddle'])} runs"
        + (f"; beyond {_pct(TOLERANCE)}: {', '.join(broke)}" if broke else ""),
        err, len(laws["saddle"]), broke)]
    # a run that never reached the solution has nothing to fall from: it counts neither way
    gone = sorted({r.variant for r in controls if r.collapses == 0 and r.loss == "softmax"
                   and _reached(r)})
    same_loss = sorted({r.variant for r in controls if r.loss == "softmax"
                        and (r.collapses > 0 or _reached(r))})
    never = _never(r for r in controls if r.loss == "softmax")
    preds.append(Prediction(
        "saddle", "collapses persist under every control that keeps the loss",
        None if not (same_loss and _collapses(base)) else not gone,
        f"{len(same_loss) - len(gone)} of {len(same_loss)} such controls collapse"
        + (f"; none in {', '.join(gone)}" if gone else "") + never,
        None, len(same_loss), gone))
    return preds


def _clock_predictions(laws: dict[str, list], records: list[RunRecord]) -> list[Prediction]:
    preds = []
    for key, claim in (("clock", "√v̂ decays freely between collapses: interval = "
                                 "ln(√v̂ after / √v̂ at the next onset) / ((1 − β2)/2)"),
                       ("clock_eps", "ε sets the onset: interval = ln(√v̂ after / ε) / "
                                     "((1 − β2)/2)")):
        err, broke = _median_rel(laws[key])
        preds.append(Prediction(
            "Adam's clock", claim, None if err is None else err <= TOLERANCE,
            "no run had two collapses" if err is None else
            f"median error {_pct(err)} over {len(laws[key])} intervals"
            + (f"; beyond {_pct(TOLERANCE)} in {', '.join(broke)}" if broke else ""),
            err, len(laws[key]), broke))
    # √v̂ at onset in two statistics: √(mean v̂), which its largest coordinates set, and
    # the median coordinate's √v̂
    for what, attr in (("√mean v̂", "adam_scale"), ("the median √v̂", "sqrt_v_median")):
        ratios = [getattr(o, attr) / r.eps for r in records
                  if r.optimizer in ("adamw", "amsgrad") for o in r.onsets
                  if getattr(o, attr) > 0]  # (NaN is not > 0)
        if ratios:
            lo, med, hi = np.min(ratios), np.median(ratios), np.max(ratios)
            preds.append(Prediction(
                "Adam's clock", f"collapses start with {what} near ε (within {NEAR_EPS:g}×)",
                bool(1 / NEAR_EPS <= med <= NEAR_EPS),
                f"{what} at onset / ε: median {med:.3g} (range {lo:.3g}–{hi:.3g}) over "
                f"{len(ratios)} collapses", None, len(ratios)))
    every_sgd = [r for r in records if r.optimizer == "sgd"]
    sgd = [r for r in every_sgd if r.collapses > 0 or _reached(r)]
    if every_sgd:
        fell = [r for r in sgd if r.collapses > 0]
        preds.append(Prediction(
            "Adam's clock", "SGD, with no second moment, does not collapse",
            not fell if sgd else None,
            f"{sum(r.collapses for r in sgd)} collapses in {len(sgd)} SGD runs that reached "
            f"{_pct(REACHED)} test" + _never(every_sgd), None, len(sgd),
            sorted({r.variant for r in fell})))
    return preds


def _numerics_predictions(base: list[RunRecord],
                          controls: list[RunRecord]) -> list[Prediction]:
    preds = []
    for what, sel in (("float64", lambda r: r.dtype == "float64"),
                      ("StableMax", lambda r: r.loss == "stablemax")):
        every = [r for r in controls if sel(r)]
        runs = [r for r in every if r.collapses > 0 or _reached(r)]
        if every and _collapses(base):
            n = sum(r.collapses for r in runs)
            preds.append(Prediction("numerics", f"no collapses in {what}",
                                    n == 0 if runs else None,
                                    f"{n} collapses in {len(runs)} {what} runs that reached "
                                    f"{_pct(REACHED)} test (baseline: "
                                    f"{sum(r.collapses for r in base)} in {len(base)})"
                                    + _never(every), None, len(runs),
                                    sorted({r.variant for r in runs if r.collapses})))
    return preds


def _eos_predictions(records: list[RunRecord]) -> list[Prediction]:
    ratios = [(o.lambda_max / r.threshold, r.variant) for r in records for o in r.onsets
              if o.lambda_max is not None and np.isfinite(o.lambda_max)]
    if not ratios:
        return []
    vals = np.array([x for x, _ in ratios])
    med = float(np.median(vals))
    return [Prediction(
        "edge of stability", "λ_max(P⁻¹H) at onset ≈ the threshold (38/lr for Adam)",
        bool(EOS_BAND[0] <= med <= EOS_BAND[1]),
        f"λ_max(P⁻¹H) / threshold at onset: median {med:.3g} (range {vals.min():.3g}–"
        f"{vals.max():.3g}) over {len(vals)} collapses", None, len(vals))]


def seed_agreement(records: list[RunRecord]) -> dict[str, tuple[int, int]]:
    """Per control (variant) with runs of more than one seed: (runs that collapsed, runs
    that tested it), where a run tests it if it collapsed or reached the solution (a run
    that did neither has nothing to fall from). Whether a control collapses can depend on
    the seed; this says where it did."""
    out: dict[str, tuple[int, int]] = {}
    for v in dict.fromkeys(r.variant for r in records):
        tested = [r for r in records if r.variant == v and (r.collapses > 0 or _reached(r))]
        if len({r.seed for r in tested}) > 1:
            out[v] = (sum(r.collapses > 0 for r in tested), len(tested))
    return out


def onset_summary(records: list[RunRecord]) -> dict[str, Any]:
    """The curvature at onset against the three thresholds, over every measured onset:
    λ_max(P⁻¹H)/threshold, λ_min(P⁻¹H)/(−2·wd) and λ_grad/(2/lr), each (median, min, max, n)."""
    cols: dict[str, list[float]] = {"lambda_max/threshold": [], "lambda_min/(-2wd)": [],
                                    "lambda_grad/(2/lr)": []}
    for r in records:
        for o in r.onsets:
            if o.lambda_max is not None:
                cols["lambda_max/threshold"].append(o.lambda_max / r.threshold)
                cols["lambda_min/(-2wd)"].append(o.lambda_min / (-2 * r.weight_decay))
                if o.lambda_grad is not None and np.isfinite(o.lambda_grad):
                    cols["lambda_grad/(2/lr)"].append(o.lambda_grad * r.lr / 2)
    return {k: None if not v else {"median": float(np.median(v)), "min": float(np.min(v)),
                                   "max": float(np.max(v)), "n": len(v)}
            for k, v in cols.items()}


__all__ = ["Onset", "RunRecord", "Prediction", "Verdict", "run_record", "onset_curvature",
           "mechanism_record", "verdicts", "period_predictions", "onset_summary",
           "seed_agreement", "stability_threshold"]
