"""The collapse detector that watches a run's train loss as it trains, and the window of
every-epoch records it collects around each collapse.

    >>> watch = CollapseWatch(k=100, threshold=100.0, n=theta.numel(), dtype=..., device=...)
    >>> watch.observe(t, loss_t, theta_next)   # may open a Window; watch.due(e) says when
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .config import LOOKBACK, REFRACTORY


@dataclass
class Window:
    """Every epoch around one detected collapse: epochs trigger - k ... trigger + k."""

    trigger: int  # the first epoch whose train loss exceeded threshold x base_loss
    base_loss: float  # the minimum train loss over the preceding LOOKBACK epochs
    trigger_loss: float
    epochs: list[int] = field(default_factory=list)
    thetas: list[Tensor] = field(default_factory=list)  # flat parameter vectors (copies)
    scales: list[float] = field(default_factory=list)  # Adam's second-moment scale
    metrics: list[dict[str, float]] = field(default_factory=list)  # filled when it closes


class CollapseWatch:
    """Online collapse detector with a ring buffer of the last `k` + 2 parameter vectors.

    It sees every step's train loss, L(theta_t), once theta_{t+1} exists. It fires at epoch t
    when L(theta_t) > threshold x min{L(theta_s): t - LOOKBACK <= s < t, s after the last
    collapse's peak}, the rule of `events.detect_events`, then rests REFRACTORY epochs.
    A firing opens a `Window` holding the buffered epochs t - k ... t + 1; it collects every
    epoch up to t + k and is then due. Its scalar state (`state()`) is small and goes into
    every keyframe; the buffers are rebuilt on resume by recomputing from an earlier keyframe.
    """

    def __init__(self, k: int, threshold: float, n: int, *, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.k, self.threshold = k, threshold
        self._ring = torch.empty(k + 2, n, dtype=dtype, device=device)
        self._ring_epochs: deque[int] = deque(maxlen=k + 2)  # epochs held, oldest first
        self._ring_scales: list[float] = [math.nan] * (k + 2)
        self._mins: deque[tuple[int, float]] = deque()  # sliding minimum, increasing losses
        self.resting_until, self.last_peak = -1, -1
        self._peak = (-1, -math.inf)
        self.open: Window | None = None
        self.filling = False  # rebuilding buffers on resume: no detection
        self.fired = 0  # collapses detected so far

    def state(self) -> dict[str, float]:
        return {"resting_until": self.resting_until, "last_peak": self.last_peak,
                "peak_epoch": self._peak[0], "peak_loss": self._peak[1], "fired": self.fired}

    def load_state(self, state: dict[str, float]) -> None:
        self.resting_until, self.last_peak = int(state["resting_until"]), int(state["last_peak"])
        self._peak = (int(state["peak_epoch"]), float(state["peak_loss"]))
        self.fired = int(state.get("fired", 0))  # files from before it was counted: 0

    def reset_minimum(self) -> None:
        """Forget the loss history (the loss changes meaning at a switch of weights)."""
        self._mins.clear()

    def remember(self, epoch: int, theta: Tensor, scale: float = math.nan) -> None:
        """Keep theta (and Adam's scale) at `epoch` in the ring buffer (or the open window)."""
        if self.open is not None:
            self.open.epochs.append(epoch)
            self.open.thetas.append(theta.detach().clone())
            self.open.scales.append(scale)
            return
        slot = epoch % (self.k + 2)
        self._ring[slot].copy_(theta)
        self._ring_scales[slot] = scale
        self._ring_epochs.append(epoch)

    def observe(self, t: int, loss: float, theta_next: Tensor, scale: float = math.nan) -> None:
        """L(theta_t) = loss, and theta_{t+1} with Adam's scale then; may open a window."""
        loss = max(loss, 1e-300)
        self.remember(t + 1, theta_next, scale)
        fire = False
        if not self.filling:
            if t <= self.resting_until and loss > self._peak[1]:
                self._peak = (t, loss)
            if self._peak[0] >= 0:
                self.last_peak = self._peak[0]
            if t >= self.resting_until:
                mins = self._mins
                while mins and (mins[0][0] < t - LOOKBACK or mins[0][0] <= self.last_peak):
                    mins.popleft()
                fire = bool(mins) and self.open is None and loss > self.threshold * mins[0][1]
        if fire:
            self.open = Window(trigger=t, base_loss=self._mins[0][1], trigger_loss=loss)
            for e in self._ring_epochs:  # oldest first: t - k ... t + 1
                if e >= t - self.k:
                    self.open.epochs.append(e)
                    self.open.thetas.append(self._ring[e % (self.k + 2)].clone())
                    self.open.scales.append(self._ring_scales[e % (self.k + 2)])
            self.resting_until, self._peak = t + REFRACTORY, (t, loss)
            self.fired += 1
        while self._mins and self._mins[-1][1] >= loss:
            self._mins.pop()
        self._mins.append((t, loss))

    def due(self, epoch: int) -> bool:
        return self.open is not None and epoch >= self.open.trigger + self.k

    def take(self) -> Window:
        """The open window, closed; the ring goes on with its last k + 2 epochs."""
        win, self.open = self.open, None
        self._ring_epochs.clear()
        last = slice(-(self.k + 2), None)
        for e, theta, scale in zip(win.epochs[last], win.thetas[last], win.scales[last]):
            self.remember(e, theta, scale)
        return win


__all__ = ["Window", "CollapseWatch"]
