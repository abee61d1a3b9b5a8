import math

import numpy as np
import pytest
import torch
from torch import nn

from zgdyn.core.data import make_split, zipf_weights
from zgdyn.analysis.hessian import (adam_preconditioner, adam_stability_threshold, dense_hessian,
                                    extreme_eigs, flatten_params, gradient, gradient_overlaps,
                                    hutchinson_trace, linearized_growth_rates, make_hvp,
                                    per_pair_gradients, preconditioned_hvp, rademacher_probes,
                                    slq_density, smoothed_density, subspace_overlap, unflatten,
                                    weighted_loss_fn)
from zgdyn.core.model import build_model, functional_logits, param_shapes


def _problem(p=7, hidden=(8, 6), s=1.5, seed=0, coupled_wd=0.0):
    split = make_split(p, 0.5, seed=3)
    a, b, y = split.tokens(split.train_idx)
    w = zipf_weights(split, s)
    model = build_model(p, hidden, init="torch", seed=seed, dtype="float64")
    like = {k: v.detach() for k, v in model.named_parameters()}
    loss = weighted_loss_fn(p, a, b, y, w, like=like, coupled_wd=coupled_wd)
    return dict(p=p, a=a, b=b, y=y, w=w, like=like, theta=flatten_params(like), loss=loss)


@pytest.fixture(scope="module")
def prob():
    """p = 7, hidden (8, 6), s = 1.5 at a random init: n = 223, with its dense Hessian."""
    pr = _problem()
    pr["H"] = dense_hessian(pr["loss"], pr["theta"])
    pr["evals"], pr["evecs"] = torch.linalg.eigh(pr["H"])  # ascending
    return pr


def test_flatten_unflatten_roundtrip_and_order():
    like = {k: torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
            for k, s in param_shapes(7, (5, 4)).items()}
    theta = flatten_params(like)
    assert theta.numel() == sum(t.numel() for t in like.values())
    back = unflatten(theta, like)
    assert list(back) == list(like)
    for k in like:
        assert torch.equal(back[k], like[k])
    assert torch.equal(flatten_params(unflatten(theta, param_shapes(7, (5, 4)))), theta)
    shuffled = {k: like[k] for k in sorted(like)}  # e.g. a snapshot's HDF5 key order
    assert not torch.equal(flatten_params(shuffled), theta)
    assert torch.equal(flatten_params(shuffled, order=like), theta)
    with pytest.raises(ValueError):
        unflatten(theta[:-1], like)


@pytest.mark.parametrize("s", [0.0, 1.0, 2.5])
def test_loss_uses_zipf_weights(s):
    pr = _problem(p=11, hidden=(6,), s=s)
    a, b, y = (torch.as_tensor(t) for t in (pr["a"], pr["b"], pr["y"]))
    logits = functional_logits(pr["like"], a, b, p=11)
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    w = torch.as_tensor(pr["w"])
    direct = (ce * w).sum()
    assert pr["loss"](pr["theta"]).item() == pytest.approx(direct.item(), rel=1e-13)
    if s > 0:  # the weights matter: the uniform mean is a different number
        assert abs(direct.item() - ce.mean().item()) > 1e-6


def test_loss_stablemax_is_the_dense_formula():
    pr = _problem(p=11, hidden=(6,), s=1.5)
    a, b, y = (torch.as_tensor(t) for t in (pr["a"], pr["b"], pr["y"]))
    z = functional_logits(pr["like"], a, b, p=11)
    sz = torch.where(z >= 0, z + 1, 1 / (1 - z))  # Prieto et al.'s s(x), written out
    direct = -(torch.log(sz.gather(1, y[:, None]).squeeze(1) / sz.sum(1)) * torch.as_tensor(pr["w"])).sum()
    lf = weighted_loss_fn(11, pr["a"], pr["b"], pr["y"], pr["w"], like=pr["like"], loss="stablemax")
    assert lf(pr["theta"]).item() == pytest.approx(direct.item(), rel=1e-13)
    assert abs(direct.item() - pr["loss"](pr["theta"]).item()) > 1e-3  # softmax differs
    with pytest.raises(ValueError, match="softmax"):
        weighted_loss_fn(11, pr["a"], pr["b"], pr["y"], pr["w"], like=pr["like"], loss="sparsemax")(pr["theta"])


