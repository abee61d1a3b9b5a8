"""Collapse events and cycle statistics from a run's metrics. Pure numpy.

A collapse is an evaluated epoch where the train loss first exceeds `threshold` times its
minimum over the preceding `lookback` epochs (and after the previous collapse's peak);
after one, detection rests for `refractory` epochs. Its duration is the 10% -> 90% rise of
log train loss from that minimum to the peak that follows, interpolated between
evaluations. The fits and Adam's clock (`oscillator`) build on these events.

    >>> events = detect_events(m["epoch"], m["train_loss"], test_acc=m["test_acc"])
    >>> stats = cycle_statistics(events, m["epoch"], m["test_acc"])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ..core.config import LOOKBACK, REFRACTORY, ConfigError


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


def check_threshold(threshold: float) -> None:
    """A collapse threshold is a finite number > 1 (a ConfigError, so a ValueError, if not)."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold) and threshold > 1):
        raise ConfigError(f"threshold: must be a number > 1 (and finite), got {threshold}")


def detect_events(epochs: np.ndarray, train_loss: np.ndarray, *, threshold: float = 100.0,
                  lookback: int = LOOKBACK, refractory: int = REFRACTORY,
                  test_acc: np.ndarray | None = None,
                  fourier: tuple[np.ndarray, np.ndarray] | None = None) -> list[Event]:
    """Collapse events in a train-loss trajectory (epochs (n,), train_loss (n,)).

    fourier: optional (epochs (m,), Fourier energy (m,)) from `zgdyn analyze`.
    """
    check_threshold(threshold)
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


def drop_continuations(events: list[Event], *, refractory: int = REFRACTORY,
                       grid: float = 100.0) -> list[Event]:
    """The events without those that fire as soon as the detector's rest allows, within
    `grid` (the evaluation interval) of `refractory` epochs after the previous event: the
    loss was still rising, so they continue that event rather than start a new one. An
    interval set by the refractory time is the detector's, not the run's."""
    out: list[Event] = []
    prev = None
    for ev in events:
        if prev is None or ev.epoch > prev + refractory + grid:
            out.append(ev)
        prev = ev.epoch
    return out


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


@dataclass(frozen=True)
class EventRates:
    """Exponential rates of m around one collapse, per epoch, against λ = lr·wd."""

    epoch: int
    growth: float | None  # d ln m / dt over the 10% -> 90% rise of ln m during the collapse
    growth_stderr: float | None
    growth_span: tuple[int, int] | None  # the epochs it was fitted over
    decay: float | None  # -d ln m / dt from m's crest after the collapse to its minimum
    # before the next one
    decay_stderr: float | None
    decay_span: tuple[int, int] | None
    growth_over_lambda: float | None
    decay_over_lambda: float | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _slope(t: np.ndarray, y: np.ndarray) -> tuple[float, float | None]:
    """Least-squares slope of y on t and its standard error."""
    a = np.vstack([t - t.mean(), np.ones_like(t)]).T
    coef, res, *_ = np.linalg.lstsq(a, y, rcond=None)
    if len(t) <= 2:
        return float(coef[0]), None
    s2 = float(np.sum((a @ coef - y) ** 2)) / (len(t) - 2)
    return float(coef[0]), float(np.sqrt(s2 / np.sum((t - t.mean()) ** 2)))


