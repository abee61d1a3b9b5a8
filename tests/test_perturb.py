"""The perturbation experiment: rates on planted curves, and every distance curve equal to
an independent recomputation with two plain trainers."""

import dataclasses

import numpy as np
import pytest
import torch

from zgdyn import Config
from zgdyn.cli import main
from zgdyn.analysis.fourier import memorization_projector
from zgdyn.analysis.perturb import perturb_run, rates, stored_perturb
from zgdyn.store.runner import train_run
from zgdyn.store.reader import open_run
from zgdyn.core.train import Trainer


def test_rates_of_planted_exponentials():
    t = np.arange(41.0)
    for r in (0.3, -0.02, 0.0):
        got = rates(1e-5 * np.exp(r * t), early=5)
        assert got["rate_early"] == pytest.approx(r, abs=1e-12)
        assert got["rate_late"] == pytest.approx(r, abs=1e-12)
    # a fast rise that saturates: the early rate sees the rise, the late one the plateau
    kink = np.minimum(1e-6 * np.exp(1.0 * t), 1e-3)
    got = rates(kink, early=5)
    assert got["rate_early"] == pytest.approx(1.0) and got["rate_late"] == pytest.approx(0.0)


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    path = tmp_path_factory.mktemp("perturb") / "g.h5"
    cfg = Config().replace(p=23, train_frac=0.8, hidden=(48, 48), lr=3e-3, epochs=2500,
                           eval_every=50, ckpt_every=50, keyframe_every=500, seed=1)
    train_run(cfg, path)
    return path


def test_curves_equal_an_independent_recomputation(grokked):
    r = perturb_run(str(grokked), zipf_s=(3.0,), eps=(1e-6, 1e-3), epochs=12,
                    directions=("theta_m", "random", "hessian"), seed=5, store=False)
    with open_run(grokked) as run:
        snap = dataclasses.replace(run.snapshot_at(2500), phase=0, switch_epoch=-1)
        cfg = run.config.replace(zipf_s=3.0, window=0, dtype="float64", epochs=2512)
    base = Trainer(cfg, snap)
    theta = base.step.theta.clone()
    v = torch.randn(theta.numel(), generator=torch.Generator().manual_seed(5),
                    dtype=torch.float64)
    v /= v.norm()
    pert = Trainer(cfg, snap)
    pert.step.theta.add_(v, alpha=1e-3 * float(theta.norm()))
    dist = [float((pert.step.theta - base.step.theta).norm())]
    for _ in range(12):
        base.step.step()
        pert.step.step()
        dist.append(float((pert.step.theta - base.step.theta).norm()))
    i = next(k for k, row in enumerate(r.rows) if row.direction == "random"
             and row.eps == 1e-3)
    assert list(r.curves[i]) == dist  # bitwise
    for row in r.rows:
        assert row.start == pytest.approx(row.eps * float(theta.norm()), rel=1e-12)
    pred = r.predictions[0]
    lr, wd = cfg.optim.lr, cfg.optim.weight_decay
    assert pred.hessian_rate == pytest.approx(-lr * pred.mu_min - lr * wd, rel=1e-12)
    assert pred.law_rate == pytest.approx(pred.gamma_inst - lr * wd, rel=1e-12)


def test_theta_m_direction_lies_in_the_memorization_subspace(grokked):
    r = perturb_run(str(grokked), zipf_s=(1.0,), eps=(1e-4,), epochs=5, early=2,
                    directions=("theta_m",), store=True)
    stored = stored_perturb(grokked, 2500)
    assert stored.rows == r.rows and stored.curves == r.curves
    with open_run(grokked) as run:
        key = run.analysis("trajectory")
    # the perturbed start minus the point is eps |theta| v with v = theta_M / |theta_M|
    with open_run(grokked) as run:
        params = {k: t.double() for k, t in run.params_at(2500).items()}
    from zgdyn.analysis.fourier import key_freqs_of
    k = key_freqs_of(params, 23) if key is None else key["attrs"]["settings"]["key"]
    project = memorization_projector(23, k)
    pm = project(params)
    twice = project(pm)
    for name in params:
        torch.testing.assert_close(twice[name], pm[name], rtol=1e-12, atol=1e-12)
    assert r.predictions[0].m_w == pytest.approx(
        float(torch.cat([t.flatten() for t in pm.values()]).norm()), rel=1e-9)
    # the direction itself: a unit vector entirely inside the memorization subspace
    assert r.rows[0].overlap_theta_m == pytest.approx(1.0, rel=1e-9)
    other = perturb_run(str(grokked), zipf_s=(1.0,), eps=(1e-4,), epochs=4, early=1,
                        directions=("random",), store=False)
    assert other.rows[0].overlap_theta_m < 0.9  # a random one is not


def test_perturb_cli(grokked, tmp_path, capsys):
    fig = tmp_path / "p.png"
    args = ["perturb", str(grokked), "--zipf-s", "3", "--eps", "1e-5", "--epochs", "8",
            "--directions", "random", "--plot", str(fig)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "early rate" in out and "Hessian" in out
    assert fig.stat().st_size > 10_000 and fig.with_suffix(".pdf").exists()
    assert main(args) == 2  # the figure exists: refused before any work
    assert "--force" in capsys.readouterr().err
    for bad, word in ((["--eps", "2"], "eps"), (["--epochs", "2"], "epochs"),
                      (["--zipf-s", "-1"], "zipf_s")):
        assert main(["perturb", str(grokked), *bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and word in err
