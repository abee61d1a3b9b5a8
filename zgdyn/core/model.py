"""The MLP 2p -> h1 -> ... -> hL -> p on concatenated one-hots of (a, b), and its functional form.

Because the input is two one-hots, the first layer is the gather
``fc1.weight[:, a] + fc1.weight[:, p + b] + fc1.bias`` rather than a matmul.
Parameters are named and shaped exactly as a plain ``nn.Linear`` stack's:
``fc1.weight`` (h1, 2p), ``fc1.bias``, ``fc2.weight``, ..., ``out.weight`` (p, hL), ``out.bias``.

    >>> model = MLP(97, (128, 128))
    >>> init_params(model, "lecun", torch.Generator().manual_seed(42))
    >>> logits = model(a, b)                                    # (n, p)
    >>> logits = functional_logits(dict(model.named_parameters()), a, b, p=97)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import INITS, ConfigError, layer_names

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def param_shapes(p: int, hidden: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    """{name: shape} in nn.Linear-stack order (weight then bias, layer by layer)."""
    dims = [2 * p, *hidden, p]
    shapes: dict[str, tuple[int, ...]] = {}
    for name, d_in, d_out in zip(layer_names(len(hidden)), dims[:-1], dims[1:]):
        shapes[f"{name}.weight"] = (d_out, d_in)
        shapes[f"{name}.bias"] = (d_out,)
    return shapes


def n_params(p: int, hidden: tuple[int, ...]) -> int:
    return sum(math.prod(s) for s in param_shapes(p, hidden).values())


def matmul_flops(p: int, hidden: tuple[int, ...], n: int) -> float:
    """FLOPs of the matmuls of one full-batch step over n pairs: forward, input gradient
    and weight gradient of every dense layer (the gathered first layer has none)."""
    shapes = param_shapes(p, hidden)
    return 3.0 * sum(2 * n * s[0] * s[1] for k, s in shapes.items()
                     if k.endswith(".weight") and not k.startswith("fc1."))


def functional_logits(params: dict[str, Tensor], a: Tensor, b: Tensor, *, p: int) -> Tensor:
    """Logits (n, p) of pairs (a, b), each (n,) int64, from named params; torch.func-friendly.

    h1 = relu(W1[:, a] + b1 + W1[:, p+b]); h_{l+1} = relu(W_{l+1} h_l + b_{l+1}); out = Wo h_L + bo.
    """
    n_hidden = sum(1 for k in params if k.startswith("fc") and k.endswith(".weight"))
    w1t = params["fc1.weight"].t()  # (2p, h1)
    h = torch.relu(w1t[a] + params["fc1.bias"] + w1t[p + b])  # (n, h1), as the fused step
    for i in range(2, n_hidden + 1):
        h = torch.relu(nn.functional.linear(h, params[f"fc{i}.weight"], params[f"fc{i}.bias"]))
    return nn.functional.linear(h, params["out.weight"], params["out.bias"])  # (n, p)


def stablemax_s(x: Tensor) -> Tensor:
    """StableMax's s(x) = x + 1 for x >= 0 and 1 / (1 - x) below (Prieto et al. 2025)."""
    return torch.where(x >= 0, x + 1, 1 / (1 - x))


def log_probs(logits: Tensor, loss: str = "softmax") -> Tensor:
    """log q (n, p) of logits (n, p): log softmax, or log StableMax
    q_j = s(z_j) / Σ_k s(z_k) (see `stablemax_s`)."""
    if loss == "softmax":
        return torch.log_softmax(logits, dim=1)
    if loss != "stablemax":
        raise ValueError(f"loss {loss!r}: expected 'softmax' or 'stablemax'")
    s = stablemax_s(logits)
    return s.log() - s.sum(dim=1, keepdim=True).log()


class MLP(nn.Module):
    """The task's MLP with a gather first layer; ``forward(a, b)`` returns logits (n, p)."""

    def __init__(self, p: int, hidden: tuple[int, ...] = (128, 128), *,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        super().__init__()
        self.p = p
        self.hidden = tuple(hidden)
        dims = [2 * p, *self.hidden, p]
        for name, d_in, d_out in zip(layer_names(len(self.hidden)), dims[:-1], dims[1:]):
            self.add_module(name, nn.Linear(d_in, d_out, dtype=dtype, device=device))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return functional_logits(dict(self.named_parameters()), a, b, p=self.p)


@torch.no_grad()
def init_params(model: MLP, scheme: str, generator: torch.Generator) -> None:
    """Initialize in place from `generator`.

    lecun: Flax's default Dense init, the reference's: kernels ~ N(0, 1/fan_in) truncated
           to ±2σ (σ rescaled by 1/0.8796 so the variance stays 1/fan_in), biases zero.
    torch: nn.Linear's default: U(±1/sqrt(fan_in)) for weights and biases.
    """
    if scheme not in INITS:
        raise ConfigError(f"init: must be {' | '.join(INITS)}, got {scheme!r}")
    for module in model.children():
        fan_in = module.weight.shape[1]
        if scheme == "lecun":
            std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
            w = torch.empty(module.weight.shape, dtype=torch.float64)
            nn.init.trunc_normal_(w, 0.0, 1.0, -2.0, 2.0, generator=generator)
            module.weight.copy_(w * std)
            module.bias.zero_()
        else:
            bound = 1.0 / math.sqrt(fan_in)
            for t in (module.weight, module.bias):
                u = torch.rand(t.shape, dtype=torch.float64, generator=generator)
                t.copy_((2 * u - 1) * bound)


def build_model(p: int, hidden: tuple[int, ...], *, init: str, seed: int,
                dtype: str = "float32", device: str = "cpu") -> MLP:
    """A freshly initialized MLP; the same (init, seed) gives the same parameters on any device."""
    model = MLP(p, hidden, dtype=DTYPES[dtype], device=device)
    init_params(model, init, torch.Generator().manual_seed(seed))
    return model


__all__ = ["DTYPES", "param_shapes", "n_params", "matmul_flops", "functional_logits",
           "stablemax_s", "log_probs", "MLP", "init_params", "build_model"]
