"""The optimizers on flat buffers: one update of θ from its gradient, in place.

Every optimizer decays decoupled, θ ← θ(1 − lr·wd) − lr·u, so λ = lr·wd is the same decay
rate per epoch whichever optimizer takes the step; they differ in the step u:

- ``adamw``: u = m̂ / (√v̂ + ε), torch's fused kernel (the one torch.optim.AdamW(fused=True)
  runs), m ← β1 m + (1 − β1) g, v ← β2 v + (1 − β2) g², m̂ = m/(1 − β1^t), v̂ = v/(1 − β2^t).
- ``amsgrad``: v̂ replaced by its running maximum, so the denominator never decreases
  (torch.optim.AdamW(amsgrad=True)).
- ``adam_atan2``: u = atan2(m̂, √v̂), bounded by π/2 and free of ε (Everett et al. 2024,
  "Scaling exponents across parameterizations and optimizers", arXiv 2407.05872, with
  their constants a = b = 1).
- ``sqrt_v_floor`` f > 0 (adamw, amsgrad): u = m̂ / (max(√v̂, f) + ε).
- ``update_clip`` (adamw, amsgrad): StableAdamW (Wortsman et al. 2023, "Stable and
  low-precision training for large-scale vision-language models", arXiv 2304.13013):
  per tensor, lr_t = lr / max(1, RMS_t) with RMS_t = √mean(g² / max(v̂, ε²)), and that
  lr_t both decays and steps the tensor.
- ``no_decay`` (any optimizer): the layers it names take the same step with wd = 0.
- ``sgd``: b ← μ b + g (b = g at the first step), u = b, or g + μ b with Nesterov: the
  update of torch.optim.SGD (dampening 0), with decoupled decay in place of its coupled one.

State: ``exp_avg`` is Adam's m or SGD's momentum buffer b; ``exp_avg_sq`` is v (zero for
SGD); ``max_exp_avg_sq`` is AMSGrad's running maximum (None for the others).

    >>> update([theta], [grad], [m], [v], [None], [OptimConfig()], [t], shapes)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .config import OptimConfig
from .flat import unflatten

# the fields that make two members' updates the same computation
SETTINGS = ("name", "lr", "weight_decay", "no_decay", "beta1", "beta2", "eps", "momentum",
            "nesterov", "sqrt_v_floor", "update_clip", "flush_subnormals")


def has_second_moment(name: str) -> bool:
    """Whether optimizer `name` keeps Adam's v (all but sgd)."""
    return name != "sgd"


def needs_max_moment(name: str) -> bool:
    """Whether optimizer `name` keeps a running maximum of v (amsgrad)."""
    return name == "amsgrad"


def _fused(o: OptimConfig) -> bool:
    """Whether torch's fused AdamW kernel computes this update."""
    return o.name in ("adamw", "amsgrad") and o.sqrt_v_floor == 0 and not o.update_clip


def _views(flat: Tensor, shapes: Mapping[str, tuple[int, ...]]) -> list[Tensor]:
    """The parameter tensors of a flat buffer, in layout order (views)."""
    return list(unflatten(flat, shapes).values())


