"""The fused full-batch training step: weighted cross-entropy, a hand-written backward and
AdamW, all on flat parameter buffers.

The loss is L = Σ_i w_i CE(logits_i, y_i) with Σ w = 1. The backward is the textbook one
(dz = w ⊙ (softmax(z) − onehot(y)), then layer by layer); the first layer's weight
gradient is a scatter-add over the two token columns. On a CPU in float32 the GEMMs go
through oneDNN's linear, about 2x MKL's on these thin shapes; elsewhere through addmm.
Parameters, gradients and both Adam moments are each one contiguous buffer, so AdamW is a
handful of vector ops. Validated against autograd and torch.optim.AdamW in the tests.

    >>> step = FusedStep(97, (128, 128), a, b, optim=OptimConfig())
    >>> step.load_params(named_params); step.set_weights(w)
    >>> loss = step.step()                      # one epoch
"""

from __future__ import annotations

import ctypes
import math
from typing import Callable

import torch
from torch import Tensor

from .config import OptimConfig
from .model import DTYPES, layer_names, param_shapes


def keep_heap_mapped() -> bool:
    """Stop glibc from returning freed heap to the OS after each large free (Linux only).

    Each step allocates and frees ~1 MB activations; with glibc's default thresholds the
    memory is unmapped and faulted back in every step, which costs about a third of the
    step time at p = 97. Process-wide and harmless; returns whether it took effect.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_mmap_threshold, 64 << 20)
                    and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


def _mkldnn_linear_available() -> bool:
    try:
        return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                "_linear_pointwise")
    except (AttributeError, RuntimeError):
        return False


def dense_layers(h: Tensor, params: dict[str, Tensor], layers: list[str],
                 linear: Callable[[Tensor, Tensor, Tensor | None, bool], Tensor]) -> list[Tensor]:
    """Activations [h, ..., logits]: `h` through every layer after the first, each
    linear(x, weight, bias, relu) with relu on all but "out" (solo or batched alike)."""
    acts = [h]
    for name in layers[1:]:
        h = linear(h, params[f"{name}.weight"], params[f"{name}.bias"], name != "out")
        acts.append(h)
    return acts


Hyper = float | list[float]  # a number, or one number per member of an ensemble


@torch.no_grad()
def adamw_update(theta: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *,
                 lr: Hyper, weight_decay: Hyper, beta1: Hyper, beta2: Hyper, eps: Hyper,
                 t: int | list[int]) -> None:
    """AdamW in place, op for op as torch.optim.AdamW (decoupled decay, bias correction).

    theta <- theta (1 - lr wd) - lr/(1 - b1^t) m / (sqrt(v / (1 - b2^t)) + eps), with
    m <- b1 m + (1 - b1) g and v <- b2 v + (1 - b2) g^2. Buffers (N,) with numbers, or
    (K, N) with numbers or per-member lists. Every constant is computed in Python's double
    precision either way and rounded once to the buffers' dtype, so a member's update is
    bitwise the one its solo run makes.
    """
    hyper = (lr, weight_decay, beta1, beta2, eps, t)
    if not any(isinstance(x, (list, tuple)) for x in hyper):
        theta.mul_(1.0 - lr * weight_decay)
        exp_avg.lerp_(grad, 1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        bias_correction1 = 1.0 - beta1 ** t
        bias_correction2 = 1.0 - beta2 ** t
        denom = (exp_avg_sq.sqrt() / math.sqrt(bias_correction2)).add_(eps)
        theta.addcdiv_(exp_avg, denom, value=-lr / bias_correction1)
        return
    k = theta.shape[0]
    lr, wd, b1, b2, eps, t = ([x] * k if not isinstance(x, (list, tuple)) else x
                              for x in hyper)
    rows = [(1.0 - lr[i] * wd[i], 1.0 - b1[i], b2[i], 1.0 - b2[i],
             math.sqrt(1.0 - b2[i] ** t[i]), eps[i], -lr[i] / (1.0 - b1[i] ** t[i]))
            for i in range(k)]
    c = torch.tensor(rows, dtype=torch.float64).to(theta.device, theta.dtype)  # (K, 7)
    decay, one_b1, beta2_, one_b2, sqrt_bc2, eps_, step = c.split(1, dim=1)  # (K, 1) each
    theta.mul_(decay)
    exp_avg.lerp_(grad, one_b1)
    exp_avg_sq.mul_(beta2_).addcmul_(grad * one_b2, grad)
    denom = (exp_avg_sq.sqrt() / sqrt_bc2).add_(eps_)
    theta.addcdiv_(exp_avg * step, denom)


class FusedStep:
    """Flat-buffer model state and the full-batch AdamW step over pairs (a, b).

    Attributes: theta, grad, exp_avg, exp_avg_sq (N,) flat buffers; `params` and `grads`
    map names to views of theta and grad; `t` is the Adam step count.
    """

    def __init__(self, p: int, hidden: tuple[int, ...], a: Tensor, b: Tensor, *,
                 optim: OptimConfig, dtype: str = "float32", device: str = "cpu",
                 use_onednn: bool | None = None) -> None:
        self.p = p
        self.hidden = tuple(hidden)
        self.optim = optim
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.shapes = param_shapes(p, hidden)
        n = sum(math.prod(s) for s in self.shapes.values())
        kw = {"dtype": self.dtype, "device": self.device}
        self.theta = torch.zeros(n, **kw)
        self.grad = torch.zeros(n, **kw)
        self.exp_avg = torch.zeros(n, **kw)
        self.exp_avg_sq = torch.zeros(n, **kw)
        self.t = 0
        self.hook = None  # a zgdyn.hooks.Hook, set by the Trainer
        self.params = self.views(self.theta)
        self.grads = self.views(self.grad)
        self.layers = layer_names(len(hidden))
        if use_onednn is None:
            use_onednn = (self.device.type == "cpu" and self.dtype == torch.float32
                          and _mkldnn_linear_available())
        self.use_onednn = use_onednn
        if self.device.type == "cpu":
            keep_heap_mapped()
        self.a = a.to(self.device, torch.int64)
        self.pb = (b.to(self.device, torch.int64) + p)
        self.y = (self.a + self.pb - p) % p
        n_pairs = len(self.a)
        self._flat_y = torch.arange(n_pairs, device=self.device) * p + self.y
        self._onehot = None
        if self.device.type != "cpu":  # index_add_ uses atomics on GPUs: use a matmul
            oh = torch.zeros(n_pairs, 2 * p, **kw)
            oh[torch.arange(n_pairs, device=self.device), self.a] = 1
            oh[torch.arange(n_pairs, device=self.device), self.pb] = 1
            self._onehot = oh
        self.w = torch.empty(n_pairs, **kw)  # per-pair loss weights
        self._neg_w = torch.empty(n_pairs, **kw)
        self.set_weights(torch.full((n_pairs,), 1.0 / n_pairs, dtype=torch.float64))

    def views(self, flat: Tensor) -> dict[str, Tensor]:
        """{name: view of flat (N,)} shaped like the parameters (for theta, grad or a moment)."""
        views, offset = {}, 0
        for name, shape in self.shapes.items():
            size = math.prod(shape)
            views[name] = flat[offset:offset + size].view(shape)
            offset += size
        return views

    def set_weights(self, w: Tensor) -> None:
        """Per-pair loss weights (n,), normalized to sum 1 by the caller."""
        self.w.copy_(w)
        torch.neg(self.w, out=self._neg_w)

    @torch.no_grad()
    def bind(self, theta: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
             w: Tensor, neg_w: Tensor) -> None:
        """Move the state into the given (N,) and (n,) buffers, rows of an ensemble's
        (K, N) and (K, n) buffers say; the step then reads and writes them in place."""
        for name, new in (("theta", theta), ("grad", grad), ("exp_avg", exp_avg),
                          ("exp_avg_sq", exp_avg_sq), ("w", w), ("_neg_w", neg_w)):
            new.copy_(getattr(self, name))
            setattr(self, name, new)
        self.params = self.views(self.theta)
        self.grads = self.views(self.grad)

    @torch.no_grad()
    def load_params(self, named: dict[str, Tensor]) -> None:
        for name, view in self.params.items():
            view.copy_(named[name])

    # -- forward / backward ------------------------------------------------------------

    def _linear(self, x: Tensor, w: Tensor, bias: Tensor | None, relu: bool) -> Tensor:
        """x @ w.T + bias, optionally followed by relu."""
        if self.use_onednn:
            return torch.ops.mkldnn._linear_pointwise(x, w, bias, "relu" if relu else "none",
                                                      [], "")
        y = torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())
        return y.relu_() if relu else y

    def forward(self, a: Tensor, pb: Tensor) -> list[Tensor]:
        """Activations [h1, ..., hL, logits] for pairs (a, p + b)."""
        pr = self.params
        w1t = pr["fc1.weight"].t().contiguous()  # (2p, h1)
        h = torch.index_select(w1t, 0, a)
        h.add_(torch.index_select(w1t, 0, pb)).add_(pr["fc1.bias"]).relu_()  # (n, h1)
        return dense_layers(h, pr, self.layers, self._linear)

    @torch.no_grad()
    def loss_and_grad(self) -> Tensor:
        """Weighted CE at theta; fills self.grad. Returns the loss (0-dim tensor)."""
        acts = self.forward(self.a, self.pb)
        logp = torch.log_softmax(acts[-1], dim=1)  # (n, p)
        loss = -torch.dot(self.w, logp.view(-1)[self._flat_y])
        dz = logp.exp_().mul_(self.w[:, None])  # w * softmax
        dz.view(-1).index_add_(0, self._flat_y, self._neg_w)  # - w * onehot(y)
        pr, gr = self.params, self.grads
        for i in range(len(self.layers) - 1, 0, -1):
            name, h_in = self.layers[i], acts[i - 1]
            if self.use_onednn:  # strided operands beat MKL's sgemm here
                gr[f"{name}.weight"].copy_(self._linear(dz.t(), h_in.t(), None, relu=False))
            else:
                torch.mm(dz.t(), h_in, out=gr[f"{name}.weight"])
            torch.sum(dz, 0, out=gr[f"{name}.bias"])
            w = pr[f"{name}.weight"]
            dh = self._linear(dz, w.t().contiguous(), None, relu=False)  # (n, d_in)
            dz = torch.ops.aten.threshold_backward(dh, h_in, 0)
        torch.sum(dz, 0, out=gr["fc1.bias"])
        if self._onehot is None:
            g1t = torch.zeros(2 * self.p, dz.shape[1], dtype=self.dtype, device=self.device)
            g1t.index_add_(0, self.a, dz).index_add_(0, self.pb, dz)  # (2p, h1)
        else:
            g1t = torch.mm(self._onehot.t(), dz)
        gr["fc1.weight"].copy_(g1t.t())
        return loss

    # -- optimizer -----------------------------------------------------------------------

    @torch.no_grad()
    def adamw(self) -> None:
        """One AdamW update from self.grad, op for op as torch.optim.AdamW."""
        o = self.optim
        self.t += 1
        adamw_update(self.theta, self.grad, self.exp_avg, self.exp_avg_sq, lr=o.lr,
                     weight_decay=o.weight_decay, beta1=o.beta1, beta2=o.beta2, eps=o.eps,
                     t=self.t)

    def step(self) -> Tensor:
        """One full-batch epoch: gradient, the hook if any (see `zgdyn.hooks`), then AdamW.
        Returns the loss before the update."""
        loss = self.loss_and_grad()
        if self.hook is None:
            self.adamw()
        else:
            with torch.no_grad():
                self.hook.grad(self)
                if not self.hook.update(self):
                    self.adamw()
        return loss

    @torch.no_grad()
    def logits(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits (n, p) at the current parameters for pairs (a, b)."""
        a = a.to(self.device, torch.int64)
        return self.forward(a, b.to(self.device, torch.int64) + self.p)[-1]