def test_gradient_matches_autograd(prob):
    params = {k: v.clone().requires_grad_() for k, v in prob["like"].items()}
    prob["loss"](flatten_params(params)).backward()
    expect = flatten_params({k: t.grad for k, t in params.items()})
    torch.testing.assert_close(gradient(prob["loss"], prob["theta"]), expect,
                               rtol=1e-12, atol=1e-15)


def test_hvp_equals_dense_hessian(prob):
    H, n = prob["H"], prob["theta"].numel()
    torch.testing.assert_close(H, H.t(), rtol=0, atol=1e-12)
    hvp = make_hvp(prob["loss"], prob["theta"])
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        v = torch.randn(n, dtype=torch.float64, generator=gen)
        torch.testing.assert_close(hvp(v), H @ v, rtol=1e-10, atol=1e-10)
    # a float32 vector is promoted to the float64 of theta
    assert hvp(v.float()).dtype == torch.float64


def test_coupled_weight_decay_adds_wd_identity(prob):
    wd = 0.37
    loss_wd = _problem(coupled_wd=wd)["loss"]
    H_wd = dense_hessian(loss_wd, prob["theta"])
    n = prob["theta"].numel()
    torch.testing.assert_close(H_wd - prob["H"], wd * torch.eye(n, dtype=torch.float64),
                               rtol=0, atol=1e-12)
    th = prob["theta"]
    assert loss_wd(th).item() == pytest.approx(prob["loss"](th).item() + 0.5 * wd * th.dot(th).item(),
                                               rel=1e-13)


def _check_pairs(res, evals, evecs, cols):
    scale = evals.abs().max().item()
    torch.testing.assert_close(res.eigenvalues, evals[cols], rtol=1e-8, atol=1e-10 * scale)
    for j, c in enumerate(cols):
        assert abs(torch.dot(res.eigenvectors[:, j], evecs[:, c]).item()) > 0.999
    assert res.residuals.shape == (len(cols),)
    assert res.residuals.max().item() < 1e-5 * scale
    assert res.converged


@pytest.mark.parametrize("which", ["top", "bottom", "both"])
def test_extreme_eigs_match_dense_eigh(prob, which):
    k, n = 4, prob["theta"].numel()
    evals, evecs = prob["evals"], prob["evecs"]
    res = extreme_eigs(make_hvp(prob["loss"], prob["theta"]), n, k=k, which=which, seed=1)
    top = list(range(n - 1, n - 1 - k, -1))
    bottom = list(range(k - 1, -1, -1))
    cols = {"top": top, "bottom": bottom, "both": top + bottom}[which]
    assert torch.all(res.eigenvalues[:-1] >= res.eigenvalues[1:])
    assert res.eigenvectors.shape == (n, len(cols))
    assert res.n_hvp > len(cols)
    _check_pairs(res, evals, evecs, cols)


def test_bottom_finds_negative_curvature_at_random_point(prob):
    assert prob["evals"][0].item() < -1e-3  # the weighted loss is not convex here
    res = extreme_eigs(make_hvp(prob["loss"], prob["theta"]), prob["theta"].numel(), k=3,
                       which="bottom", seed=2)
    assert res.eigenvalues[-1].item() < 0
    assert res.eigenvalues[-1].item() == pytest.approx(prob["evals"][0].item(), rel=1e-8)


def test_extreme_eigs_reports_non_convergence(prob):
    res = extreme_eigs(make_hvp(prob["loss"], prob["theta"]), prob["theta"].numel(), k=4,
                       which="bottom", tol=1e-15, maxiter=1, ncv=9, seed=0)
    assert not res.converged
    assert res.eigenvectors.shape[1] == res.eigenvalues.shape[0] <= 4


