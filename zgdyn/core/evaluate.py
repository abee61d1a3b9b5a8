"""The evaluation of a run's parameters over every pair: its loss and accuracy, train and
test, as the solo Trainer and the batched ensemble both compute them.

    >>> ev = Evaluator(split, phase_weights, phase_s, device)
    >>> fields = ev.losses(step.logits(*ev.grid), loss="softmax", phase=0)
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .data import Split
from .model import log_probs

# the fields `losses` and `batched_losses` return, in the order of a metrics record
LOSS_FIELDS = ("train_loss", "train_loss_unweighted", "train_acc", "train_acc_weighted",
               "test_loss", "test_acc", "saturated_mass")


def _weighted_mean(values: Tensor, w: Tensor) -> float:
    return float(torch.dot(values.double(), w.double()))


class Evaluator:
    """The p x p grid of pairs, the split's train and test indices into it, and each
    phase's loss weights (test metrics are unweighted)."""

    def __init__(self, split: Split, phase_weights: list[Tensor], phase_s: list[float],
                 device: torch.device | str) -> None:
        p = split.p
        ga, gb, gy = split.tokens(np.arange(p * p))
        self.grid = tuple(torch.as_tensor(x, device=device) for x in (ga, gb, gy))
        self.train_idx = torch.as_tensor(split.train_idx, device=device)
        self.test_idx = torch.as_tensor(split.test_idx, device=device)
        self.phase_weights, self.phase_s = phase_weights, phase_s

    def losses(self, logits: Tensor, *, loss: str, phase: int) -> dict[str, float]:
        """The `LOSS_FIELDS` of one model's logits (p^2, p) over the grid."""
        y = self.grid[2]
        ce = -log_probs(logits, loss).gather(1, y[:, None]).squeeze(1)  # (p*p,)
        correct = (logits.argmax(dim=1) == y).to(logits.dtype)
        tr, te = self.train_idx, self.test_idx
        w = self.phase_weights[phase].to(ce.device)
        return {
            "train_loss": _weighted_mean(ce[tr], w),
            "train_loss_unweighted": float(ce[tr].double().mean()),
            "train_acc": float(correct[tr].double().mean()),
            "train_acc_weighted": _weighted_mean(correct[tr], w),
            "test_loss": float(ce[te].double().mean()),
            "test_acc": float(correct[te].double().mean()),
            "saturated_mass": _weighted_mean((ce[tr] == 0).to(ce.dtype), w),
        }

    def record(self, epoch: int, phase: int, losses: dict[str, float], adam_scale: float,
               diagnostics: dict[str, float]) -> dict[str, float]:
        """A metrics record: the epoch and phase, the losses, the optimizer's scale and
        diagnostics."""
        out = {"epoch": float(epoch), "phase": float(phase),
               "zipf_s": float(self.phase_s[phase])}
        out.update((k, losses[k]) for k in LOSS_FIELDS[:-1])
        out.update(adam_scale=adam_scale, saturated_mass=losses["saturated_mass"])
        return {**out, **diagnostics}


def batched_losses(evaluators: list[Evaluator], logits: Tensor, *, loss: str,
                   phases: list[int]) -> list[dict[str, float]]:
    """The `LOSS_FIELDS` of K models at once, logits (K, p^2, p), member k with its own
    split and weights (`evaluators[k]`, all on one grid): one batched computation."""
    k, p = len(evaluators), logits.shape[-1]
    y = evaluators[0].grid[2]
    ce = -log_probs(logits.view(-1, p), loss).view(logits.shape).gather(
        2, y[None, :, None].expand(k, -1, 1)).squeeze(2)
    correct = (logits.argmax(dim=2) == y[None, :]).to(logits.dtype)  # (K, p^2)
    tr = torch.stack([ev.train_idx for ev in evaluators])  # (K, n_train)
    te = torch.stack([ev.test_idx for ev in evaluators])
    w = torch.stack([ev.phase_weights[ph] for ev, ph in zip(evaluators, phases)]).to(ce.device)
    ce_tr, ok_tr = ce.gather(1, tr).double(), correct.gather(1, tr).double()
    cols = torch.stack([(ce_tr * w).sum(1), ce_tr.mean(1), ok_tr.mean(1), (ok_tr * w).sum(1),
                        ce.gather(1, te).double().mean(1),
                        correct.gather(1, te).double().mean(1),
                        ((ce_tr == 0).double() * w).sum(1)], 1).tolist()
    return [dict(zip(LOSS_FIELDS, row)) for row in cols]


__all__ = ["Evaluator", "batched_losses", "LOSS_FIELDS"]
