import json

import numpy as np
import pytest
import torch

from zgdyn.cli import main
from zgdyn.analysis.hessian import dense_hessian
from zgdyn.store.runner import train_run
from zgdyn.analysis.stability import hessian_at, load_point, saddle_table
from zgdyn.store.reader import open_run


@pytest.fixture(scope="module")
def grokked(tmp_path_factory):
    """A small s = 0 run; its last keyframe has Adam state."""
    from helpers import small_config
    path = tmp_path_factory.mktemp("stab") / "r.h5"
    cfg = small_config(epochs=400).replace(p=7, hidden=(6,), train_frac=0.6)
    train_run(cfg, path)
    return path


def _dense(point, s, coupled_wd=0.0):
    return dense_hessian(point.loss(s, coupled_wd), point.theta)


@pytest.mark.parametrize("method", ["block", "arpack"])
def test_hessian_at_matches_dense_and_is_stored(grokked, method):
    point = load_point(str(grokked))
    h = _dense(point, 1.5)
    evals = torch.linalg.eigvalsh(h)
    r = hessian_at(str(grokked), zipf_s=1.5, k=3, which="both", method=method)
    assert r.method == method and "1e-06" in r.tolerance
    np.testing.assert_allclose(r.eigenvalues[:3], evals.flip(0)[:3].numpy(), rtol=1e-6,
                               atol=1e-9)
    np.testing.assert_allclose(r.eigenvalues[3:], evals.flip(0)[-3:].numpy(), rtol=1e-6,
                               atol=1e-9)
    assert r.converged and max(r.residuals) < 1e-6
    assert all(0 <= o <= 1 for o in r.overlap_theta_m)
    with open_run(grokked) as run:
        stored = run.analysis("hessian/epoch400_s1.5_both_k3_float64")
        np.testing.assert_allclose(stored["eigenvalues"], r.eigenvalues)
        assert stored["eigenvectors"].shape == (point.theta.numel(), 6)


@pytest.mark.parametrize("method", ["block", "arpack"])
def test_preconditioned_matches_dense(grokked, method):
    point = load_point(str(grokked))
    o = point.config.optim
    d = point.v.sqrt() / np.sqrt(1 - o.beta2 ** point.step) + o.eps
    s = d.rsqrt()
    m = s[:, None] * _dense(point, 2.0) * s[None, :]
    evals = torch.linalg.eigvalsh(m)
    r = hessian_at(str(grokked), zipf_s=2.0, k=2, which="both", preconditioned=True,
                   store=False, method=method)
    np.testing.assert_allclose([r.eigenvalues[0], r.eigenvalues[-1]],
                               [float(evals[-1]), float(evals[0])], rtol=1e-5)
    expected = -o.lr * np.array(r.eigenvalues) - o.lr * o.weight_decay
    np.testing.assert_allclose(r.growth_rates, expected)
    assert r.adam_threshold == pytest.approx(38 / o.lr)


@pytest.mark.parametrize("method", ["block", "arpack"])
def test_coupled_view_shifts_by_wd(grokked, method):
    a = hessian_at(str(grokked), zipf_s=1.0, k=1, which="top", store=False, method=method)
    b = hessian_at(str(grokked), zipf_s=1.0, k=1, which="top", coupled_wd=0.5, store=False,
                   method=method)
    assert b.eigenvalues[0] == pytest.approx(a.eigenvalues[0] + 0.5, rel=1e-6)