@torch.no_grad()
def _adam(theta: Tensor, grad: Tensor, m: Tensor, v: Tensor, vmax: Tensor | None,
          o: OptimConfig, t: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """adamw / amsgrad with a √v̂ floor or update clipping, and adam_atan2: vector ops."""
    bc1, bc2 = 1.0 - o.beta1 ** t, 1.0 - o.beta2 ** t
    m.lerp_(grad, 1.0 - o.beta1)
    v.mul_(o.beta2).addcmul_(grad, grad, value=1.0 - o.beta2)
    if vmax is not None:
        torch.maximum(vmax, v, out=vmax)
    second = v if vmax is None else vmax
    sqrt_v = second.sqrt().div_(math.sqrt(bc2))  # √v̂
    if o.name == "adam_atan2":
        theta.mul_(1.0 - o.lr * o.weight_decay)
        theta.add_(torch.atan2(m / bc1, sqrt_v), alpha=-o.lr)
        return
    denom = (sqrt_v.clamp_min(o.sqrt_v_floor) if o.sqrt_v_floor > 0 else sqrt_v).add_(o.eps)
    if not o.update_clip:
        theta.mul_(1.0 - o.lr * o.weight_decay)
        theta.addcdiv_(m, denom, value=-o.lr / bc1)
        return
    v_hat = second / bc2
    for th, g, mm, d, vh in zip(*(_views(x, shapes) for x in (theta, grad, m, denom, v_hat))):
        rms = float((g * g / vh.clamp_min(o.eps ** 2)).mean().sqrt())
        lr = o.lr / max(1.0, rms)
        th.mul_(1.0 - lr * o.weight_decay)
        th.addcdiv_(mm, d, value=-lr / bc1)


@torch.no_grad()
def _sgd(theta: Tensor, grad: Tensor, buf: Tensor, o: OptimConfig) -> None:
    mu = o.momentum_or_zero
    theta.mul_(1.0 - o.lr * o.weight_decay)
    if mu == 0:
        theta.add_(grad, alpha=-o.lr)
        return
    buf.mul_(mu).add_(grad)
    theta.add_(grad.add(buf, alpha=mu) if o.nesterov else buf, alpha=-o.lr)


@torch.no_grad()
def update(thetas: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
           exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor | None],
           optims: list[OptimConfig], steps: list[int],
           shapes: Mapping[str, tuple[int, ...]]) -> None:
    """One update of each member k: its flat buffers (N,) in place, with optimizer
    settings optims[k] at step count steps[k] (already incremented, t >= 1).

    Members that share settings and step count are one group, so torch's fused AdamW
    kernel takes them as one list; every member is updated as a tensor of its own, so its
    update is bitwise the one its solo run makes. `shapes` names the parameter tensors
    in the flat layout (update clipping is per tensor).
    """
    groups: dict[tuple, list[int]] = {}
    for k, (o, t) in enumerate(zip(optims, steps)):
        groups.setdefault((*(getattr(o, f) for f in SETTINGS), t), []).append(k)
    buffers = (thetas, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs)
    for members in groups.values():
        t = steps[members[0]]
        for part, o, part_shapes in decay_segments(optims[members[0]], shapes):
            whole = part == slice(None)
            _update_group(*([b[k] if b[k] is None or whole else b[k][part] for k in members]
                            for b in buffers), o, t, part_shapes)
        if optims[members[0]].flush_subnormals:
            for k in members:
                for b in (thetas, exp_avgs, exp_avg_sqs, max_exp_avg_sqs):
                    if b[k] is not None:
                        flush_subnormals(b[k])


def flush_subnormals(x: Tensor) -> None:
    """Set the entries of `x` smaller in magnitude than its dtype's smallest normal number
    to zero, in place (subnormals, and zeros, which stay zero)."""
    x.masked_fill_(x.abs() < torch.finfo(x.dtype).tiny, 0)


def decay_segments(o: OptimConfig, shapes: Mapping[str, tuple[int, ...]]
                   ) -> list[tuple[slice, OptimConfig, Mapping[str, tuple[int, ...]]]]:
    """The flat layout as runs of parameters that share a weight decay: (slice, the
    settings of the run, its tensors' shapes); one run of everything unless `o.no_decay`
    names layers, whose runs get weight_decay 0."""
    if not o.no_decay:
        return [(slice(None), o, shapes)]
    runs: list[list[Any]] = []  # [start, stop, weight decay, shapes]
    start = 0
    for name, shape in shapes.items():
        stop = start + math.prod(shape)
        wd = 0.0 if name.rsplit(".", 1)[0] in o.no_decay else o.weight_decay
        if runs and runs[-1][2] == wd:
            runs[-1][1] = stop
            runs[-1][3][name] = shape
        else:
            runs.append([start, stop, wd, {name: shape}])
        start = stop
    return [(slice(a, b), dataclasses.replace(o, weight_decay=wd, no_decay=()), sh)
            for a, b, wd, sh in runs]


