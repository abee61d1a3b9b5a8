"""Fourier structure of the logits and of the weights: key frequencies, Fourier energy,
progress measures, and the split of the token weights into θ_F and θ_M.

Pure functions on tensors. Logits are L[a, b, c] over all p² pairs (a-major) and output
classes c, first centered over c (softmax ignores a shift along c). Their 2-D DFT over
(a, b) is F[ka, kb, c]. Addition's generalizing circuit lives on the diagonal frequencies
(k, k) and (−k, −k); the constant term (0, 0) counts on neither side of any ratio.

    >>> L = all_logits(params, p)                          # (p, p, p)
    >>> spec = spectrum(L)                                 # energies per (ka, kb)
    >>> key = detect_key_freqs(spec.diagonal)              # spectral-gap choice
    >>> fourier_energy(spec, key)                          # in [0, 1]
    >>> dec = weight_decomposition(params, p, key)         # m_w, f_w
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.model import functional_logits


@functools.lru_cache(maxsize=8)
def fourier_basis(p: int) -> tuple[Tensor, list[tuple[int, str]]]:
    """The orthonormal real DFT basis over Z_p, rows (p, p) float64, and each row's
    (k, "const"|"cos"|"sin"). Cached: do not modify the returned tensor.

    Row 0 is the constant 1/√p; then √(2/p)·cos(2πkx/p) and √(2/p)·sin(2πkx/p) for
    k = 1..⌊(p−1)/2⌋; for even p, the Nyquist row cos(πx)/√p last.
    """
    dtype = torch.float64
    x = torch.arange(p, dtype=dtype)
    rows, labels = [torch.full((p,), 1 / math.sqrt(p), dtype=dtype)], [(0, "const")]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [math.sqrt(2 / p) * torch.cos(2 * math.pi * k * x / p),
                 math.sqrt(2 / p) * torch.sin(2 * math.pi * k * x / p)]
        labels += [(k, "cos"), (k, "sin")]
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(p))
        labels.append((p // 2, "cos"))
    return torch.stack(rows), labels


def n_freqs(p: int) -> int:
    """Number of non-zero frequency classes k = 1..⌊p/2⌋."""
    return p // 2


@torch.no_grad()
def all_logits(params: dict[str, Tensor], p: int, *, chunk: int = 16384) -> Tensor:
    """Logits of every pair: (p, p, p) indexed [a, b, c]."""
    idx = torch.arange(p * p, device=params["fc1.weight"].device)
    out = [functional_logits(params, i // p, i % p, p=p) for i in idx.split(chunk)]
    return torch.cat(out).view(p, p, p)


@dataclass(frozen=True)
class Spectrum:
    """The diagonal of the 2-D DFT over (a, b) of c-centered logits, and energy totals.

    `diag[k, c]` = F[k, k, c] = Σ_{a,b} L[a, b, c] e^{−2πik(a+b)/p}, computed as a 1-D DFT of
    the sums of L along a + b ≡ s: the only bins that addition's circuit uses. Energies are
    normalized so that the energy of all (ka, kb) bins sums to Σ L² (Parseval).
    """

    logits: Tensor  # (p, p, p) float64, centered over c
    diag: Tensor  # (p, p) complex: F[k, k, c]
    total: float  # energy outside the constant term (0, 0)

    @property
    def p(self) -> int:
        return self.logits.shape[0]

    @property
    def diag_energy(self) -> Tensor:
        """(p,) energy in bin (k, k), k = 0..p−1."""
        return (self.diag.abs() ** 2).sum(-1) / self.p**2

    @property
    def diagonal(self) -> Tensor:
        """(⌊p/2⌋,) energy of frequency class k on the diagonal: bins (k, k) and (−k, −k)."""
        p, e = self.p, self.diag_energy
        k = torch.arange(1, n_freqs(p) + 1)
        out = e[k] + e[(p - k) % p]
        if p % 2 == 0:  # (p/2, p/2) is its own conjugate
            out[-1] = e[p // 2]
        return out


def center(logits: Tensor) -> Tensor:
    """Subtract each pair's mean over the classes c: (p, p, p) -> (p, p, p)."""
    return logits - logits.mean(dim=-1, keepdim=True)


