"""Hessian-vector products of the built-in MLP's weighted loss, written by hand.

The forward-mode (R-op) pass and its backward, on the column layout of `zgdyn.core.step`:
activations are (d, n), one training pair per column. For a direction V = (dW_l, db_l),
with masks M_l = relu'(z_l) (relu'' = 0 almost everywhere, as in torch),

    R z_1 = dW_1 x + db_1                          (x the two-hot of (a, p + b): a gather)
    R z_l = dW_l h_{l-1} + W_l R h_{l-1} + db_l,   R h_l = M_l ⊙ R z_l
    R g_z = w ⊙ (s ⊙ R z − s (sᵀ R z))           (softmax CE; `LOSS_HEADS` holds the heads)
    R g_W_l = R g_z_l h_{l-1}ᵀ + g_z_l (R h_{l-1})ᵀ,   R g_b_l = Σ_i R g_z_l
    R g_h_{l-1} = dW_lᵀ g_z_l + W_lᵀ R g_z_l,      R g_z_{l-1} = M_{l-1} ⊙ R g_h_{l-1}

so H v = (R g_W_l, R g_b_l) exactly. The primal pass (activations, masks, softmax, g_z)
is computed once per point and cached, so one HVP is six GEMMs per dense layer. A block
of b directions (b, N) carries its R-activations as (d, b, n) = (d, b·n) columns, so every
product above is one GEMM for the whole block. Validated against `hessian.make_hvp`
(torch.func) and a dense Hessian in the tests.

    >>> mh = MLPHessian(97, params, a, b, y, w)           # params: {name: tensor}, layer order
    >>> hv = mh(v)                                        # (N,) -> (N,)
    >>> HV = mh.block(V)                                  # (b, N) -> (b, N)
    >>> mh.grad, mh.loss                                  # ∇L (N,) and L at the point
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from ..core.config import layer_names
from ..core.model import param_shapes
from ..core.step import param_views


class SoftmaxCE:
    """The weighted softmax cross-entropy head: L = −Σ_i w_i log softmax(z_i)_{y_i}.

    `primal` gives the loss and g_z = w ⊙ (s − onehot(y)) for logits z (p, n) and keeps s;
    `r_op` applies the Hessian of L in the logits, ∂g_z/∂z · R z, to R z (p, b, n). Another
    loss (stablemax, say) is another head with the same two methods.
    """

    name = "softmax"

    def primal(self, z: Tensor, y: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
        """(loss (), g_z (p, n)) for logits z (p, n), targets y (n,), weights w (n,)."""
        logp = torch.log_softmax(z, dim=0)  # (p, n)
        cols = torch.arange(z.shape[1], device=z.device)
        loss = -(w * logp[y, cols]).sum()
        self.s = logp.exp_()  # (p, n) softmax
        gz = self.s * w
        gz[y, cols] -= w
        self.w = w
        return loss, gz

    def r_op(self, rz: Tensor) -> Tensor:
        """R g_z = w ⊙ (s ⊙ R z − s Σ_c s_c R z_c) (p, b, n) for R z (p, b, n)."""
        s = self.s[:, None, :]  # (p, 1, n)
        t = rz * s
        t.sub_(s * t.sum(0, keepdim=True))
        return t.mul_(self.w)


LOSS_HEADS = {"softmax": SoftmaxCE}


class MLPHessian:
    """The operator v ↦ H v of L(θ) = Σ_i w_i CE(f_θ(a_i, b_i), y_i) + (coupled_wd/2)‖θ‖².

    params: the named parameters ({fc1.weight (h1, 2p), fc1.bias, ..., out.bias}, any
    order; θ is flattened in layer order, as `hessian.flatten_params(Run.params_at(e))`);
    a, b, y: (n,) pairs and labels; w: (n,) weights used as given (any Zipf exponent).
    Everything runs in `dtype` on `device`. Calling it on v (N,) returns H v (N,); `block`
    takes V (b, N) and returns H V (b, N), b directions at once (rows). Inputs in another
    dtype or on another device are converted; the result is in the operator's own.
    """

    def __init__(self, p: int, params: Mapping[str, Tensor], a: Tensor | np.ndarray,
                 b: Tensor | np.ndarray, y: Tensor | np.ndarray, w: Tensor | np.ndarray, *,
                 loss: str = "softmax", coupled_wd: float = 0.0,
                 dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu",
                 max_block: int = 16) -> None:
        if loss not in LOSS_HEADS:
            raise ValueError(f"loss: must be {' | '.join(LOSS_HEADS)}, got {loss!r}")
        n_hidden = sum(1 for k in params if k.startswith("fc") and k.endswith(".weight"))
        hidden = tuple(int(params[f"fc{i + 1}.weight"].shape[0]) for i in range(n_hidden))
        self.p, self.hidden = p, hidden
        self.shapes = param_shapes(p, hidden)
        self.layers = layer_names(len(hidden))
        self.n = sum(math.prod(s) for s in self.shapes.values())
        self.dtype, self.device = dtype, torch.device(device)
        self.coupled_wd = float(coupled_wd)
        self.max_block = max_block
        kw = {"dtype": dtype, "device": self.device}
        self.theta = torch.cat([torch.as_tensor(params[k]).reshape(-1).to(**kw)
                                for k in self.shapes])  # (N,), layer order
        self.params = param_views(self.theta, self.shapes)
        as_idx = lambda t: torch.as_tensor(np.asarray(t) if not isinstance(t, Tensor) else t,
                                           dtype=torch.int64).to(self.device)
        self.a, self.pb, self.y = as_idx(a), as_idx(b) + p, as_idx(y)
        self.w = torch.as_tensor(np.asarray(w) if not isinstance(w, Tensor) else w).to(**kw)
        self.head = LOSS_HEADS[loss]()
        self._two_hot: Tensor | None = None  # (n, 2p), the first layer's input, on a GPU
        self.loss, self.grad = self._primal()

    # -- the point: activations, masks and output gradients, once -------------------------

    def _primal(self) -> tuple[float, Tensor]:
        """Caches the activations h_l (d_l, n), masks M_l and g_z_l (d_l, n) at θ; returns
        the loss and ∇L (N,)."""
        P = self.params
        w1 = P["fc1.weight"]
        z1 = w1.index_select(1, self.a).add_(w1.index_select(1, self.pb))
        z1.add_(P["fc1.bias"][:, None])
        self.h = [z1.relu_()]  # h_1 .. h_L, each (d, n)
        for name in self.layers[1:]:
            z = torch.addmm(P[f"{name}.bias"][:, None], P[f"{name}.weight"], self.h[-1])
            self.h.append(z.relu_() if name != "out" else z)
        z = self.h.pop()  # logits (p, n)
        self.mask = [(h > 0).to(self.dtype) for h in self.h]  # relu'(z_l), (d, n)
        self._pairs = torch.stack([self.a, self.pb], 1)  # (n, 2) rows of W1ᵀ to sum
        loss, gz = self.head.primal(z, self.y, self.w)
        grad = torch.zeros(self.n, dtype=self.dtype, device=self.device)
        G = param_views(grad, self.shapes)
        self.gz = [None] * len(self.layers)  # g_z of each layer's output, (d_out, n)
        for i in range(len(self.layers) - 1, 0, -1):
            name, h_in = self.layers[i], self.h[i - 1]
            self.gz[i] = gz
            torch.mm(gz, h_in.t(), out=G[f"{name}.weight"])
            torch.sum(gz, 1, out=G[f"{name}.bias"])
            gz = torch.mm(P[f"{name}.weight"].t(), gz).mul_(self.mask[i - 1])
        self.gz[0] = gz
        self._scatter(gz, G["fc1.weight"])
        torch.sum(gz, 1, out=G["fc1.bias"])
        total = float(loss)
        if self.coupled_wd:
            grad.add_(self.theta, alpha=self.coupled_wd)
            total += 0.5 * self.coupled_wd * float(torch.dot(self.theta, self.theta))
        return total, grad

    def _scatter(self, gz1: Tensor, out: Tensor) -> None:
        """out (r, 2p) = Σ_i gz1[:, i] into columns a_i and p + b_i, for gz1 (r, n); on a
        GPU as a product with the two-hot matrix (index_add_ uses atomics there, whose
        order, and so rounding, changes from run to run)."""
        if self.device.type == "cpu":
            out.zero_()
            out.index_add_(1, self.a, gz1).index_add_(1, self.pb, gz1)
            return
        if self._two_hot is None:
            n = self.a.numel()
            self._two_hot = torch.zeros(n, 2 * self.p, dtype=self.dtype, device=self.device)
            rows = torch.arange(n, device=self.device)
            self._two_hot[rows, self.a] = 1
            self._two_hot[rows, self.pb] = 1
        torch.mm(gz1, self._two_hot, out=out)

    # -- products ------------------------------------------------------------------------

    def __call__(self, v: Tensor) -> Tensor:
        """H v (N,) for v (N,)."""
        return self.block(v.reshape(1, -1))[0]

    def block(self, V: Tensor) -> Tensor:
        """H V (b, N) for directions V (b, N), in chunks of at most `max_block` rows."""
        if V.dim() != 2 or V.shape[1] != self.n:
            raise ValueError(f"V: must be (b, {self.n}), got {tuple(V.shape)}")
        # a fresh, aligned copy: the GEMMs' rounding must not depend on where V lives
        V = V.to(self.device, self.dtype, copy=True)
        out = torch.empty_like(V)
        for i in range(0, V.shape[0], self.max_block):
            self._block(V[i:i + self.max_block], out[i:i + self.max_block])
        if self.coupled_wd:
            out.add_(V, alpha=self.coupled_wd)
        return out

    def _block(self, V: Tensor, out: Tensor) -> None:
        b, n = V.shape[0], self.a.numel()
        P, D, O = self.params, param_views(V, self.shapes), param_views(out, self.shapes)
        # forward R-op: R z_l and R h_l as (d, b, n)
        rows = D["fc1.weight"].permute(2, 1, 0).reshape(2 * self.p, -1)  # (2p, h1·b)
        rz = torch.nn.functional.embedding_bag(self._pairs, rows, mode="sum")  # (n, h1·b)
        rz = rz.t().contiguous().view(-1, b, n).add_(D["fc1.bias"].t()[:, :, None])
        rh = [rz.mul_(self.mask[0][:, None, :])]
        for i, name in enumerate(self.layers[1:], start=1):
            W, dW = P[f"{name}.weight"], D[f"{name}.weight"]  # (o, d), (b, o, d)
            d_out, d_in = W.shape
            rz = torch.mm(dW.permute(1, 0, 2).reshape(d_out * b, d_in), self.h[i - 1])
            rz.view(d_out, b * n).addmm_(W, rh[-1].view(d_in, b * n))
            rz = rz.view(d_out, b, n).add_(D[f"{name}.bias"].t()[:, :, None])
            rh.append(rz.mul_(self.mask[i][:, None, :]) if name != "out" else rz)
        rg = self.head.r_op(rh.pop())  # R g_z of the logits (p, b, n)
        # backward of the R-op
        for i in range(len(self.layers) - 1, 0, -1):
            name = self.layers[i]
            W, dW = P[f"{name}.weight"], D[f"{name}.weight"]
            d_out, d_in = W.shape
            h_in, rh_in, gz = self.h[i - 1], rh[i - 1], self.gz[i]
            ow = O[f"{name}.weight"]  # (b, o, d)
            ow.copy_(torch.mm(rg.view(d_out * b, n), h_in.t()).view(d_out, b, d_in)
                     .transpose(0, 1))
            ow.add_(torch.mm(rh_in.view(d_in * b, n), gz.t()).view(d_in, b, d_out)
                    .permute(1, 2, 0))
            torch.sum(rg, 2, out=O[f"{name}.bias"].t())
            rgh = torch.mm(dW.permute(2, 0, 1).reshape(d_in * b, d_out), gz)  # (d·b, n)
            rgh.view(d_in, b * n).addmm_(W.t(), rg.view(d_out, b * n))
            rg = rgh.view(d_in, b, n).mul_(self.mask[i - 1][:, None, :])
        h1 = self.hidden[0]
        acc = torch.empty(h1 * b, 2 * self.p, dtype=self.dtype, device=self.device)
        self._scatter(rg.view(h1 * b, n), acc)
        O["fc1.weight"].copy_(acc.view(h1, b, 2 * self.p).transpose(0, 1))
        torch.sum(rg, 2, out=O["fc1.bias"].t())


__all__ = ["MLPHessian", "SoftmaxCE", "LOSS_HEADS"]
