"""The Zipf-weighted loss as a function of the flat parameter vector θ, and its derivatives.

θ (n,) is the named parameters concatenated in dict order (``flatten_params``); an
*operator* is a function v ↦ A v on flat vectors. These are the primitives the training
loop (`Trainer.lambda_grad`) and the curvature analyses (`zgdyn.analysis.hessian`) share.

    >>> like = dict(model.named_parameters())
    >>> theta = flatten_params(like).detach()
    >>> loss = weighted_loss_fn(p, a, b, y, zipf_weights(split, 1.5), like=like)
    >>> hvp = make_hvp(loss, theta)                          # v ↦ H v, forward-over-reverse
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from .model import functional_logits, log_probs

Operator = Callable[[Tensor], Tensor]
LossFn = Callable[[Tensor], Tensor]
Like = Mapping[str, "Tensor | tuple[int, ...]"]


# -- flat view ------------------------------------------------------------------------------


def flatten_params(params: Mapping[str, Tensor], *,
                   order: Iterable[str] | None = None) -> Tensor:
    """θ = concat_k vec(params[k]) (n,), over the keys of `order` (default: the dict's order)."""
    names = list(params) if order is None else list(order)
    return torch.cat([params[k].reshape(-1) for k in names])


def _shape(t: Tensor | tuple[int, ...]) -> tuple[int, ...]:
    return tuple(t.shape) if isinstance(t, Tensor) else tuple(t)


def unflatten(vec: Tensor, like: Like) -> dict[str, Tensor]:
    """{k: view of vec (n,) shaped like like[k]}, in like's order; like holds tensors or shapes."""
    shapes = {k: _shape(t) for k, t in like.items()}
    total = sum(math.prod(s) for s in shapes.values())
    if total != vec.numel():
        raise ValueError(f"unflatten: vector has {vec.numel()} entries, `like` holds {total}")
    out: dict[str, Tensor] = {}
    i = 0
    for k, shape in shapes.items():
        size = math.prod(shape)
        out[k] = vec[i:i + size].reshape(shape)
        i += size
    return out


# -- loss, gradient, Hessian-vector products --------------------------------------------------


def _as_tensor(x: Tensor | np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x, dtype=dtype)


def weighted_loss_fn(p: int, a: Tensor | np.ndarray, b: Tensor | np.ndarray,
                     y: Tensor | np.ndarray, w: Tensor | np.ndarray, *, like: Like,
                     coupled_wd: float = 0.0, loss: str = "softmax") -> LossFn:
    """θ ↦ L_s(θ) = Σ_i w_i CE(f_θ(a_i, b_i), y_i) + (coupled_wd / 2) ‖θ‖².

    a, b, y: (m,) int pairs and labels; w: (m,) weights, e.g. ``zipf_weights(split, s)`` for
    any exponent s (used as given, not renormalized); like: the named parameters (or shapes)
    that fix the layout of θ (n,). With coupled_wd = λ the Hessian gains exactly λ·I (the
    "coupled" view of weight decay); loss: the normalizer, softmax or stablemax
    (`model.log_probs`). The returned function is torch.func-friendly.
    """
    a_t, b_t, y_t = (_as_tensor(t, torch.int64) for t in (a, b, y))
    w_t = _as_tensor(w)
    like = dict(like)

    def loss_fn(theta: Tensor) -> Tensor:
        dev = theta.device
        logits = functional_logits(unflatten(theta, like), a_t.to(dev), b_t.to(dev), p=p)
        if loss == "softmax":
            ce = nn.functional.cross_entropy(logits, y_t.to(dev), reduction="none")  # (m,)
        else:
            ce = -log_probs(logits, loss).gather(1, y_t.to(dev)[:, None]).squeeze(1)
        total = (ce * w_t.to(dev, theta.dtype)).sum()
        if coupled_wd:
            total = total + 0.5 * coupled_wd * torch.dot(theta, theta)
        return total

    return loss_fn


def gradient(loss_fn: LossFn, theta: Tensor) -> Tensor:
    """∇L(θ) (n,) by reverse mode, in θ's dtype."""
    return torch.func.grad(loss_fn)(theta.detach())


def make_hvp(loss_fn: LossFn, theta: Tensor) -> Operator:
    """The operator v ↦ H v = ∂/∂ε ∇L(θ + ε v)|₀ (forward-over-reverse), θ (n,), v (n,).

    Computed in θ's dtype (float32 or float64) on θ's device; each call is one HVP, a few
    gradient evaluations in cost.
    """
    theta = theta.detach()
    grad_fn = torch.func.grad(loss_fn)

    def hvp(v: Tensor) -> Tensor:
        # a fresh (aligned) copy: the GEMMs' rounding depends on where a buffer starts, so
        # a view into numpy's memory would make the result depend on the heap's state
        return torch.func.jvp(grad_fn, (theta,), (v.to(theta, copy=True),))[1]

    return hvp


def step_curvature(hvp: Operator, g: Tensor, d: Tensor) -> float:
    """λ_grad = gᵀP⁻¹HP⁻¹g / gᵀP⁻¹g with P = diag(d): the curvature along the step P⁻¹g,
    in P's metric (dot products in float64); NaN where gᵀP⁻¹g ≤ 0."""
    u = g / d
    gu = float(torch.dot(g.double(), u.double()))
    if gu <= 0:
        return math.nan
    return float(torch.dot(u.double(), hvp(u).double())) / gu


__all__ = ["Like", "LossFn", "Operator", "flatten_params", "gradient", "make_hvp",
           "step_curvature", "unflatten", "weighted_loss_fn"]