def _update_group(thetas: list[Tensor], grads: list[Tensor], exp_avgs: list[Tensor],
                  exp_avg_sqs: list[Tensor], max_exp_avg_sqs: list[Tensor | None],
                  o: OptimConfig, t: int, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """One update of members that share settings `o` and step count `t`."""
    if _fused(o):
        step = torch.full((), float(t), dtype=torch.float32, device=thetas[0].device)
        ams = o.name == "amsgrad"
        torch._fused_adamw_(thetas, grads, exp_avgs, exp_avg_sqs,
                            max_exp_avg_sqs if ams else [], [step] * len(thetas), lr=o.lr,
                            beta1=o.beta1, beta2=o.beta2, weight_decay=o.weight_decay,
                            eps=o.eps, amsgrad=ams, maximize=False)
        return
    for k in range(len(thetas)):
        if o.name == "sgd":
            _sgd(thetas[k], grads[k], exp_avgs[k], o)
        else:
            _adam(thetas[k], grads[k], exp_avgs[k], exp_avg_sqs[k], max_exp_avg_sqs[k],
                  o, t, shapes)


@torch.no_grad()
def update_direction(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
                     max_exp_avg_sq: Tensor | None, step: int, o: OptimConfig,
                     shapes: Mapping[str, tuple[int, ...]]) -> Tensor:
    """u (N,) such that the next update from this state is θ ← θ(1 − lr·wd) − lr·u.

    Computed on copies in float64; with update clipping u carries the clipped lr of each
    tensor, lr_t/lr, and the decay is taken as the nominal lr·wd.
    """
    g = grad.double()
    t = step + 1
    if o.name == "sgd":
        mu = o.momentum_or_zero
        if mu == 0:
            return g
        buf = exp_avg.double() * mu + g
        return g + mu * buf if o.nesterov else buf
    m = exp_avg.double() * o.beta1 + g * (1 - o.beta1)
    v = exp_avg_sq.double() * o.beta2 + g * g * (1 - o.beta2)
    if max_exp_avg_sq is not None and o.name == "amsgrad":
        v = torch.maximum(max_exp_avg_sq.double(), v)
    m_hat, v_hat = m / (1 - o.beta1 ** t), v / (1 - o.beta2 ** t)
    if o.name == "adam_atan2":
        return torch.atan2(m_hat, v_hat.sqrt())
    u = m_hat / (v_hat.sqrt().clamp_min(o.sqrt_v_floor) + o.eps)
    if o.update_clip:
        for uu, gg, vv in zip(*(_views(x, shapes) for x in (u, g, v_hat))):
            uu.div_(max(1.0, float((gg * gg / vv.clamp_min(o.eps ** 2)).mean().sqrt())))
    return u


def denominator(exp_avg_sq: Tensor, max_exp_avg_sq: Tensor | None, step: int,
                o: OptimConfig) -> Tensor:
    """The optimizer's diagonal preconditioner D (N,), u ≈ m̂ / D: √v̂ + ε (with its floor;
    AMSGrad's maximum), √v̂ for adam_atan2 (its small-step limit), ones for sgd."""
    if o.name == "sgd":
        return torch.ones_like(exp_avg_sq)
    v = max_exp_avg_sq if (o.name == "amsgrad" and max_exp_avg_sq is not None) else exp_avg_sq
    sqrt_v = v.sqrt() / math.sqrt(1.0 - o.beta2 ** step)
    if o.name == "adam_atan2":
        return sqrt_v
    return sqrt_v.clamp_min(o.sqrt_v_floor) + o.eps


__all__ = ["update", "update_direction", "decay_segments", "denominator", "has_second_moment",
           "needs_max_moment", "flush_subnormals", "SETTINGS"]
