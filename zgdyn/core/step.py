"""The fused full-batch training step: weighted cross-entropy, a hand-written backward and
AdamW, all on flat parameter buffers.

The loss is L = Σ_i w_i CE(logits_i, y_i) with Σ w = 1. The backward is the textbook one
(dz = w ⊙ (softmax(z) − onehot(y)), then layer by layer), with the dense layers on
columns (see `column_backprop`); the first layer is an embedding-bag sum over the two
token rows and its weight gradient a scatter-add. On a CPU in float32 the GEMMs go
through oneDNN's linear, about 2x MKL's on these thin shapes; elsewhere through mm.
Parameters, gradients and both Adam moments are each one contiguous buffer, so AdamW is
one fused kernel (other optimizers: `zgdyn.core.optim`). Validated against autograd and torch.optim.AdamW in the tests.

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

from .config import OptimConfig, layer_names
from .model import DTYPES, param_shapes
from .optim import needs_max_moment, update
from .runtime import flush_to_zero


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


def column_backprop(h1: Tensor, params: dict[str, Tensor], grads: dict[str, Tensor],
                    layers: list[str], linear: Callable[[Tensor, Tensor, Tensor | None, bool],
                                                        Tensor],
                    w: Tensor, neg_w: Tensor, flat_yt: Tensor,
                    dh1: Tensor, loss: str = "softmax") -> tuple[Tensor, Tensor]:
    """The weighted CE and its gradient through the dense layers, on columns; solo or
    batched alike (a leading member axis everywhere, or none).

    The dense layers' activations are (d, n), one training pair per column. A weight
    gradient contracts over the pairs and a forward or input-gradient GEMM over the
    features; in rows every activation would need a transposed copy for its weight
    gradient, while in columns each GEMM's output is an operand the next one takes as it
    is (x @ w^T with x contiguous, by `linear(x, w, None, False)` as in `dense_layers`).
    Only the first layer's input gradient goes back to rows, into `dh1`, for the
    scatter-add.

    h1: the first layer's output (n, h1) rows; w, neg_w: pair weights and their negation
    (n,); flat_yt: the flat indices of the targets in the logits (p, n); loss: the
    normalizer, softmax or stablemax (see `output_grad`). Fills the dense layers' and
    fc1.bias's gradients; returns the loss and the first layer's output gradient (n, h1).
    """
    def gemm(x: Tensor, w: Tensor) -> Tensor:
        return linear(x, w, None, False)

    ins = [h1.mT]  # each dense layer's input as (d_in, n)
    for name in layers[1:]:
        h = gemm(params[f"{name}.weight"], ins[-1].mT).add_(params[f"{name}.bias"][..., None])
        ins.append(h.relu_() if name != "out" else h)
    z = ins.pop()  # logits (p, n)
    total, dz = output_grad(z, w, neg_w, flat_yt, loss)
    for i in range(len(layers) - 1, 0, -1):
        name, h_in = layers[i], ins[i - 1]
        grads[f"{name}.weight"].copy_(gemm(dz, h_in))
        torch.sum(dz, -1, out=grads[f"{name}.bias"])
        dh = gemm(params[f"{name}.weight"].mT.contiguous(), dz.mT)  # (d_in, n)
        if i > 1:
            dz = torch.ops.aten.threshold_backward(dh, h_in, 0)
    dh1.copy_(dh.mT)
    dz = torch.ops.aten.threshold_backward(dh1, h1, 0)  # (n, h1) rows
    torch.sum(dz, -2, out=grads["fc1.bias"])
    return total, dz


def output_grad(z: Tensor, w: Tensor, neg_w: Tensor, flat_yt: Tensor,
                loss: str) -> tuple[Tensor, Tensor]:
    """The weighted CE of logits z (p, n) on columns, and its gradient dz (p, n).

    softmax: L = −Σ_i w_i log softmax(z_i)_y, dz = w (softmax(z) − onehot(y)).
    stablemax (Prieto et al. 2025): q_j = s(z_j) / Σ_k s(z_k) with s(x) = x + 1 (x ≥ 0),
    1/(1 − x) (x < 0); L = −Σ_i w_i log q_y, dz_j = w (s'(z_j)/Σ s − [j = y] s'(z_y)/s(z_y)),
    where s' = 1 above 0 and s² below, and s'/s = 1/(1 + |x|). A leading member axis
    (K, p, n) works alike.
    """
    if loss == "softmax":
        sm = torch.softmax(z, dim=-2)
        # log p(y) = z_y - logsumexp(z) = z_y - max(z) + log(max softmax); max softmax >= 1/p
        logp_y = z.view(-1)[flat_yt].view(w.shape) - z.amax(-2) + sm.amax(-2).log_()
        dz = sm.mul_(w[..., None, :])  # w * softmax
        dz.view(-1).index_add_(0, flat_yt, neg_w.reshape(-1))  # - w * onehot(y)
        return -(w * logp_y).sum(-1), dz
    pos = z >= 0
    s = torch.where(pos, z + 1, 1 / (1 - z))  # (p, n)
    total = s.sum(-2)  # (n,)
    z_y = z.view(-1)[flat_yt].view(w.shape)
    logp_y = s.view(-1)[flat_yt].view(w.shape).log() - total.log()
    dz = torch.where(pos, torch.ones_like(s), s * s).mul_((w / total)[..., None, :])
    dz.view(-1).index_add_(0, flat_yt, (neg_w / (1 + z_y.abs())).reshape(-1))
    return -(w * logp_y).sum(-1), dz


def param_views(flat: Tensor, shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """{name: view of flat (..., N)} shaped (..., *shape) like the parameters: of theta, a
    gradient or a moment, solo (N,) or an ensemble's (K, N) rows."""
    views, offset = {}, 0
    for name, shape in shapes.items():
        size = math.prod(shape)
        views[name] = flat[..., offset:offset + size].view(*flat.shape[:-1], *shape)
        offset += size
    return views


