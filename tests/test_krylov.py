"""The block Krylov extremes against known spectra, the dense Hessian and ARPACK."""

import numpy as np
import pytest
import torch

from zgdyn.core.data import make_split, zipf_weights
from zgdyn.analysis.hessian import dense_hessian, extreme_eigs, flatten_params, weighted_loss_fn
from zgdyn.analysis.hvp import MLPHessian
from zgdyn.analysis.krylov import as_block, block_extremes
from zgdyn.core.model import build_model


def _matrix(spec, seed=0):
    """A (n, n) symmetric float64 matrix with eigenvalues `spec` and random eigenvectors."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((len(spec), len(spec))))
    return torch.from_numpy(q @ np.diag(spec) @ q.T), torch.from_numpy(q)


def _op(a, calls=None):
    def op(V):
        if calls is not None:
            calls.append(V.shape[0])
        return V @ a  # rows: (A V^T)^T = V A for symmetric A
    return op


SPEC = np.r_[-3.0, -2.5, -1.0, np.linspace(-0.5, 0.5, 194), 2.0, 5.0, 40.0]


@pytest.mark.parametrize("which, expect", [("top", [40.0, 5.0, 2.0]),
                                           ("bottom", [-1.0, -2.5, -3.0]),
                                           ("both", [40.0, 5.0, 2.0, -1.0, -2.5, -3.0])])
def test_a_known_spectrum(which, expect):
    a, q = _matrix(SPEC)
    res = block_extremes(_op(a), a.shape[0], k=3, which=which, tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues.numpy(), expect, rtol=1e-9)
    assert res.converged and float(res.residuals.max()) <= 1e-10 * 40.0
    assert res.eigenvectors.shape == (a.shape[0], len(expect))
    # unit eigenvectors, each the matrix's own up to sign
    torch.testing.assert_close(res.eigenvectors.norm(dim=0), torch.ones(len(expect),
                                                                         dtype=torch.float64))
    order = np.argsort(SPEC)
    for j, lam in enumerate(expect):
        col = q[:, order[np.searchsorted(SPEC[order], lam)]]
        assert abs(float(res.eigenvectors[:, j] @ col)) > 1 - 1e-8


def test_the_residuals_are_fresh_and_the_tolerance_is_relative_to_the_scale():
    a, _ = _matrix(SPEC)
    res = block_extremes(_op(a), a.shape[0], k=2, which="both", tol=1e-3)
    true = (res.eigenvectors.t() @ a - res.eigenvalues[:, None] * res.eigenvectors.t()).norm(dim=1)
    torch.testing.assert_close(res.residuals, true, rtol=1e-8, atol=1e-14)
    assert res.converged == bool((true <= 1e-3 * 40.0).all())
    assert float(true.max()) > 1e-8  # a loose tolerance stops early: the check is real


def test_thick_restarts_keep_converging():
    a, _ = _matrix(SPEC)
    calls = []
    res = block_extremes(_op(a, calls), a.shape[0], k=3, which="both", tol=1e-10, block=2,
                         max_dim=20, keep=8)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [40, 5, 2, -1, -2.5, -3], rtol=1e-9)
    assert res.converged and res.n_hvp == sum(calls) > 20  # it restarted at least once
    assert max(calls) <= 6  # blocks of 2 rows, and last the 6 pairs' fresh residuals


def test_a_warm_start_from_the_eigenvectors_converges_at_once():
    a, _ = _matrix(SPEC)
    cold = block_extremes(_op(a), a.shape[0], k=2, which="both", tol=1e-10)
    warm = block_extremes(_op(a), a.shape[0], k=2, which="both", tol=1e-10,
                          x0=cold.eigenvectors.t())
    np.testing.assert_allclose(warm.eigenvalues.numpy(), cold.eigenvalues.numpy(), rtol=1e-10)
    assert warm.n_hvp <= 2 * 4 < cold.n_hvp  # one block of products and the check


def test_a_rank_deficient_start_is_filled():
    a, _ = _matrix(SPEC)
    v = torch.randn(1, a.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    res = block_extremes(_op(a), a.shape[0], k=2, which="both", tol=1e-10,
                         x0=torch.cat([v, 2 * v, -v, v]), block=4)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [40, 5, -2.5, -3], rtol=1e-9)


def test_bitwise_repeatable_and_seeded():
    a, _ = _matrix(SPEC)
    runs = [block_extremes(_op(a), a.shape[0], k=2, which="both", tol=1e-8, seed=3)
            for _ in range(2)]
    assert torch.equal(runs[0].eigenvalues, runs[1].eigenvalues)
    assert torch.equal(runs[0].eigenvectors, runs[1].eigenvectors)
    assert runs[0].n_hvp == runs[1].n_hvp


def test_bad_arguments_are_refused():
    a, _ = _matrix(SPEC)
    with pytest.raises(ValueError, match="which"):
        block_extremes(_op(a), a.shape[0], which="middle")
    with pytest.raises(ValueError, match="k:"):
        block_extremes(_op(a), a.shape[0], k=0)
    with pytest.raises(ValueError, match="max_dim"):
        block_extremes(_op(a), a.shape[0], k=3, max_dim=7)


@pytest.fixture(scope="module")
def mlp():
    """p = 11, hidden (10, 8), s = 1.5 at a random init: its dense Hessian's spectrum."""
    split = make_split(11, 0.5, seed=3)
    a, b, y = split.tokens(split.train_idx)
    w = zipf_weights(split, 1.5)
    model = build_model(11, (10, 8), init="torch", seed=0, dtype="float64")
    like = {k: v.detach() for k, v in model.named_parameters()}
    loss = weighted_loss_fn(11, a, b, y, w, like=like)
    evals = torch.linalg.eigvalsh(dense_hessian(loss, flatten_params(like)))
    return MLPHessian(11, like, a, b, y, w), evals


def test_the_mlp_hessian_against_dense_and_arpack(mlp):
    mh, evals = mlp
    k = 4
    res = block_extremes(mh.block, mh.n, k=k, which="both", tol=1e-10)
    expect = torch.cat([evals.flip(0)[:k], evals[:k].flip(0)])
    scale = float(evals.abs().max())
    torch.testing.assert_close(res.eigenvalues, expect, rtol=0, atol=1e-10 * scale)
    ref = extreme_eigs(mh, mh.n, k=k, which="both", tol=1e-12)  # ARPACK, the reference
    torch.testing.assert_close(res.eigenvalues, ref.eigenvalues, rtol=0, atol=1e-10 * scale)
    assert res.converged


def test_as_block_wraps_a_one_vector_operator(mlp):
    mh, _ = mlp
    V = torch.randn(3, mh.n, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(as_block(mh)(V), mh.block(V), rtol=1e-12, atol=1e-14)
