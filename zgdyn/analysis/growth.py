"""The growth rate γ of the memorization amplitude m against the decay rate λ = lr·wd.

The essay's law is dm/dt = (γ(m) − λ)·m per epoch. Two estimators:

- finite differences along a trajectory: γ_fd = d ln m / dt + λ;
- instantaneous, at a keyframe (parameters plus Adam state): with u the AdamW direction
  of the next step (θ ← θ(1 − λ) − lr·u), γ_inst = −lr·⟨P_M u, θ_M⟩ / m², the exact
  first-order rate at which the update grows θ_M; the decay λ is accounted separately.

Then γ is binned by m into a curve with bootstrap intervals, and m* is where it crosses λ.

    >>> g = gamma_fd(epochs, m, lam=1e-3)
    >>> curve = gamma_curve(m, g, lam=1e-3, seed=0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.config import OptimConfig


def gamma_fd(epochs: np.ndarray, m: np.ndarray, lam: float) -> np.ndarray:
    """γ_fd (n,) = d ln m / dt + λ at each epoch, by second-order finite differences."""
    epochs = np.asarray(epochs, dtype=np.float64)
    logm = np.log(np.maximum(np.asarray(m, dtype=np.float64), 1e-300))
    if len(epochs) < 2:
        return np.full(len(epochs), np.nan)
    return np.gradient(logm, epochs) + lam


def adamw_direction(grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, step: int,
                    optim: OptimConfig) -> Tensor:
    """u such that the next AdamW step is θ ← θ(1 − lr·wd) − lr·u (flat tensors).

    m' = β1 m + (1−β1) g, v' = β2 v + (1−β2) g², u = (m'/(1−β1^t')) / (√(v'/(1−β2^t')) + ε).
    """
    t = step + 1
    m = exp_avg * optim.beta1 + grad * (1 - optim.beta1)
    v = exp_avg_sq * optim.beta2 + grad * grad * (1 - optim.beta2)
    return (m / (1 - optim.beta1**t)) / ((v / (1 - optim.beta2**t)).sqrt() + optim.eps)


def gamma_inst(u_m: Tensor, theta_m: Tensor, lr: float) -> float:
    """γ_inst = −lr·⟨P_M u, θ_M⟩ / ‖θ_M‖² (per epoch), from flat P_M u and θ_M."""
    m2 = float(theta_m.double().norm() ** 2)
    return -lr * float(torch.dot(u_m.double().flatten(), theta_m.double().flatten())) / m2


@dataclass(frozen=True)
class GammaCurve:
    """γ binned by m, with bootstrap confidence intervals, and its crossing of λ."""

    m_center: np.ndarray  # (n_bins,) geometric bin centers
    gamma: np.ndarray  # (n_bins,) mean γ per bin
    lo: np.ndarray  # (n_bins,) lower bound of the CI
    hi: np.ndarray  # (n_bins,) upper bound
    count: np.ndarray  # (n_bins,) samples per bin
    lam: float
    m_star: float | None  # m where γ − λ changes sign (log-interpolated); None if never


def gamma_curve(m: np.ndarray, gamma: np.ndarray, lam: float, *, n_bins: int = 12,
                n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> GammaCurve:
    """Bin (m, γ) samples in log m; bootstrap the mean of each bin."""
    m, gamma = np.asarray(m, np.float64), np.asarray(gamma, np.float64)
    ok = np.isfinite(m) & np.isfinite(gamma) & (m > 0)
    m, gamma = m[ok], gamma[ok]
    if len(m) == 0:
        empty = np.zeros(0)
        return GammaCurve(empty, empty, empty, empty, np.zeros(0, int), lam, None)
    edges = np.geomspace(m.min(), m.max() * (1 + 1e-12), n_bins + 1) if m.max() > m.min() \
        else np.array([m.min() * 0.999, m.max() * 1.001])
    which = np.clip(np.searchsorted(edges, m, side="right") - 1, 0, len(edges) - 2)
    rng = np.random.default_rng(seed)
    rows = []
    for b in range(len(edges) - 1):
        g = gamma[which == b]
        if len(g) == 0:
            continue
        boots = rng.choice(g, size=(n_boot, len(g)), replace=True).mean(axis=1)
        q = (1 - level) / 2
        rows.append((math.sqrt(edges[b] * edges[b + 1]), g.mean(),
                     np.quantile(boots, q), np.quantile(boots, 1 - q), len(g)))
    mc, gm, lo, hi, cnt = (np.array(c) for c in zip(*rows))
    return GammaCurve(m_center=mc, gamma=gm, lo=lo, hi=hi, count=cnt.astype(int), lam=lam,
                      m_star=crossing(mc, gm - lam))


def crossing(x: np.ndarray, y: np.ndarray) -> float | None:
    """The first x where y changes sign, interpolated linearly in log x."""
    s = np.sign(y)
    idx = np.flatnonzero(s[:-1] * s[1:] < 0)
    if not len(idx):
        return None
    i = idx[0]
    lx0, lx1 = math.log(x[i]), math.log(x[i + 1])
    t = y[i] / (y[i] - y[i + 1])
    return float(math.exp(lx0 + t * (lx1 - lx0)))


__all__ = ["gamma_fd", "adamw_direction", "gamma_inst", "GammaCurve", "gamma_curve", "crossing"]