def test_saddle_table_rows_agree_with_dense(grokked, capsys):
    r = saddle_table(str(grokked), exponents=(0.0, 2.0), tol=1e-8)
    point = load_point(str(grokked))
    for row in r.rows:
        evals = torch.linalg.eigvalsh(_dense(point, row.zipf_s))
        assert row.lambda_min == pytest.approx(float(evals[0]), rel=1e-5, abs=1e-9)
        assert row.lambda_max == pytest.approx(float(evals[-1]), rel=1e-5)
        g = torch.func.grad(point.loss(row.zipf_s))(point.theta)
        assert row.grad_norm == pytest.approx(float(g.norm()), rel=1e-9)
        assert row.growth_rate == pytest.approx(-1e-3 * row.pre_lambda_min - 1e-3)
    assert main(["saddle", str(grokked), "--zipf-s", "0", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["zipf_s"] for row in out["rows"]] == [0.0, 1.0]
    assert main(["saddle", str(grokked), "--epoch", "20"]) == 2  # a checkpoint, not a keyframe
    assert "not a keyframe" in capsys.readouterr().err


def test_hessian_cli_text_and_errors(grokked, capsys):
    assert main(["hessian", str(grokked), "--k", "2", "--which", "top", "--zipf-s", "1"]) == 0
    out = capsys.readouterr().out
    assert "of L_s, s = 1" in out and "HVPs" in out and "tolerance: |H u - λ u| <=" in out
    with pytest.raises(SystemExit) as exit_:
        main(["hessian", str(grokked), "--k", "2", "--method", "simplex"])
    assert exit_.value.code == 2 and "--method" in capsys.readouterr().err
    assert main(["hessian", str(grokked), "--k", "0"]) == 2
    assert "k: must be" in capsys.readouterr().err
    assert main(["hessian", str(grokked), "--preconditioned", "--epoch", "20"]) == 2
    assert "not a keyframe" in capsys.readouterr().err


def test_a_stablemax_run_gets_stablemax_curvature(tmp_path):
    """The Hessian of a StableMax run is StableMax's (written out densely here), whichever
    method is asked for; preconditioning is refused for an optimizer that is not AdamW."""
    from helpers import small_config
    from zgdyn.core.config import ZgdynError
    from zgdyn.analysis.hessian import weighted_loss_fn
    path = tmp_path / "r.h5"
    train_run(small_config(epochs=100).replace(p=7, hidden=(6,), train_frac=0.6,
                                               loss="stablemax"), path)
    point = load_point(str(path))
    a, b, y = point.pairs
    h = dense_hessian(weighted_loss_fn(7, a, b, y, point.weights(1.5), like=point.like,
                                       loss="stablemax"), point.theta)
    soft = dense_hessian(weighted_loss_fn(7, a, b, y, point.weights(1.5), like=point.like),
                         point.theta)
    top = float(torch.linalg.eigvalsh(h)[-1])
    assert abs(top - float(torch.linalg.eigvalsh(soft)[-1])) > 1e-3 * abs(top)
    for method in ("block", "arpack"):
        r = hessian_at(str(path), zipf_s=1.5, k=1, which="top", method=method, store=False)
        assert r.eigenvalues[0] == pytest.approx(top, rel=1e-6)
    sgd = tmp_path / "sgd.h5"
    train_run(small_config(epochs=100).replace(p=7, hidden=(6,), train_frac=0.6,
                                               optimizer="sgd", lr=0.1), sgd)
    with pytest.raises(ZgdynError, match="this run trains with sgd"):
        hessian_at(str(sgd), zipf_s=1.5, k=1, preconditioned=True, store=False)


def test_progress_counts_every_hvp(grokked, monkeypatch):
    """The bars of hessian and saddle count the products the solvers report."""
    import zgdyn.analysis.stability as st

    bars = []

    class Bar:
        def __init__(self, total=None, **kw):
            self.n, self.total, self.closed = 0, total, False
            bars.append(self)

        def update(self, k):
            self.n += k

        def set_postfix(self, **kw):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(st, "progress_bar", lambda progress, total=None, **kw:
                        Bar(total) if progress else None)
    for method in ("block", "arpack"):
        r = hessian_at(str(grokked), zipf_s=1.5, k=2, method=method, store=False,
                       progress=True)
        assert bars[-1].closed and bars[-1].n >= r.n_hvp - 2 * 2 > 0
    t = saddle_table(str(grokked), exponents=(0.0, 1.5), steps=40, store=False, progress=True)
    assert bars[-1].closed and bars[-1].n == sum(row.n_hvp for row in t.rows)
    assert bars[-1].n <= bars[-1].total
    hessian_at(str(grokked), zipf_s=1.5, k=2, store=False)
    assert len(bars) == 3  # no bar without progress
