"""The oscillator fits against data with planted structure: a FitzHugh–Nagumo relaxation
oscillator, a known 1-D law, and planted exponential growth and decay around collapses."""

import numpy as np
import pytest

from zgdyn.analysis.oscillator import fit_1d, fit_2d, simulate_fhn
from zgdyn.analysis.events import Event, event_rates, oscillation

# tau (epochs), eps, a, b, then the observation map x = x0 + xs v, y = y0 + ys w
TRUE = [40.0, 0.05, 0.3, 0.5, 10.0, 2.0, -3.0, 0.5]


@pytest.fixture(scope="module")
def fhn_data():
    t, x, y = simulate_fhn(TRUE, t0=0, x_start=8.0, y_start=-3.0, duration=8000, skip=0,
                           n=4001, trajectory=True)
    rng = np.random.default_rng(0)
    return t, x + rng.normal(0, 0.02 * x.std(), len(x)), y + rng.normal(0, 0.02 * y.std(),
                                                                          len(y))


def test_oscillation_features_of_a_known_wave():
    t = np.arange(0, 10_000.0)
    x = np.where((t % 1000) < 300, 1.0, 0.0)  # high 30% of each 1000-epoch cycle
    o = oscillation(t, x)
    assert o.n_jumps == 9  # the first cycle starts high: no jump
    assert o.period == pytest.approx(1000) and o.duty == pytest.approx(0.3)
    assert o.rise == pytest.approx(0.8)  # a one-sample jump, interpolated
    assert oscillation(t, np.exp(-t / 3000)).n_jumps == 0


def test_2d_fit_recovers_a_relaxation_oscillator(fhn_data):
    t, x, y = fhn_data
    truth = simulate_fhn(TRUE, t0=0, x_start=8.0, y_start=-3.0, duration=30_000, skip=4000)
    fit = fit_2d(t, x, y, segment=20)
    sc = fit.scales
    got = dict(zip(fit.names, fit.params))
    assert got["tau"] == pytest.approx(TRUE[0], rel=0.1)
    assert got["eps"] == pytest.approx(TRUE[1], rel=0.1)
    assert got["a"] == pytest.approx(TRUE[2], rel=0.1)
    assert got["b"] == pytest.approx(TRUE[3], rel=0.1)
    assert sc["fast_mean"] + sc["fast_std"] * got["x0"] == pytest.approx(TRUE[4], rel=0.1)
    assert sc["fast_std"] * got["xs"] == pytest.approx(TRUE[5], rel=0.1)
    assert sc["slow_std"] * got["ys"] == pytest.approx(TRUE[7], rel=0.1)
    assert all(s is not None and s > 0 for s in fit.stderr)
    assert fit.simulated.period == pytest.approx(truth.period, rel=0.05)
    assert fit.simulated.duty == pytest.approx(truth.duty, rel=0.05)
    # a 1-D autonomous flow cannot oscillate: the information criterion says so
    one = fit_1d(t, np.exp(x), 1e-3, segment=20)
    assert one.n == fit.n and fit.aic < one.aic - 1000


def test_1d_fit_recovers_a_known_law():
    lam, g0, g1 = 1e-3, 1.2e-3, -2e-4  # d ln m/dt = g0 + g1 ln(m / m_ref) - lam
    t = np.arange(0, 40_000, 250.0)
    u = np.empty_like(t)
    u[0] = 3.0
    for i in range(1, len(t)):  # the exact flow, restarted every 10,000 epochs (kicks)
        u0 = 3.0 if t[i] % 10_000 == 0 else u[i - 1]
        c = g0 - lam
        u[i] = u0 if t[i] % 10_000 == 0 else (u0 + c / g1) * np.exp(g1 * 250) - c / g1
    ref = u.mean()
    m = np.exp(u + np.random.default_rng(1).normal(0, 1e-3, len(u)))
    fit = fit_1d(t, m, lam, segment=8, mask=(t % 10_000) >= 2000)
    # in the fit's own reference: g0' = g0 + g1 * ref
    assert fit.param("g1") == pytest.approx(g1, rel=0.05)
    assert fit.param("g0") == pytest.approx(g0 + g1 * ref, rel=0.05)


def test_event_rates_recover_planted_growth_and_decay():
    lam = 1e-3
    t = np.arange(0, 20_000.0)
    lm = np.full_like(t, 1.0)
    events = []
    for e in (5_000, 15_000):
        rise = (t >= e) & (t < e + 40)
        lm[rise] = 1.0 + 0.05 * (t[rise] - e)  # growth 0.05 per epoch for 40 epochs
        after = t >= e + 40
        lm[after] = np.maximum(3.0 - 2e-4 * (t[after] - e - 40), 1.0)  # decay 2e-4 per epoch
        events.append(Event(epoch=e + 10, base_loss=1e-6, peak_loss=1.0, peak_epoch=e + 40,
                            loss_ratio=1e6, duration=30.0, test_acc_before=None,
                            test_acc_after=None, fourier_before=None, fourier_after=None))
    rates = event_rates(events, t, np.exp(lm), lam)
    for r in rates:
        assert r.growth == pytest.approx(0.05, rel=1e-6)
        assert r.decay == pytest.approx(2e-4, rel=1e-4)
        assert r.growth_over_lambda == pytest.approx(50)


def test_adam_clock_on_a_planted_sawtooth():
    from zgdyn.analysis.oscillator import adam_clock

    t = np.arange(0, 100_000, 100.0)
    starts = [0, 30_000, 61_000, 80_000]
    la = np.empty_like(t)
    for k, s in enumerate(starts):  # a jumps to 1e-2, then ln a falls at 5e-4 per epoch
        seg = t >= s
        la[seg] = np.log(1e-2) - 5e-4 * (t[seg] - s)
    events = [Event(epoch=s, base_loss=1e-6, peak_loss=1.0, peak_epoch=s, loss_ratio=1e6,
                    duration=1.0, test_acc_before=None, test_acc_after=None,
                    fourier_before=None, fourier_after=None) for s in starts[1:]]
    clock = adam_clock(events, t, np.exp(la), beta2=0.999)
    assert clock.rate == pytest.approx([5e-4, 5e-4], rel=1e-9)
    assert clock.rate_expected == pytest.approx(5e-4)
    # predicted from the level at onset: within one evaluation interval of the truth
    assert clock.period_observed == [31_000, 19_000]
    assert clock.period_predicted == pytest.approx([31_000, 19_000], abs=101)


def test_fit_warnings_name_too_few_collapses_and_loose_parameters():
    from zgdyn.analysis.analyze import fit_warnings

    law = {"names": ["g0", "g1"], "params": [9.7e-4, 4.3e-5], "stderr": [1.5e-6, 4.5e-6]}
    osc = {"names": ["tau", "eps"], "params": [3.2e3, 0.5], "stderr": [4.86e3, 0.01]}
    fits = {"events": [25_401], "1d": {"between_events": None, "whole": law},
            "2d": {"chosen": "fourier", "fits": {"fourier": osc}}}
    warnings = fit_warnings(fits)
    assert warnings[0].startswith("the 2-D model's period and duty cycle need at least 2 "
                                  "collapses, this run has 1")
    assert warnings[1] == ("2-D model (slow = fourier): tau = 3.2e+03 has a standard error "
                           "4.86e+03 larger than itself")
    assert len(warnings) == 2
    fits["events"] = [25_401, 56_714]
    osc["stderr"][0] = 100.0
    assert fit_warnings(fits) == []
