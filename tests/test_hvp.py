"""The hand-written HVP against the dense Hessian (tiny models) and torch.func (p = 97)."""

import numpy as np
import pytest
import torch

from zgdyn.core.data import make_split, zipf_weights
from zgdyn.analysis.hessian import dense_hessian, flatten_params, gradient, make_hvp, weighted_loss_fn
from zgdyn.analysis.hvp import MLPHessian
from zgdyn.core.model import build_model


def _problem(p, hidden, s, *, train_frac=0.5, init="torch", seed=0, dtype="float64"):
    split = make_split(p, train_frac, seed=3)
    a, b, y = split.tokens(split.train_idx)
    w = zipf_weights(split, s)
    model = build_model(p, hidden, init=init, seed=seed, dtype=dtype)
    like = {k: v.detach() for k, v in model.named_parameters()}
    return like, a, b, y, w


def _rel(x, ref):
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("p, hidden, s", [(7, (8, 6), 1.5), (11, (5,), 0.0),
                                          (13, (6, 5, 4), 3.0), (7, (9, 7), 0.37)])
def test_products_equal_the_dense_hessian(p, hidden, s):
    """H V for V = I is the dense Hessian, for one to three hidden layers and any exponent."""
    like, a, b, y, w = _problem(p, hidden, s)
    theta = flatten_params(like)
    loss = weighted_loss_fn(p, a, b, y, w, like=like)
    H = dense_hessian(loss, theta)
    mh = MLPHessian(p, like, a, b, y, w)
    n = theta.numel()
    assert mh.n == n
    assert _rel(mh.block(torch.eye(n, dtype=torch.float64)), H) < 1e-10
    assert mh.loss == pytest.approx(float(loss(theta)), rel=1e-13)
    assert _rel(mh.grad, gradient(loss, theta)) < 1e-12
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert _rel(mh(v), H @ v) < 1e-10


def test_block_rows_equal_single_products_and_chunks_agree():
    like, a, b, y, w = _problem(11, (10, 8), 1.5)
    mh = MLPHessian(11, like, a, b, y, w)
    V = torch.randn(7, mh.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    HV = mh.block(V)
    single = torch.stack([mh(v) for v in V])
    torch.testing.assert_close(HV, single, rtol=1e-12, atol=1e-14)
    chunked = MLPHessian(11, like, a, b, y, w, max_block=3).block(V)
    torch.testing.assert_close(chunked, HV, rtol=1e-12, atol=1e-14)
    # symmetric: <u, H v> = <H u, v>
    assert float(V[0] @ HV[1]) == pytest.approx(float(HV[0] @ V[1]), rel=1e-11)


def test_coupled_weight_decay_adds_wd_identity():
    like, a, b, y, w = _problem(7, (6,), 1.0)
    plain = MLPHessian(7, like, a, b, y, w)
    wd = MLPHessian(7, like, a, b, y, w, coupled_wd=0.3)
    V = torch.randn(3, plain.n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(wd.block(V) - plain.block(V), 0.3 * V, rtol=1e-12, atol=1e-14)
    theta = flatten_params(like)
    assert wd.loss == pytest.approx(plain.loss + 0.15 * float(theta @ theta), rel=1e-13)
    torch.testing.assert_close(wd.grad, plain.grad + 0.3 * theta)


def test_float32_runs_in_float32_and_near_float64():
    like, a, b, y, w = _problem(7, (8, 6), 1.5)
    mh64 = MLPHessian(7, like, a, b, y, w)
    mh32 = MLPHessian(7, like, a, b, y, w, dtype=torch.float32)
    v = torch.randn(mh64.n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out = mh32(v)
    assert out.dtype == torch.float32
    assert _rel(out.double(), mh64(v)) < 1e-5


def test_the_parameter_order_of_the_dict_does_not_matter():
    like, a, b, y, w = _problem(7, (8, 6), 1.5)
    shuffled = {k: like[k] for k in sorted(like)}  # e.g. an HDF5 group's order
    v = torch.randn(MLPHessian(7, like, a, b, y, w).n, dtype=torch.float64)
    torch.testing.assert_close(MLPHessian(7, shuffled, a, b, y, w)(v),
                               MLPHessian(7, like, a, b, y, w)(v), rtol=0, atol=0)


def test_an_unknown_loss_is_refused():
    like, a, b, y, w = _problem(7, (6,), 1.0)
    with pytest.raises(ValueError, match="loss: must be"):
        MLPHessian(7, like, a, b, y, w, loss="stablemax")


def test_products_do_not_depend_on_where_the_vector_lives():
    """The same vector at eight byte offsets gives bitwise the same product."""
    like, a, b, y, w = _problem(23, (32, 32), 1.5, train_frac=0.3, init="lecun")
    mh = MLPHessian(23, like, a, b, y, w)
    x = np.random.default_rng(0).standard_normal(mh.n)
    outs = []
    for off in range(8):
        buf = np.empty(mh.n + 8)
        buf[off:off + mh.n] = x
        outs.append(mh(torch.from_numpy(buf[off:off + mh.n])))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.fixture(scope="module")
def p97():
    like, a, b, y, w = _problem(97, (128, 128), 1.5, train_frac=0.3, init="lecun")
    return like, a, b, y, w


def test_p97_equals_torch_func_in_float64(p97):
    like, a, b, y, w = p97
    theta = flatten_params(like)
    ref = make_hvp(weighted_loss_fn(97, a, b, y, w, like=like), theta)
    mh = MLPHessian(97, like, a, b, y, w)
    V = torch.randn(2, mh.n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    HV = mh.block(V)
    for v, hv in zip(V, HV):
        assert _rel(hv, ref(v)) < 1e-10


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_products_equal_the_cpu_ones_and_repeat_bitwise():
    like, a, b, y, w = _problem(23, (32, 32), 1.5, train_frac=0.3, init="lecun")
    cpu = MLPHessian(23, like, a, b, y, w)
    gpu = MLPHessian(23, like, a, b, y, w, device="cuda")
    V = torch.randn(3, cpu.n, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    HV = gpu.block(V)
    assert HV.device.type == "cuda"
    assert _rel(HV.cpu(), cpu.block(V)) < 1e-12
    assert torch.equal(gpu.block(V), HV)
