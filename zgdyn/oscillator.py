"""Collapse events and cycle statistics from a run's metrics. Pure numpy.

A collapse is an evaluated epoch where the train loss first exceeds `threshold` times its
minimum over the preceding `lookback` epochs (and after the previous collapse's peak);
after one, detection rests for `refractory` epochs. Its duration is the 10% -> 90% rise of log train loss from that minimum to the
peak that follows, interpolated between evaluations.

    >>> events = detect_events(m["epoch"], m["train_loss"], test_acc=m["test_acc"])
    >>> stats = cycle_statistics(events, m["epoch"], m["test_acc"])
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Event:
    """One collapse."""

    epoch: int  # first evaluation above threshold x the recent minimum
    base_loss: float  # the recent minimum of the train loss
    peak_loss: float  # the largest train loss within `refractory` epochs after
    peak_epoch: int
    loss_ratio: float  # peak / base
    duration: float  # epochs of the 10% -> 90% rise of log train loss
    test_acc_before: float | None  # last evaluation before the event
    test_acc_after: float | None  # lowest within `refractory` epochs after
    fourier_before: float | None  # Fourier energy at the last analyzed checkpoint before
    fourier_after: float | None  # lowest within `refractory` epochs after

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def _crossing_time(t: np.ndarray, y: np.ndarray, level: float) -> float:
    """The first t where y reaches `level`, interpolated linearly between samples."""
    i = int(np.argmax(y >= level))
    if i == 0:
        return float(t[0])
    f = (level - y[i - 1]) / (y[i] - y[i - 1])
    return float(t[i - 1] + f * (t[i] - t[i - 1]))


def _around(t: np.ndarray, v: np.ndarray | None, start: float, stop: float,
            before: float) -> tuple[float | None, float | None]:
    """(last value before `before`, minimum over [start, stop])."""
    if v is None or not len(t):
        return None, None
    pre = np.flatnonzero(t < before)
    win = (t >= start) & (t <= stop)
    return (float(v[pre[-1]]) if len(pre) else None,
            float(v[win].min()) if win.any() else None)


def detect_events(epochs: np.ndarray, train_loss: np.ndarray, *, threshold: float = 100.0,
                  lookback: int = 2_000, refractory: int = 2_000,
                  test_acc: np.ndarray | None = None,
                  fourier: tuple[np.ndarray, np.ndarray] | None = None) -> list[Event]:
    """Collapse events in a train-loss trajectory (epochs (n,), train_loss (n,)).

    fourier: optional (epochs (m,), Fourier energy (m,)) from `zgdyn analyze`.
    """
    if threshold <= 1:
        raise ValueError(f"threshold: must be > 1, got {threshold}")
    t = np.asarray(epochs, dtype=np.float64)
    loss = np.maximum(np.asarray(train_loss, dtype=np.float64), 1e-300)
    events: list[Event] = []
    resting_until = -np.inf
    last_peak = -np.inf  # the recent minimum is taken after the previous collapse's peak
    lo = 0
    for i in range(1, len(t)):
        while lo < i and (t[lo] < t[i] - lookback or t[lo] <= last_peak):
            lo += 1
        if t[i] < resting_until or lo >= i:
            continue
        base = loss[lo:i].min()
        if loss[i] <= threshold * base:
            continue
        after = (t >= t[i]) & (t <= t[i] + refractory)
        j = int(np.flatnonzero(after)[np.argmax(loss[after])])
        start = int(np.flatnonzero(loss[lo:i] == base)[-1]) + lo  # the minimum's epoch
        seg = slice(start, j + 1)
        lb, lp = np.log(base), np.log(loss[j])
        ly = np.log(loss[seg])
        t10 = _crossing_time(t[seg], ly, lb + 0.1 * (lp - lb))
        t90 = _crossing_time(t[seg], ly, lb + 0.9 * (lp - lb))
        acc_b, acc_a = _around(t, test_acc, t[i], t[i] + refractory, t[i])
        fe_b, fe_a = (_around(np.asarray(fourier[0], np.float64), np.asarray(fourier[1]),
                              t[i], t[i] + refractory, t[i]) if fourier is not None
                      else (None, None))
        events.append(Event(epoch=int(t[i]), base_loss=float(base), peak_loss=float(loss[j]),
                            peak_epoch=int(t[j]), loss_ratio=float(loss[j] / base),
                            duration=t90 - t10, test_acc_before=acc_b, test_acc_after=acc_a,
                            fourier_before=fe_b, fourier_after=fe_a))
        resting_until, last_peak = t[i] + refractory, t[j]
    return events


@dataclass(frozen=True)
class CycleStats:
    """Durations of the build-peak-collapse-recovery cycle, in epochs."""

    n_events: int
    period_mean: float | None  # mean interval between collapses
    period_std: float | None
    build: list[float]  # from the test-accuracy trough after a collapse to the next peak
    peak: list[float]  # from that peak to the next collapse
    collapse: list[float]  # each event's 10% -> 90% rise
    recovery: list[float]  # from a collapse to the test-accuracy trough before the next one
    peak_test_acc: list[float]  # the peak of each full cycle
    return_map: list[tuple[float, float]]  # (peak_k, peak_k+1)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def cycle_statistics(events: list[Event], epochs: np.ndarray,
                     test_acc: np.ndarray) -> CycleStats:
    """Cycle durations and the return map of peak test accuracy between collapses."""
    t = np.asarray(epochs, dtype=np.float64)
    acc = np.asarray(test_acc, dtype=np.float64)
    ev = [e.epoch for e in events]
    periods = np.diff(ev).astype(np.float64)
    build, peak, recovery, peaks = [], [], [], []
    for k, e in enumerate(ev):
        nxt = ev[k + 1] if k + 1 < len(ev) else np.inf
        win = (t > e) & (t < nxt)  # the trough: lowest test accuracy before the next collapse
        if not win.any():
            continue
        trough = t[win][int(np.argmin(acc[win]))]
        recovery.append(float(trough - e))
        if k + 1 < len(ev):
            climb = (t >= trough) & (t < ev[k + 1])
            if climb.any():
                top = int(np.argmax(acc[climb]))
                build.append(float(t[climb][top] - trough))
                peak.append(float(ev[k + 1] - t[climb][top]))
                peaks.append(float(acc[climb][top]))
    return CycleStats(
        n_events=len(ev),
        period_mean=float(periods.mean()) if len(periods) else None,
        period_std=float(periods.std(ddof=1)) if len(periods) > 1 else None,
        build=build, peak=peak, collapse=[e.duration for e in events], recovery=recovery,
        peak_test_acc=peaks, return_map=list(zip(peaks[:-1], peaks[1:])),
    )
