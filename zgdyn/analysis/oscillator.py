"""Collapse events and cycle statistics from a run's metrics. Pure numpy.

A collapse is an evaluated epoch where the train loss first exceeds `threshold` times its
minimum over the preceding `lookback` epochs (and after the previous collapse's peak);
after one, detection rests for `refractory` epochs. Its duration is the 10% -> 90% rise of
log train loss from that minimum to the peak that follows, interpolated between
evaluations. The fits (a)-(c) and Adam's clock below build on these events.

    >>> events = detect_events(m["epoch"], m["train_loss"], test_acc=m["test_acc"])
    >>> stats = cycle_statistics(events, m["epoch"], m["test_acc"])
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

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


# -- per-event rates (fit a) ------------------------------------------------------------------


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


# -- oscillation features, shared by the data and the fitted models ---------------------------


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


# -- the 1-D law (fit b) and the 2-D slow-fast model (fit c) ---------------------------------
#
# Both are fitted by multiple shooting: the trajectory is cut into segments of equal length,
# each integrated from its observed first state, and least_squares matches the predictions
# within each segment. Shooting from observed states keeps a phase error in one cycle from
# spoiling the rest, which is what makes oscillator fits converge.


@dataclass(frozen=True)
class Fit:
    """A fitted model: parameters with standard errors, and its score on the fast variable."""

    model: str  # "1d" or "2d"
    slow: str | None  # the 2-D model's slow variable
    names: list[str]
    params: list[float]
    stderr: list[float | None]
    n: int  # fast-variable residuals scored
    rss: float  # their sum of squares (in units of the fast variable's standard deviation)
    aic: float  # n ln(rss / n) + 2 k
    simulated: Oscillation | None  # the fitted model run freely
    scales: dict[str, float]  # how the data were standardized: x = (raw - mean) / std

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def param(self, name: str) -> float:
        return self.params[self.names.index(name)]


def _segments(n: int, length: int) -> np.ndarray:
    """(S, length + 1) sample indices of consecutive segments sharing their end points."""
    starts = np.arange(0, n - length, length)
    return starts[:, None] + np.arange(length + 1)[None, :]


def _stderr(res: Any, n: int) -> list[float | None]:
    k = len(res.x)
    try:
        cov = np.linalg.inv(res.jac.T @ res.jac) * (2 * res.cost) / max(n - k, 1)
        return [float(np.sqrt(c)) if c >= 0 else None for c in np.diag(cov)]
    except np.linalg.LinAlgError:
        return [None] * k


def _aic(rss: float, n: int, k: int) -> float:
    return float(n * np.log(max(rss, 1e-300) / n) + 2 * k)


def fit_1d(t: np.ndarray, m: np.ndarray, lam: float, *, segment: int,
           mask: np.ndarray | None = None) -> Fit:
    """Fit (b): d ln m/dt = γ(m) − λ with γ(m) = g0 + g1·ln(m / m_ref), m_ref the geometric
    mean of m. The flow is linear in u = ln(m / m_ref), so each segment has a closed form.
    mask: samples a segment may touch (e.g. False around collapses: fitted between events).
    Residuals are on u, in units of its standard deviation.
    """
    from scipy.optimize import least_squares

    t = np.asarray(t, np.float64)
    u = np.log(np.asarray(m, np.float64))
    ref, sd = float(u.mean()), float(u.std()) or 1.0
    u = u - ref
    seg = _segments(len(t), segment)
    if mask is not None:
        seg = seg[np.all(np.asarray(mask)[seg], axis=1)]
    if not len(seg):
        raise ValueError("fit_1d: no segment of the requested length lies between events")
    dt = t[seg] - t[seg[:, :1]]
    u0 = u[seg[:, 0]][:, None]

    def predict(x: np.ndarray) -> np.ndarray:
        c, g1 = x[0] - lam, x[1]
        if abs(g1) * dt.max() < 1e-9:
            return u0 + c * dt
        return (u0 + c / g1) * np.exp(g1 * dt) - c / g1

    def resid(x: np.ndarray) -> np.ndarray:
        return ((predict(x) - u[seg])[:, 1:] / sd).ravel()

    span = max(float(t[-1] - t[0]), 1.0)
    best = None
    for g1 in (-10 / span, -1 / span, 1 / span):
        res = least_squares(resid, np.array([lam, g1]), x_scale=np.array([lam, 1 / span]))
        if best is None or res.cost < best.cost:
            best = res
    n = best.fun.size
    rss = float(2 * best.cost)
    return Fit(model="1d", slow=None, names=["g0", "g1"], params=[float(v) for v in best.x],
               stderr=_stderr(best, n), n=n, rss=rss, aic=_aic(rss, n, 2), simulated=None,
               scales={"m_ref": float(np.exp(ref)), "sd_ln_m": sd})


def fhn_rhs(v: np.ndarray, w: np.ndarray, tau: float, eps: float, a: float,
            b: float) -> tuple[np.ndarray, np.ndarray]:
    """FitzHugh–Nagumo in its slow-fast form: τ v' = v − v³/3 − w, τ w' = ε (v + a − b w)."""
    return (v - v**3 / 3 - w) / tau, eps * (v + a - b * w) / tau


FHN_NAMES = ["tau", "eps", "a", "b", "x0", "xs", "y0", "ys"]


def _fhn_solve(x: np.ndarray, v0: np.ndarray, w0: np.ndarray, times: np.ndarray,
               rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray] | None:
    """Integrate S segments at once from (v0, w0) (S,), at relative times (L,)."""
    from scipy.integrate import solve_ivp

    tau, eps, a, b = np.exp(x[0]), np.exp(x[1]), x[2], x[3]
    s = len(v0)

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        dv, dw = fhn_rhs(y[:s], y[s:], tau, eps, a, b)
        return np.concatenate([dv, dw])

    with np.errstate(over="ignore", invalid="ignore"):  # a trial step may blow up
        sol = solve_ivp(rhs, (times[0], times[-1]), np.concatenate([v0, w0]), t_eval=times,
                        method="LSODA", rtol=rtol, atol=1e-8)
    if not sol.success or sol.y.shape[1] != len(times):
        return None
    return sol.y[:s], sol.y[s:]


def fit_2d(t: np.ndarray, fast: np.ndarray, slow: np.ndarray, *, segment: int,
           slow_name: str = "slow", period_hint: float | None = None,
           simulate: bool = True) -> Fit:
    """Fit (c): a slow-fast relaxation oscillator (FitzHugh–Nagumo) observed through an
    affine map, x = x0 + xs·v (fast), y = y0 + ys·w (slow), both standardized first.

    Parameters tau (the fast time, in units of t) and eps (the slow/fast ratio) are fitted
    in log space; a and b place the slow nullcline; x0, xs, y0, ys are the observation map.
    Needs samples at equal spacing. Residuals are on both variables; the fit's score (rss,
    aic) counts the fast variable's only, so it compares with `fit_1d` on the same data.
    """
    from scipy.optimize import least_squares

    t = np.asarray(t, np.float64)
    xm, xsd = float(np.mean(fast)), float(np.std(fast)) or 1.0
    ym, ysd = float(np.mean(slow)), float(np.std(slow)) or 1.0
    X = (np.asarray(fast, np.float64) - xm) / xsd
    Y = (np.asarray(slow, np.float64) - ym) / ysd
    dt = float(np.median(np.diff(t)))
    seg = _segments(len(t), segment)
    times = (t[seg[0]] - t[seg[0, 0]]) / dt  # in samples, to keep the numbers near 1
    Xs, Ys = X[seg], Y[seg]

    def resid(x: np.ndarray) -> np.ndarray:
        x0, xs, y0, ys = x[4:]
        sol = _fhn_solve(x, (Xs[:, 0] - x0) / xs, (Ys[:, 0] - y0) / ys, times)
        if sol is None:
            return np.full(2 * Xs[:, 1:].size, 1e3)
        v, w = sol
        return np.concatenate([(x0 + xs * v - Xs)[:, 1:].ravel(),
                               (y0 + ys * w - Ys)[:, 1:].ravel()])

    period = (period_hint or oscillation(t, X).period or float(t[-1] - t[0]) / 3) / dt
    lo, hi = np.quantile(X, 0.02), np.quantile(X, 0.98)
    ylo, yhi = np.quantile(Y, 0.02), np.quantile(Y, 0.98)
    best = None
    for eps in (0.02, 0.08):
        for sign in (1.0, -1.0):
            a, b = 0.3, 0.5
            tau = period * eps / 1.6  # relaxation period ~ 1.6 tau / eps at small eps
            x_init = np.array([np.log(tau), np.log(eps), a, b, (lo + hi) / 2, (hi - lo) / 4,
                               (ylo + yhi) / 2, sign * (yhi - ylo) / 1.4])
            # bounds keep the observation map from degenerating (a slow variable scaled to
            # nothing decouples it); the time scales stay within the data's
            lower = [np.log(0.05), np.log(1e-4), -3, 0, -5, 0.05, -5, 0.05 if sign > 0 else -5]
            upper = [np.log(len(t)), 0.0, 3, 5, 5, 5, 5, 5 if sign > 0 else -0.05]
            x_init = np.clip(x_init, np.array(lower) + 1e-9, np.array(upper) - 1e-9)
            try:
                res = least_squares(resid, x_init, bounds=(lower, upper), method="trf",
                                    max_nfev=100 * len(x_init))
            except (ValueError, FloatingPointError):
                continue
            if best is None or res.cost < best.cost:
                best = res
    if best is None:
        raise ValueError("fit_2d: every start failed to integrate")
    x = best.x
    n_fast = Xs[:, 1:].size
    rss = float(np.sum(best.fun[:n_fast] ** 2))
    err = _stderr(best, best.fun.size)
    params = [float(np.exp(x[0]) * dt), float(np.exp(x[1])), *map(float, x[2:])]
    stderr = [None if err[0] is None else err[0] * params[0],  # d exp(u) = exp(u) du
              None if err[1] is None else err[1] * params[1], *err[2:]]
    sim = simulate_fhn(params, t0=float(t[0]), x_start=float(X[0]), y_start=float(Y[0]),
                       duration=12 * period * dt, skip=2 * period * dt) if simulate else None
    return Fit(model="2d", slow=slow_name, names=FHN_NAMES, params=params, stderr=stderr,
               n=n_fast, rss=rss, aic=_aic(rss, n_fast, len(x)), simulated=sim,
               scales={"fast_mean": xm, "fast_std": xsd, "slow_mean": ym, "slow_std": ysd})


def simulate_fhn(params: list[float], *, t0: float, x_start: float, y_start: float,
                 duration: float, skip: float, n: int = 20_000,
                 trajectory: bool = False) -> Any:
    """Run the fitted 2-D model freely (in standardized observed units) and measure its
    oscillation after `skip`; with `trajectory`, return (t, x, y) instead."""
    from scipy.integrate import solve_ivp

    tau, eps, a, b, x0, xs, y0, ys = params
    sol = solve_ivp(lambda _t, s: np.array(fhn_rhs(s[0], s[1], tau, eps, a, b)),
                    (t0, t0 + duration), [(x_start - x0) / xs, (y_start - y0) / ys],
                    t_eval=np.linspace(t0, t0 + duration, n), method="LSODA", rtol=1e-8,
                    atol=1e-10)
    tt, x, y = sol.t, x0 + xs * sol.y[0], y0 + ys * sol.y[1]
    if trajectory:
        return tt, x, y
    keep = tt >= t0 + skip
    return oscillation(tt[keep], x[keep])


# -- Adam's clock ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AdamClock:
    """Adam's second-moment scale a = sqrt(mean v_hat) across the cycle.

    Between collapses the gradients are tiny, so v decays by beta2 per step and ln a falls at
    (1 - beta2)/2 per epoch; a collapse throws a back up. If each collapse starts when a has
    fallen to a_onset, the period is ln(a_peak / a_onset) / rate: the clock's prediction.
    """

    rate: list[float]  # fitted -d ln a/dt per interval between collapses
    rate_expected: float  # (1 - beta2) / 2
    a_onset: list[float]  # a at the last evaluation before each collapse
    a_peak: list[float]  # the largest a within `after` epochs of each collapse
    period_predicted: list[float]  # ln(a_peak_k / a_onset_k+1) / rate_k, per interval
    period_observed: list[float]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def adam_clock(events: list[Event], epochs: np.ndarray, adam_scale: np.ndarray, beta2: float,
               *, after: int = 500, margin: int = 1_000) -> AdamClock:
    """Fit the clock from the evaluations' `adam_scale` (epochs sorted)."""
    t = np.asarray(epochs, np.float64)
    la = np.log(np.maximum(np.asarray(adam_scale, np.float64), 1e-300))
    ev = [e.epoch for e in events]
    onset, peak = [], []
    for e in ev:
        before = np.flatnonzero(t < e)
        onset.append(float(np.exp(la[before[-1]])) if len(before) else float("nan"))
        near = (t >= e) & (t <= e + after)
        peak.append(float(np.exp(la[near].max())) if near.any() else float("nan"))
    rate, pred, obs = [], [], []
    for k in range(len(ev) - 1):
        sel = (t >= ev[k] + margin) & (t <= ev[k + 1] - 2 * (t[1] - t[0] if len(t) > 1 else 1))
        if sel.sum() < 3:
            continue
        slope, _ = _slope(t[sel], la[sel])
        rate.append(-slope)
        pred.append(float(np.log(peak[k] / onset[k + 1]) / -slope))
        obs.append(float(ev[k + 1] - ev[k]))
    return AdamClock(rate=rate, rate_expected=(1 - beta2) / 2, a_onset=onset, a_peak=peak,
                     period_predicted=pred, period_observed=obs)


__all__ = ["Event", "check_threshold", "detect_events", "drop_continuations", "CycleStats",
           "cycle_statistics", "EventRates", "event_rates", "Oscillation", "oscillation", "Fit",
           "fit_1d", "fhn_rhs", "FHN_NAMES", "fit_2d", "simulate_fhn", "AdamClock", "adam_clock"]