def _sum_index(p: int, device: torch.device) -> Tensor:
    a = torch.arange(p, device=device)
    return ((a[:, None] + a[None, :]) % p).flatten()  # (p*p,) s = (a + b) mod p


def spectrum(logits: Tensor) -> Spectrum:
    """The diagonal spectrum of logits (p, p, p), in float64."""
    p = logits.shape[0]
    lc = center(logits.double())
    h = torch.zeros(p, p, dtype=torch.float64, device=lc.device)  # (s, c)
    h.index_add_(0, _sum_index(p, lc.device), lc.reshape(p * p, p))
    diag = torch.fft.fft(h, dim=0)  # (k, c)
    dc = float((lc.sum(dim=(0, 1)) ** 2).sum()) / p**2
    return Spectrum(logits=lc, diag=diag, total=float((lc**2).sum()) - dc)


def energy_map(logits: Tensor) -> Tensor:
    """(p, p) energy of c-centered logits in every 2-D frequency bin (ka, kb); sums to Σ L²."""
    p = logits.shape[0]
    f = torch.fft.fft2(center(logits.double()), dim=(0, 1))
    return (f.abs() ** 2).sum(-1) / p**2


@dataclass(frozen=True)
class KeyFreqs:
    """Key frequencies (sorted by energy) and how strongly they stand out."""

    freqs: list[int]
    gap: float  # energy ratio across the chosen cut (inf if nothing follows)


def detect_key_freqs(diagonal: Tensor, *, top_k: int | None = None) -> KeyFreqs:
    """Key frequencies from diagonal energies (⌊p/2⌋,) for k = 1..⌊p/2⌋.

    top_k: the top_k strongest (the reference's K = 5). Otherwise the spectral gap: the cut
    after the i-th strongest that maximizes E_(i) / E_(i+1).
    """
    e = diagonal.double().cpu().numpy()
    order = np.argsort(-e, kind="stable")
    srt = np.maximum(e[order], 1e-300)
    if top_k is not None:
        n = min(top_k, len(e))
    else:
        ratios = srt[:-1] / srt[1:]
        n = int(np.argmax(ratios)) + 1 if len(ratios) else 1
    gap = float(srt[n - 1] / srt[n]) if n < len(srt) else float("inf")
    return KeyFreqs(freqs=[int(k) + 1 for k in order[:n]], gap=gap)


def _key_bins(p: int, key: list[int]) -> list[int]:
    return sorted({k % p for k in key} | {(p - k) % p for k in key})


def key_freqs_of(params: dict[str, Tensor], p: int, *, top_k: int | None = None) -> list[int]:
    """The key frequencies of a model's logits (`detect_key_freqs` on its spectrum)."""
    return detect_key_freqs(spectrum(all_logits(params, p)).diagonal, top_k=top_k).freqs


def fourier_energy(spec: Spectrum, key: list[int]) -> float:
    """Fraction of the non-constant logit energy in the key frequencies' diagonal bins."""
    return float(spec.diag_energy[_key_bins(spec.p, key)].sum()) / spec.total


def diagonal_fraction(spec: Spectrum) -> float:
    """The K-free measure: fraction of non-constant energy on the whole diagonal."""
    return float(spec.diagonal.sum()) / spec.total