def test_residuals_are_the_true_residuals(prob):
    """A loose tolerance leaves residuals well above rounding: they must be ‖Hv − λv‖."""
    H, n = prob["H"], prob["theta"].numel()
    res = extreme_eigs(make_hvp(prob["loss"], prob["theta"]), n, k=4, which="top", tol=0.1,
                       ncv=9, seed=0)
    dense = (H @ res.eigenvectors - res.eigenvectors * res.eigenvalues).norm(dim=0)
    assert dense.max().item() > 1e-4
    torch.testing.assert_close(res.residuals, dense, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(res.eigenvectors.norm(dim=0), torch.ones(4, dtype=torch.float64))


def test_hutchinson_trace_within_three_stderr(prob):
    n = prob["theta"].numel()
    est, err = hutchinson_trace(make_hvp(prob["loss"], prob["theta"]), n, n_probes=100, seed=3)
    trace = torch.trace(prob["H"]).item()
    assert math.isfinite(err) and err > 0
    assert abs(est - trace) < 3 * err


def test_slq_moments_and_support(prob):
    H, n = prob["H"], prob["theta"].numel()
    hvp = make_hvp(prob["loss"], prob["theta"])
    n_probes, seed = 8, 4
    nodes, weights = slq_density(hvp, n, n_probes=n_probes, n_steps=25, seed=seed)
    assert nodes.shape == weights.shape and len(nodes) <= n_probes * 25
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(weights >= 0)
    lo, hi = prob["evals"][0].item(), prob["evals"][-1].item()
    slack = 1e-9 * max(abs(lo), abs(hi))
    assert nodes.min() >= lo - slack and nodes.max() <= hi + slack
    # Gauss quadrature is exact for z^T H z / n and z^T H^2 z / n with these same probes
    Z = rademacher_probes(n, n_probes, seed)
    m1 = (torch.einsum("pi,ij,pj->p", Z, H, Z).mean() / n).item()
    m2 = ((Z @ H).pow(2).sum(1).mean() / n).item()
    assert (weights * nodes).sum() == pytest.approx(m1, rel=1e-9, abs=1e-12)
    assert (weights * nodes ** 2).sum() == pytest.approx(m2, rel=1e-9)
    est, err = hutchinson_trace(hvp, n, n_probes, seed)
    assert (weights * nodes).sum() == pytest.approx(est / n, rel=1e-9, abs=1e-12)
    assert abs((weights * nodes).sum() - torch.trace(H).item() / n) < 3 * err / n
    # the smoothed density integrates to one
    grid = np.linspace(lo - 1, hi + 1, 4001)
    rho = smoothed_density(nodes, weights, grid, sigma=0.05 * (hi - lo))
    assert np.trapezoid(rho, grid) == pytest.approx(1.0, abs=1e-3)


def test_slq_with_full_lanczos_recovers_extremes():
    pr = _problem(p=7, hidden=(6,))
    n = pr["theta"].numel()
    evals = torch.linalg.eigvalsh(dense_hessian(pr["loss"], pr["theta"]))
    nodes, weights = slq_density(make_hvp(pr["loss"], pr["theta"]), n, n_probes=1,
                                 n_steps=n, seed=0)
    scale = evals.abs().max().item()
    assert nodes.max() == pytest.approx(evals[-1].item(), abs=1e-8 * scale)
    assert nodes.min() == pytest.approx(evals[0].item(), abs=1e-8 * scale)


def _adam_state(n, seed=6):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, dtype=torch.float64, generator=gen) * 1e-4 + 1e-9


def test_preconditioned_operator_equals_dense(prob):
    H, n = prob["H"], prob["theta"].numel()
    v2, step, beta2, eps = _adam_state(n), 120, 0.999, 1e-8
    d = adam_preconditioner(v2, step, beta2, eps)
    torch.testing.assert_close(d, torch.sqrt(v2 / (1 - beta2 ** step)) + eps, rtol=1e-14, atol=0)
    s = d.rsqrt()
    M = s[:, None] * H * s[None, :]
    op = preconditioned_hvp(make_hvp(prob["loss"], prob["theta"]), d)
    x = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(op(x), M @ x, rtol=1e-10, atol=1e-10 * M.abs().max().item())
    mu = torch.linalg.eigvalsh(M)
    res = extreme_eigs(op, n, k=3, which="both", seed=0)
    expect = torch.cat([mu[-3:].flip(0), mu[:3].flip(0)])
    torch.testing.assert_close(res.eigenvalues, expect, rtol=1e-8, atol=0)
    with pytest.raises(ValueError):
        adam_preconditioner(v2, 0, beta2, eps)


def test_adam_stability_threshold():
    assert adam_stability_threshold(1e-3, 0.9) == pytest.approx(38_000)
    assert adam_stability_threshold(1e-2, 0.0) == pytest.approx(200)  # plain GD: 2/lr


