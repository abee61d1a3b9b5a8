"""Fits to a run's collapse cycle: the 1-D law d ln m/dt = γ(m) − λ (`fit_1d`), a 2-D
FitzHugh–Nagumo relaxation oscillator (`fit_2d`), and Adam's clock, the period that the
decay of √v̂ between collapses predicts (`adam_clock`). They build on the collapse events
of `events`.

    >>> fit = fit_2d(t, fast, slow, segment=0)
    >>> clock = adam_clock(events, m["epoch"], m["adam_scale"], beta2=0.999)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .events import Event, Oscillation, _slope, oscillation


# -- per-event rates (fit a) ------------------------------------------------------------------


# -- oscillation features, shared by the data and the fitted models ---------------------------


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


__all__ = ["Fit", "fit_1d", "fhn_rhs", "FHN_NAMES", "fit_2d", "simulate_fhn", "AdamClock",
           "adam_clock"]
