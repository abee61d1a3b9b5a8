import numpy as np
import pytest
import torch

from zgdyn.core.config import OptimConfig
from zgdyn.analysis.growth import adamw_direction, crossing, gamma_curve, gamma_fd, gamma_inst


@pytest.mark.parametrize("rate", [0.004, -0.002])
def test_gamma_fd_recovers_exponential_rates(rate):
    lam = 1e-3
    epochs = np.arange(0, 20_000, 250)
    m = 3.0 * np.exp((rate - lam) * epochs)  # dm/dt = (γ − λ) m with γ = rate
    g = gamma_fd(epochs, m, lam)
    np.testing.assert_allclose(g, rate, rtol=0.02)


def test_gamma_inst_recovers_planted_growth_and_agrees_with_fd():
    """θ ← θ(1 − λ) − lr·u with u = −(g/lr)·θ_M grows θ_M at rate g per epoch by the update."""
    lam, lr, g = 1e-3, 1e-3, 0.01
    torch.manual_seed(0)
    theta_m = torch.randn(50, dtype=torch.float64)
    ms, ginst = [], []
    for _ in range(400):
        u = -(g / lr) * theta_m
        ginst.append(gamma_inst(u, theta_m, lr))
        ms.append(float(theta_m.norm()))
        theta_m = theta_m * (1 - lam) - lr * u
    assert np.allclose(ginst, g, rtol=1e-12)
    g_fd = gamma_fd(np.arange(400), np.array(ms), lam)
    np.testing.assert_allclose(g_fd[1:-1], g, rtol=0.02)  # log(1 + g − λ) + λ ≈ g


def test_adamw_direction_is_the_next_step_of_torch_adamw():
    optim = OptimConfig(lr=1e-2, weight_decay=0.5)
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(20, dtype=torch.float64))
    opt = torch.optim.AdamW([p], lr=optim.lr, weight_decay=optim.weight_decay)
    for _ in range(5):
        p.grad = torch.randn(20, dtype=torch.float64)
        opt.step()
    st = opt.state[p]
    grad = torch.randn(20, dtype=torch.float64)
    u = adamw_direction(grad, st["exp_avg"].clone(), st["exp_avg_sq"].clone(),
                        int(st["step"]), optim)
    expected = p.detach() * (1 - optim.lr * optim.weight_decay) - optim.lr * u
    p.grad = grad
    opt.step()
    torch.testing.assert_close(p.detach(), expected, rtol=1e-12, atol=1e-14)


def test_gamma_curve_bins_and_crossing():
    rng = np.random.default_rng(0)
    m = np.geomspace(1, 100, 2000)
    gamma = 2e-3 - 1e-3 * np.log10(m) + rng.normal(0, 1e-4, m.size)  # crosses λ at m = 10
    curve = gamma_curve(m, gamma, lam=1e-3, n_bins=10, seed=0)
    assert curve.count.sum() == 2000 and len(curve.m_center) == 10
    assert np.all(curve.lo <= curve.gamma) and np.all(curve.gamma <= curve.hi)
    assert curve.m_star == pytest.approx(10, rel=0.1)
    assert gamma_curve(m, np.full(m.size, 5e-4), lam=1e-3).m_star is None


def test_crossing_interpolates_in_log_x():
    assert crossing(np.array([1.0, 100.0]), np.array([1.0, -1.0])) == pytest.approx(10.0)
    assert crossing(np.array([1.0, 2.0]), np.array([1.0, 1.0])) is None