def padded_rows(shape: tuple[int, ...], **kw) -> Tensor:
    """An empty tensor of `shape` whose rows are a cache line longer than they need be: a
    transposed copy into rows of 2^k floats thrashes the cache's sets, at twice the time."""
    pad = 64 // torch.empty(0, dtype=kw.get("dtype")).element_size()
    return torch.empty(*shape[:-1], shape[-1] + pad, **kw)[..., :shape[-1]]


class FusedStep:
    """Flat-buffer model state and the full-batch AdamW step over pairs (a, b).

    Attributes: theta, grad, exp_avg, exp_avg_sq (N,) flat buffers; `params` and `grads`
    map names to views of theta and grad; `t` is the Adam step count.
    """

    def __init__(self, p: int, hidden: tuple[int, ...], a: Tensor, b: Tensor, *,
                 optim: OptimConfig, dtype: str = "float32", device: str = "cpu",
                 use_onednn: bool | None = None, loss: str = "softmax") -> None:
        self.p = p
        self.hidden = tuple(hidden)
        self.loss = loss
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype]
        self.shapes = param_shapes(p, hidden)
        n = sum(math.prod(s) for s in self.shapes.values())
        kw = {"dtype": self.dtype, "device": self.device}
        self.theta = torch.zeros(n, **kw)
        self.grad = torch.zeros(n, **kw)
        self.exp_avg = torch.zeros(n, **kw)
        self.exp_avg_sq = torch.zeros(n, **kw)
        self.max_exp_avg_sq: Tensor | None = None  # AMSGrad's running maximum of v
        self.t = 0
        self.hook = None  # a zgdyn.core.hooks.Hook, set by the Trainer
        self.set_optim(optim)
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
        self._pairs = torch.stack([self.a, self.pb], 1)  # (n, 2)
        cols = torch.arange(n_pairs, device=self.device)
        self._flat_yt = self.y * n_pairs + cols  # the targets in the logits (p, n)
        self._dh1 = padded_rows((n_pairs, hidden[0]), **kw)
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
        return param_views(flat, self.shapes)

    def set_optim(self, optim: OptimConfig) -> None:
        """Take the optimizer settings `optim` from the next step on (its state as it is)."""
        self.optim = optim
        if needs_max_moment(optim.name) and self.max_exp_avg_sq is None:
            self.max_exp_avg_sq = torch.zeros_like(self.exp_avg_sq)

    @torch.no_grad()
    def reset_optimizer(self) -> None:
        """Zero the optimizer's state and its step count."""
        self.exp_avg.zero_()
        self.exp_avg_sq.zero_()
        if self.max_exp_avg_sq is not None:
            self.max_exp_avg_sq.zero_()
        self.t = 0

    def set_weights(self, w: Tensor) -> None:
        """Per-pair loss weights (n,), normalized to sum 1 by the caller."""
        self.w.copy_(w)
        torch.neg(self.w, out=self._neg_w)

    @torch.no_grad()
    def bind(self, theta: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor,
             w: Tensor, neg_w: Tensor, max_exp_avg_sq: Tensor | None = None) -> None:
        """Move the state into the given (N,) and (n,) buffers, rows of an ensemble's
        (K, N) and (K, n) buffers say; the step then reads and writes them in place."""
        pairs = [("theta", theta), ("grad", grad), ("exp_avg", exp_avg),
                 ("exp_avg_sq", exp_avg_sq), ("w", w), ("_neg_w", neg_w)]
        if self.max_exp_avg_sq is not None and max_exp_avg_sq is not None:
            pairs.append(("max_exp_avg_sq", max_exp_avg_sq))
        for name, new in pairs:
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
        """x @ w.T + bias, optionally followed by relu. x should be contiguous; w may be
        contiguous or the transpose of a contiguous tensor (oneDNN repacks w itself at no
        visible cost, but copies a strided x)."""
        if self.use_onednn:
            return torch.ops.mkldnn._linear_pointwise(x, w, bias, "relu" if relu else "none",
                                                      [], "")
        y = torch.mm(x, w.t()) if bias is None else torch.addmm(bias, x, w.t())
        return y.relu_() if relu else y

    def forward(self, a: Tensor, pb: Tensor) -> list[Tensor]:
        """Activations [h1, ..., hL, logits] for pairs (a, p + b)."""
        return dense_layers(self._first_layer(torch.stack([a, pb], 1)), self.params,
                            self.layers, self._linear)

    def _first_layer(self, pairs: Tensor) -> Tensor:
        """h1 (n, h1) for token pairs (n, 2) = (a, p + b): relu(W1[:, a] + b1 + W1[:, p + b])
        as one embedding-bag sum over the rows of W1^T, with b1 folded into the a rows."""
        rows = self.params["fc1.weight"].t().contiguous()  # (2p, h1)
        rows[:self.p].add_(self.params["fc1.bias"])
        return torch.nn.functional.embedding_bag(pairs, rows, mode="sum").relu_()

    @torch.no_grad()
    def loss_and_grad(self) -> Tensor:
        """Weighted CE at theta; fills self.grad. Returns the loss (0-dim tensor)."""
        h1 = self._first_layer(self._pairs)  # (n, h1)
        loss, dz = column_backprop(h1, self.params, self.grads, self.layers, self._linear,
                                   self.w, self._neg_w, self._flat_yt, self._dh1, self.loss)
        if self._onehot is None:
            g1t = torch.zeros(2 * self.p, dz.shape[1], dtype=self.dtype, device=self.device)
            g1t.index_add_(0, self.a, dz).index_add_(0, self.pb, dz)  # (2p, h1)
        else:
            g1t = torch.mm(self._onehot.t(), dz)
        self.grads["fc1.weight"].copy_(g1t.t())
        return loss

    # -- optimizer -----------------------------------------------------------------------

    def optimizer_step(self) -> None:
        """One update of theta from self.grad by the optimizer `self.optim` (zgdyn.core.optim;
        AdamW is torch.optim.AdamW(fused=True)'s kernel)."""
        self.t += 1
        update([self.theta], [self.grad], [self.exp_avg], [self.exp_avg_sq],
               [self.max_exp_avg_sq], [self.optim], [self.t], self.shapes)

    adamw = optimizer_step  # the name step hooks written for AdamW call

    def step(self) -> Tensor:
        """One full-batch epoch: gradient, the hook if any (see `zgdyn.core.hooks`), then the
        optimizer. Returns the loss before the update. With `flush_subnormals`, computed in
        the CPU's flush-to-zero mode."""
        with flush_to_zero(self.optim.flush_subnormals):
            loss = self.loss_and_grad()
            if self.hook is None:
                self.optimizer_step()
            else:
                with torch.no_grad():
                    self.hook.grad(self)
                    if not self.hook.update(self):
                        self.optimizer_step()
        return loss

    @torch.no_grad()
    def logits(self, a: Tensor, b: Tensor) -> Tensor:
        """Logits (n, p) at the current parameters for pairs (a, b)."""
        a = a.to(self.device, torch.int64)
        return self.forward(a, b.to(self.device, torch.int64) + self.p)[-1]


__all__ = ["keep_heap_mapped", "dense_layers", "column_backprop", "output_grad", "param_views",
           "padded_rows", "FusedStep"]
