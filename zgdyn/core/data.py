"""Z_p addition pairs, the seeded train/test split, Zipf weights and their statistics.

Pure numpy; no torch, no files.

    >>> split = make_split(97, 0.3, seed=42)          # 2,822 train / 6,587 test pairs
    >>> w = zipf_weights(split, 1.5)                  # (2822,) sums to 1
    >>> distribution_stats(w)["ess"]                  # 5.51...
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import WEIGHTINGS, ConfigError, DataConfig


@dataclass(frozen=True)
class Split:
    """The task's pairs, split. Pair index i stands for (a, b) = (i // p, i % p)."""

    p: int
    train_idx: np.ndarray  # (n_train,) int64 pair indices, in shuffled (rank) order
    test_idx: np.ndarray  # (n_test,) int64 pair indices, in shuffled order

    @property
    def n_train(self) -> int:
        return len(self.train_idx)

    def tokens(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(a, b, (a + b) mod p) for pair indices idx."""
        a, b = np.divmod(idx, self.p)
        return a, b, (a + b) % self.p


def make_split(p: int, train_frac: float, seed: int, rng: str = "random_state") -> Split:
    """All p^2 pairs in a-major order, shuffled by the seed; the first int(p*p*train_frac)
    are the training set, pair for pair the reference's: `rng` "random_state" is its
    single-phase script's RandomState(seed).shuffle, "default_rng" its two-phase script's
    default_rng(seed).permutation."""
    if rng == "random_state":
        order = np.arange(p * p, dtype=np.int64)
        np.random.RandomState(seed).shuffle(order)
    elif rng == "default_rng":
        order = np.random.default_rng(seed).permutation(p * p).astype(np.int64)
    else:
        raise ValueError(f"rng: must be random_state | default_rng, got {rng!r}")
    n_train = int(p * p * train_frac)
    return Split(p=p, train_idx=order[:n_train], test_idx=order[n_train:])


def _zipf(ranks: np.ndarray, s: float) -> np.ndarray:
    """1 / rank^s for 1-based ranks, in float64."""
    return np.power(ranks.astype(np.float64), -float(s))


def zipf_weights(split: Split, s: float, mode: str = "rank") -> np.ndarray:
    """Normalized training weights w (n_train,), sum 1.

    rank:        w_k ∝ 1/k^s, k = 1-based position in the shuffled training list;
    independent: w ∝ z(a) z(b), z(t) ∝ 1/(t+1)^s over token values;
    output_freq: w ∝ z((a+b) mod p).
    s = 0 is uniform in every mode.
    """
    if mode not in WEIGHTINGS:
        raise ConfigError(f"weighting: must be {' | '.join(WEIGHTINGS)}, got {mode!r}")
    if not (s >= 0):
        raise ConfigError(f"zipf_s: must be a number >= 0, got {s!r}")
    if mode == "rank":
        w = _zipf(np.arange(1, split.n_train + 1), s)
    else:
        a, b, c = split.tokens(split.train_idx)
        if mode == "independent":
            w = _zipf(a + 1, s) * _zipf(b + 1, s)
        else:
            w = _zipf(c + 1, s)
    return w / w.sum()


def cap_weights(w: np.ndarray, cap: float) -> np.ndarray:
    """Weights w (n,), sum 1, with none above cap/n: the largest are set to cap/n and the
    rest scaled by one common factor so the sum stays 1 (water-filling). The order is
    kept, and the effective sample size 1/Σw² is at least n/cap."""
    n, c = len(w), cap / len(w)
    if w.max() <= c:
        return w.copy()
    order = np.argsort(-w, kind="stable")
    ws = w[order]
    suffix = np.cumsum(ws[::-1])[::-1]  # suffix[k] = ws[k:].sum()
    k = np.arange(n)
    fits = ws * (1.0 - k * c) <= c * suffix  # the k largest capped, the rest then fit
    first = int(np.argmax(fits))
    out = np.empty_like(ws)
    out[:first] = c
    out[first:] = ws[first:] * ((1.0 - first * c) / suffix[first])
    capped = np.empty_like(w)
    capped[order] = out
    return capped


def temper_weights(w: np.ndarray, t: float) -> np.ndarray:
    """Weights w (n,), sum 1, raised to the power t and renormalized: w^t / Σ w^t."""
    out = np.power(w, t)
    return out / out.sum()


def loss_weights(split: Split, s: float, data: DataConfig) -> np.ndarray:
    """The training loss's weights under exponent s: `zipf_weights` in the config's
    weighting mode, tempered by its weight_power and capped by its weight_cap where it has
    them."""
    w = zipf_weights(split, s, data.weighting)
    if data.weight_power is not None:
        w = temper_weights(w, data.weight_power)
    return w if data.weight_cap is None else cap_weights(w, data.weight_cap)


def distribution_stats(w: np.ndarray) -> dict[str, float]:
    """Statistics of normalized weights w (n,).

    ratio = max/min; ess = 1/Σw²; top10_mass = mass of the n//10 heaviest;
    top1, top2 = the largest and second-largest weight.
    """
    w = np.asarray(w, dtype=np.float64)
    srt = np.sort(w)[::-1]
    k = max(len(w) // 10, 1)
    return {
        "n": int(len(w)),
        "ratio": float(srt[0] / srt[-1]),
        "ess": float(1.0 / np.sum(w * w)),
        "top10_mass": float(srt[:k].sum()),
        "top1": float(srt[0]),
        "top2": float(srt[1]) if len(w) > 1 else 0.0,
    }


def stats_table(p: int, train_frac: float, exponents: list[float], *, seed: int = 42,
                mode: str = "rank") -> list[dict[str, float]]:
    """One row of `distribution_stats` per Zipf exponent, with the exponent as "s"."""
    split = make_split(p, train_frac, seed)
    return [{"s": float(s), **distribution_stats(zipf_weights(split, s, mode))}
            for s in exponents]


__all__ = ["Split", "make_split", "zipf_weights", "cap_weights", "temper_weights",
           "loss_weights", "distribution_stats", "stats_table"]