def split_logits(spec: Spectrum, key: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(constant, key, rest) parts of the centered logits, each (p, p, p); they sum to it.

    The key part is Σ over bins (k, k), k ∈ ±key, of F[k, k, c] e^{2πik(a+b)/p} / p²: a
    function of (a + b) mod p and c only.
    """
    p = spec.p
    const = spec.logits.mean(dim=(0, 1), keepdim=True).expand(p, p, p)
    bins = torch.tensor(_key_bins(p, key), dtype=torch.float64)
    s = torch.arange(p, dtype=torch.float64)
    phase = torch.exp(2j * math.pi * bins[:, None] * s[None, :] / p)  # (n_bins, s)
    g = (phase.t() @ spec.diag[bins.long()]).real / p**2  # (s, c)
    keyp = g[_sum_index(p, spec.logits.device)].view(p, p, p)
    return const, keyp, spec.logits - const - keyp


def _ce(logits: Tensor, y: Tensor) -> Tensor:
    return -torch.log_softmax(logits, dim=-1).gather(-1, y[:, None]).squeeze(-1)


@dataclass(frozen=True)
class ProgressMeasures:
    """Nanda et al.'s restricted and excluded loss on the training pairs."""

    restricted_loss: float  # logits = constant + key part; unweighted mean CE
    restricted_loss_weighted: float  # the same, Σ w_i CE_i
    excluded_loss: float  # logits with the key part removed; unweighted
    excluded_loss_weighted: float
    m_f: float  # ‖rest‖ over all pairs (Frobenius, over pairs and classes)
    m_f_train: float  # ‖rest‖ over the training pairs


def progress_measures(spec: Spectrum, key: list[int], train_idx: Tensor,
                      weights: Tensor) -> ProgressMeasures:
    """Restricted/excluded loss and the function-space memorization norm m_f.

    train_idx (n,) pair indices a·p + b; weights (n,) summing to 1.
    """
    p = spec.p
    const, keyp, rest = split_logits(spec, key)
    flat = lambda t: t.reshape(p * p, p)[train_idx]  # (n, p)
    a, b = train_idx // p, train_idx % p
    y = (a + b) % p
    w = weights.double()
    ce_r = _ce(flat(const + keyp), y)
    ce_e = _ce(flat(const + rest), y)
    return ProgressMeasures(
        restricted_loss=float(ce_r.mean()), restricted_loss_weighted=float(ce_r @ w),
        excluded_loss=float(ce_e.mean()), excluded_loss_weighted=float(ce_e @ w),
        m_f=float(rest.norm()), m_f_train=float(flat(rest).norm()),
    )


def gini(x: Tensor | np.ndarray) -> float:
    """Gini coefficient of non-negative values: 0 for equal values, → 1 for one non-zero."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    n = len(v)
    if n == 0 or v.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ v / (n * v.sum()))


# -- weights ---------------------------------------------------------------------------------


def token_weights(params: dict[str, Tensor], p: int) -> dict[str, Tensor]:
    """The tensors with a token axis, token axis last: embed_a, embed_b (h1, p), unembed (h, p)."""
    w1 = params["fc1.weight"].double()
    return {"embed_a": w1[:, :p], "embed_b": w1[:, p:], "unembed": params["out.weight"].double().t()}


def frequency_norms(params: dict[str, Tensor], p: int) -> Tensor:
    """(⌊p/2⌋,) norm of the embedding (both halves) in each frequency class k."""
    basis, labels = fourier_basis(p)
    tw = token_weights(params, p)
    coef = torch.cat([tw["embed_a"], tw["embed_b"]]) @ basis.t()  # (2 h1, p)
    sq = (coef**2).sum(0)
    norms = torch.zeros(n_freqs(p), dtype=torch.float64)
    for j, (k, _) in enumerate(labels):
        if k > 0:
            norms[k - 1] += sq[j]
    return norms.sqrt()


def key_projector(p: int, key: list[int]) -> Tensor:
    """(p, p) orthogonal projector onto the cos/sin directions of the key frequencies."""
    basis, labels = fourier_basis(p)
    rows = basis[[j for j, (k, _) in enumerate(labels) if k in set(int(k) for k in key)]]
    return rows.t() @ rows


def constant_projector(p: int) -> Tensor:
    return torch.full((p, p), 1.0 / p, dtype=torch.float64)


@dataclass(frozen=True)
class WeightDecomposition:
    """θ_F / θ_M split of the token weights; norms in parameter units."""

    f_w: float  # ‖θ_F‖: key-frequency part of embed_a, embed_b, unembed
    m_w: float  # ‖θ_M‖: the rest of those tensors, less their constant (token-mean) part
    const_w: float  # ‖token-mean part‖ (acts as a bias; in the unembedding, a no-op)
    other_w: float  # ‖hidden layers and biases‖ (no token axis)
    per_tensor_m: dict[str, float]  # ‖θ_M‖ of each token tensor


def split_token_weights(params: dict[str, Tensor], p: int,
                        key: list[int]) -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """{tensor: (θ_F, θ_M, constant)} parts of each token tensor, token axis last."""
    pk, pc = key_projector(p, key), constant_projector(p)
    pm = torch.eye(p, dtype=torch.float64) - pk - pc
    return {name: (t @ pk, t @ pm, t @ pc) for name, t in token_weights(params, p).items()}


def weight_decomposition(params: dict[str, Tensor], p: int, key: list[int]) -> WeightDecomposition:
    """m_w = ‖θ_M‖ and f_w = ‖θ_F‖ over the token axes of fc1 (both halves) and out."""
    parts = split_token_weights(params, p, key)
    sq = lambda i: sum(float(v[i].norm() ** 2) for v in parts.values())
    other = sum(float(t.double().norm() ** 2) for n, t in params.items()
                if n not in ("fc1.weight", "out.weight"))
    return WeightDecomposition(f_w=math.sqrt(sq(0)), m_w=math.sqrt(sq(1)),
                               const_w=math.sqrt(sq(2)), other_w=math.sqrt(other),
                               per_tensor_m={n: float(v[1].norm()) for n, v in parts.items()})


def memorization_projector(p: int, key: list[int]) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """P_M on named-parameter dicts: keeps θ_M of fc1.weight and out.weight, zeros the rest.

    Returns a function dict -> dict (same names and shapes), linear and idempotent.
    """
    pk, pc = key_projector(p, key), constant_projector(p)
    pm = torch.eye(p, dtype=torch.float64) - pk - pc

    def project(named: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {n: torch.zeros_like(t) for n, t in named.items()}
        w1 = named["fc1.weight"]
        pmt = pm.to(w1.dtype).to(w1.device)
        out["fc1.weight"] = torch.cat([w1[:, :p] @ pmt, w1[:, p:] @ pmt], dim=1)
        out["out.weight"] = pmt @ named["out.weight"]  # token axis is the rows
        return out

    return project


def checkpoint_measures(params: dict[str, Tensor], p: int, key: list[int], train_idx: Tensor,
                        weights: Tensor) -> tuple[dict[str, float], Tensor]:
    """Every per-checkpoint measure, flat, and the diagonal spectrum (⌊p/2⌋,) as fractions.

    Keys: fourier_energy, diagonal_fraction, n_key_auto, gap_auto, restricted_loss(_weighted),
    excluded_loss(_weighted), m_f, m_f_train, m_w, f_w, const_w, other_w, gini.
    """
    spec = spectrum(all_logits(params, p))
    auto = detect_key_freqs(spec.diagonal)
    pm = progress_measures(spec, key, train_idx, weights)
    dec = weight_decomposition(params, p, key)
    row = {
        "fourier_energy": fourier_energy(spec, key),
        "diagonal_fraction": diagonal_fraction(spec),
        "n_key_auto": float(len(auto.freqs)), "gap_auto": auto.gap,
        "restricted_loss": pm.restricted_loss,
        "restricted_loss_weighted": pm.restricted_loss_weighted,
        "excluded_loss": pm.excluded_loss, "excluded_loss_weighted": pm.excluded_loss_weighted,
        "m_f": pm.m_f, "m_f_train": pm.m_f_train,
        "m_w": dec.m_w, "f_w": dec.f_w, "const_w": dec.const_w, "other_w": dec.other_w,
        "gini": gini(frequency_norms(params, p)),
    }
    return row, spec.diagonal / spec.total


__all__ = ["fourier_basis", "n_freqs", "all_logits", "Spectrum", "center", "spectrum",
           "energy_map", "KeyFreqs", "detect_key_freqs", "key_freqs_of", "fourier_energy",
           "diagonal_fraction", "split_logits", "ProgressMeasures", "progress_measures", "gini",
           "token_weights", "frequency_norms", "key_projector", "constant_projector",
           "WeightDecomposition", "split_token_weights", "weight_decomposition",
           "memorization_projector", "checkpoint_measures"]