def test_linearized_growth_rates_predict_the_linear_map(prob):
    lr, wd = 1e-2, 0.3
    mu = torch.tensor([-1.0, -0.3, 0.0, 2.0], dtype=torch.float64)
    rates = linearized_growth_rates(mu, lr, wd)
    torch.testing.assert_close(rates, torch.tensor([0.007, 0.0, -0.003, -0.023],
                                                   dtype=torch.float64), rtol=0, atol=1e-15)
    assert (rates > 0).tolist() == [True, False, False, False]
    # iterate the frozen-preconditioner map in theta coordinates; its growth rate is the
    # largest exact rate over the eigenvalues of D^{-1/2} H D^{-1/2}
    H, n = prob["H"], prob["theta"].numel()
    d = adam_preconditioner(_adam_state(n) * 1e3, 500, 0.999, 1e-8)
    s = d.rsqrt()
    mu = torch.linalg.eigvalsh(s[:, None] * H * s[None, :])
    lr = 1.0 / mu.abs().max().item()
    wd = 0.5 * abs(mu[0].item())
    expect = linearized_growth_rates(mu, lr, wd, exact=True).max().item()
    delta = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    log_norm, steps = 0.0, 3000
    for t in range(steps):
        delta = (1 - lr * wd) * delta - lr * (H @ delta) / d
        if t >= steps // 2:
            log_norm += math.log(delta.norm().item())
        delta = delta / delta.norm()
    assert log_norm / (steps - steps // 2) == pytest.approx(expect, abs=2e-3 * abs(expect) + 1e-6)


def test_subspace_overlap_of_vectors_in_and_out():
    n, r = 50, 5
    gen = torch.Generator().manual_seed(10)
    Q, _ = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64, generator=gen))
    project = lambda v: Q @ (Q.t() @ v)
    x = torch.randn(n, dtype=torch.float64, generator=gen)
    inside = 3.0 * Q @ torch.randn(r, dtype=torch.float64, generator=gen)
    outside = x - project(x)
    half = Q[:, 0] + outside / outside.norm()
    ov = subspace_overlap(torch.stack([inside, outside, half], 1), project)
    torch.testing.assert_close(ov, torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64),
                               rtol=0, atol=1e-12)


def test_per_pair_gradients_and_overlaps(prob):
    p, like, theta = prob["p"], prob["like"], prob["theta"]
    a, b, y = prob["a"], prob["b"], prob["y"]
    idx = np.array([0, 3, 7, 11])
    G = per_pair_gradients(p, theta, like, a, b, y, idx, chunk_size=3)
    assert G.shape == (len(idx), theta.numel())
    for row, i in enumerate(idx):
        params = {k: v.clone().requires_grad_() for k, v in like.items()}
        logits = functional_logits(params, torch.tensor([a[i]]), torch.tensor([b[i]]), p=p)
        nn.functional.cross_entropy(logits, torch.tensor([y[i]])).backward()
        expect = flatten_params({k: t.grad for k, t in params.items()})
        torch.testing.assert_close(G[row], expect, rtol=1e-12, atol=1e-15)
    # the weighted sum over all pairs is the loss gradient
    G_all = per_pair_gradients(p, theta, like, a, b, y, np.arange(len(a)))
    torch.testing.assert_close(torch.as_tensor(prob["w"]) @ G_all, gradient(prob["loss"], theta),
                               rtol=1e-10, atol=1e-14)
    vecs = torch.stack([G[1], -2 * G[2], torch.randn(theta.numel(), dtype=torch.float64,
                                                        generator=torch.Generator().manual_seed(11))], 1)
    C = gradient_overlaps(vecs, G)
    assert C.shape == (3, len(idx))
    assert C[0, 1].item() == pytest.approx(1.0, abs=1e-12)
    assert C[1, 2].item() == pytest.approx(-1.0, abs=1e-12)
    expect = torch.dot(vecs[:, 2], G[0]) / (vecs[:, 2].norm() * G[0].norm())
    assert C[2, 0].item() == pytest.approx(expect.item(), rel=1e-12)
    assert torch.all(C.abs() <= 1 + 1e-12)