def event_rates(events: list[Event], epochs: np.ndarray, m: np.ndarray, lam: float, *,
                before: int = 200, after: int = 400) -> list[EventRates]:
    """Fit (a): for each collapse, the growth rate of m while it rises and the decay rate
    while it relaxes afterwards. `epochs`, `m`: the memorization amplitude at every stored
    epoch (checkpoints and dense window records), sorted."""
    t = np.asarray(epochs, np.float64)
    lm = np.log(np.maximum(np.asarray(m, np.float64), 1e-300))
    out = []
    for k, ev in enumerate(events):
        nxt = events[k + 1].epoch if k + 1 < len(events) else np.inf
        g = gs = gspan = d = ds = dspan = None
        near = np.flatnonzero((t >= ev.epoch - before) & (t <= ev.epoch + after))
        if len(near) >= 3:
            top = near[int(np.argmax(lm[near]))]
            lead = near[near <= top]
            low = lead[int(np.argmin(lm[lead]))]
            rise = np.arange(low, top + 1)
            lo, hi = lm[low], lm[top]
            sel = rise[(lm[rise] >= lo + 0.1 * (hi - lo)) & (lm[rise] <= lo + 0.9 * (hi - lo))]
            if len(sel) >= 2 and hi > lo:
                g, gs = _slope(t[sel], lm[sel])
                gspan = (int(t[sel[0]]), int(t[sel[-1]]))
            later = np.flatnonzero((t >= t[top]) & (t < nxt))
            if len(later) >= 3:  # from the highest m before the next collapse to the lowest
                crest = later[int(np.argmax(lm[later]))]
                later = later[later >= crest]
                bottom = later[int(np.argmin(lm[later]))]
                fall = later[later <= bottom]
                if len(fall) >= 3:
                    slope, ds = _slope(t[fall], lm[fall])
                    d, dspan = -slope, (int(t[fall[0]]), int(t[fall[-1]]))
        out.append(EventRates(epoch=ev.epoch, growth=g, growth_stderr=gs, growth_span=gspan,
                              decay=d, decay_stderr=ds, decay_span=dspan,
                              growth_over_lambda=None if g is None else g / lam,
                              decay_over_lambda=None if d is None else d / lam))
    return out


@dataclass(frozen=True)
class Oscillation:
    """Period, duty cycle and jump duration of a fast signal x(t) with up-jumps."""

    n_jumps: int
    period: float | None  # mean time between up-jumps
    period_std: float | None
    duty: float | None  # fraction of each cycle spent above the midpoint of x's range
    rise: float | None  # mean 10% -> 90% duration of an up-jump


def oscillation(t: np.ndarray, x: np.ndarray, *, low: float = 0.25,
                high: float = 0.75) -> Oscillation:
    """Up-jumps are crossings of the `high` quantile level of x's range after having been
    below the `low` level (hysteresis), so noise does not count as a jump."""
    t = np.asarray(t, np.float64)
    x = np.asarray(x, np.float64)
    lo_v, hi_v = np.quantile(x, 0.02), np.quantile(x, 0.98)
    span = hi_v - lo_v
    if not span > 0:
        return Oscillation(0, None, None, None, None)
    a, b, mid = lo_v + low * span, lo_v + high * span, lo_v + 0.5 * span
    armed, ups, rises = False, [], []
    last_low = 0
    for i in range(len(x)):
        if x[i] <= a:
            armed, last_low = True, i
        elif armed and x[i] >= b:
            armed = False
            ups.append(i)
            seg = slice(last_low, min(len(x), i + max(2, (i - last_low) + 1)))
            ts, xs = t[seg], x[seg]
            j = int(np.argmax(xs)) + 1
            ts, xs = ts[:j], xs[:j]
            if len(xs) >= 2 and xs[-1] > xs[0]:
                r10 = _crossing_time(ts, xs, xs[0] + 0.1 * (xs[-1] - xs[0]))
                r90 = _crossing_time(ts, xs, xs[0] + 0.9 * (xs[-1] - xs[0]))
                rises.append(r90 - r10)
    times = t[ups]
    periods = np.diff(times)
    duty = None
    if len(ups) >= 2:
        cyc = (t >= times[0]) & (t < times[-1])
        duty = float(np.mean(x[cyc] > mid))
    return Oscillation(
        n_jumps=len(ups),
        period=float(periods.mean()) if len(periods) else None,
        period_std=float(periods.std(ddof=1)) if len(periods) > 1 else None,
        duty=duty, rise=float(np.mean(rises)) if rises else None)


__all__ = ["Event", "check_threshold", "detect_events", "drop_continuations", "CycleStats",
           "cycle_statistics", "EventRates", "event_rates", "Oscillation", "oscillation"]