def test_float32_operator_runs_in_float32(prob):
    theta32 = prob["theta"].float()
    like32 = {k: v.float() for k, v in prob["like"].items()}
    loss32 = weighted_loss_fn(prob["p"], prob["a"], prob["b"], prob["y"], prob["w"], like=like32)
    hvp32 = make_hvp(loss32, theta32)
    v = torch.randn(theta32.numel(), dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    out = hvp32(v)
    assert out.dtype == torch.float32
    H = prob["H"]
    torch.testing.assert_close(out.double(), H @ v, rtol=1e-4, atol=1e-4 * H.abs().max().item())
    res = extreme_eigs(hvp32, theta32.numel(), k=2, which="top", tol=1e-4, seed=0)
    torch.testing.assert_close(res.eigenvalues, prob["evals"][-2:].flip(0), rtol=1e-4, atol=0)


def test_lanczos_extremes_match_a_known_spectrum():
    from zgdyn.analysis.hessian import lanczos_extremes
    rng = np.random.default_rng(0)
    n = 300
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    spec = np.r_[-3.0, -1.0, np.linspace(0, 1, n - 4), 5.0, 40.0]
    a = torch.from_numpy(q @ np.diag(spec) @ q.T)
    res = lanczos_extremes(lambda v: a @ v.double(), n, steps=80, k=2, tol=1e-8)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [40.0, 5.0, -1.0, -3.0], rtol=1e-8)
    assert res.converged and float(res.residuals.max()) < 1e-6
    assert res.n_hvp == 80 + 4
    short = lanczos_extremes(lambda v: a @ v.double(), n, steps=5, k=1, tol=1e-8)
    assert not short.converged  # five steps cannot resolve the bottom of this spectrum


def test_deflated_power_iteration_finds_the_dominant_pairs():
    from zgdyn.analysis.hessian import deflated_power_iteration
    rng = np.random.default_rng(1)
    n = 60
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    spec = np.r_[np.linspace(0, 1, n - 2), 4.0, 8.0]
    a = torch.from_numpy(q @ np.diag(spec) @ q.T)
    res = deflated_power_iteration(lambda v: a @ v.double(), n, k=2, tol=1e-12)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [8.0, 4.0], rtol=1e-8)
    assert res.converged and res.n_hvp > 2


# -- bitwise repeatable: the rounding of a product must not depend on the heap ---------------


def test_torch_func_hvp_does_not_depend_on_where_the_vector_lives():
    """GEMMs round differently for operands at different alignments; a vector that is a
    view into numpy's memory (as ARPACK hands out) must give bitwise the same product."""
    split = make_split(23, 0.3, seed=42)
    a, b, y = split.tokens(split.train_idx)
    model = build_model(23, (32, 32), init="lecun", seed=0, dtype="float64")
    like = {k: v.detach() for k, v in model.named_parameters()}
    theta = flatten_params(like)
    hvp = make_hvp(weighted_loss_fn(23, a, b, y, zipf_weights(split, 1.5), like=like), theta)
    n = theta.numel()
    x = np.random.default_rng(0).standard_normal(n)
    outs = []
    for off in range(8):  # eight byte offsets: every alignment modulo 64
        buf = np.empty(n + 8)
        buf[off:off + n] = x
        outs.append(hvp(torch.from_numpy(buf[off:off + n])))
    assert all(torch.equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("solver", ["arpack", "lanczos"])
def test_solvers_hand_the_operator_aligned_vectors(prob, solver):
    """ARPACK's work array and Lanczos's basis sit wherever numpy put them; the operator
    must see fresh 64-byte-aligned tensors, so its rounding is the same in every call."""
    from zgdyn.analysis.hessian import lanczos_extremes
    hvp = make_hvp(prob["loss"], prob["theta"])
    offsets = []

    def op(v):
        offsets.append(v.data_ptr() % 64)
        return hvp(v)

    n = prob["theta"].numel()
    if solver == "arpack":
        extreme_eigs(op, n, k=2, which="both", seed=0)
    else:
        lanczos_extremes(op, n, steps=30, k=1)
    assert len(offsets) > 10 and set(offsets) == {0}


def test_hessian_and_saddle_repeat_bitwise_in_one_process(tmp_path):
    from helpers import small_config
    from zgdyn.store.runner import train_run
    from zgdyn.analysis.stability import hessian_at, saddle_table
    path = tmp_path / "r.h5"
    train_run(small_config(epochs=200).replace(p=11, hidden=(16, 16)), path)
    keep, runs = [], []
    for i in range(3):
        keep.append(np.empty(17 * i + 3))  # move the heap between the calls
        h = hessian_at(str(path), zipf_s=1.5, k=3, which="both", store=i == 0)
        s = saddle_table(str(path), exponents=(1.5,), store=i == 0)
        runs.append((h.n_hvp, h.eigenvalues, h.residuals, s.rows))
    assert runs[1] == runs[0] and runs[2] == runs[0]
