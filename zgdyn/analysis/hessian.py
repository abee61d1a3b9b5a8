"""Hessian spectra of the Zipf-weighted loss: the saddle-point test of the Fourier solution.

Everything works on a flat parameter vector θ (n,), the named parameters concatenated in
dict order, and on *operators*: functions v ↦ A v on flat vectors. An operator accepts v in
any float dtype and on any device and returns A v in its own working dtype and device (that
of θ); the solvers here do their own linear algebra in float64 on the CPU.

    >>> like = dict(model.named_parameters())
    >>> theta = flatten_params(like).detach()
    >>> loss = weighted_loss_fn(p, a, b, y, zipf_weights(split, 1.5), like=like)
    >>> hvp = make_hvp(loss, theta)                          # v ↦ H v, forward-over-reverse
    >>> res = extreme_eigs(hvp, theta.numel(), k=10, which="bottom")
    >>> d = adam_preconditioner(flatten_params(snap.exp_avg_sq, order=like), snap.step,
    ...                         optim.beta2, optim.eps)
    >>> top = extreme_eigs(preconditioned_hvp(hvp, d), theta.numel(), k=5, which="top")
    >>> top.eigenvalues[0] / adam_stability_threshold(optim.lr, optim.beta1)

Order matters: flatten every dict in the same order (``Run.params_at``, ``Run.snapshot_at``
and ``model.named_parameters()`` all use layer order; ``order=`` forces one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import Tensor, nn

from ..core.model import functional_logits

# the flat view, the loss and its derivatives live with the model (`zgdyn.core.flat`), so that
# training can measure along its step; they are part of this module's interface too
from ..core.flat import (Like, LossFn, Operator, _as_tensor, flatten_params,  # noqa: F401
                         gradient, make_hvp, step_curvature, unflatten, weighted_loss_fn)

WHICH = {"top": ("LA",), "bottom": ("SA",), "both": ("LA", "SA")}


def dense_hessian(loss_fn: LossFn, theta: Tensor) -> Tensor:
    """H_ij = ∂²L/∂θ_i∂θ_j (n, n) via torch.func.hessian; for small models (tests) only."""
    return torch.func.hessian(loss_fn)(theta.detach())


def _numpy_operator(op: Operator, n: int) -> tuple[LinearOperator, list[int]]:
    """A float64 scipy LinearOperator around `op`, and a one-element list counting its calls."""
    count = [0]

    def matvec(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        # copied into torch's own (64-byte aligned) memory: ARPACK hands out slices of its
        # work array, whose alignment varies with the heap, and so would the GEMMs' rounding
        v = torch.tensor(np.asarray(x, dtype=np.float64).reshape(n))
        return op(v).detach().to("cpu", torch.float64).numpy()

    return LinearOperator((n, n), matvec=matvec, dtype=np.float64), count


def _residuals(op: Operator, lam: Tensor, vecs: Tensor) -> Tensor:
    """‖A v_j − λ_j v_j‖ (k,) float64 for the columns v_j of vecs (n, k), each from a fresh
    product of a fresh copy (a column's place in memory must not change its rounding)."""
    out = torch.zeros(vecs.shape[1], dtype=torch.float64)
    for j in range(vecs.shape[1]):
        av = op(vecs[:, j].clone()).detach().to("cpu", torch.float64)
        out[j] = (av - lam[j] * vecs[:, j]).norm()
    return out


# -- extreme eigenpairs ---------------------------------------------------------------------


@dataclass(frozen=True)
class EigResult:
    """Extreme eigenpairs of a symmetric operator, largest eigenvalue first."""

    eigenvalues: Tensor  # (k,) float64, descending
    eigenvectors: Tensor  # (n, k) float64, unit columns, column j ↔ eigenvalues[j]
    residuals: Tensor  # (k,) float64, ‖A v_j − λ_j v_j‖ from a fresh operator call
    n_hvp: int  # operator calls, the residual checks included
    converged: bool  # ARPACK converged every requested pair


def extreme_eigs(hvp: Operator, n: int, k: int = 10, which: str = "both", *,
                 tol: float = 1e-6, maxiter: int | None = None, ncv: int | None = None,
                 seed: int = 0) -> EigResult:
    """The k algebraically largest ("top"), smallest ("bottom"), or both (2k pairs) of A v = λ v.

    A (n, n) symmetric, given as an operator; Lanczos with implicit restarts (ARPACK via
    scipy.sparse.linalg.eigsh, which="LA" / "SA") in float64. ARPACK stops when
    ‖A v − λ v‖ ≤ tol·|λ|; with float32 operators use tol ≳ 1e-4. The start vector is
    N(0, I) from numpy's default_rng(seed). If ARPACK does not converge, the pairs it did
    converge are returned (possibly fewer than k) with converged=False. ncv (the Krylov
    space kept between restarts) defaults to max(2k+1, 3k+30): at p = 97 a k = 1 search then
    takes tens to a few hundred HVPs instead of thousands, and k = 10 at both ends 599
    HVPs instead of 774 with ncv = 33.
    """
    if which not in WHICH:
        raise ValueError(f"which: must be {' | '.join(WHICH)}, got {which!r}")
    if not 1 <= k < n:
        raise ValueError(f"k: must be in [1, n={n}), got {k}")
    if ncv is None:  # eigsh's default 2k+1 restarts a k=1 search every 2 HVPs: far slower
        ncv = min(n - 1, max(2 * k + 1, 3 * k + 30))
    op, count = _numpy_operator(hvp, n)
    rng = np.random.default_rng(seed)
    vals, vecs, converged = [], [], True
    for mode in WHICH[which]:
        v0 = rng.standard_normal(n)
        try:
            lam, u = eigsh(op, k=k, which=mode, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0)
        except ArpackNoConvergence as e:
            lam, u, converged = e.eigenvalues, e.eigenvectors, False
        vals.append(np.asarray(lam, dtype=np.float64))
        vecs.append(np.asarray(u, dtype=np.float64).reshape(n, -1))
    lam = np.concatenate(vals)
    u = np.concatenate(vecs, axis=1)
    order = np.argsort(-lam, kind="stable")
    lam_t = torch.tensor(lam[order])  # torch's own memory (see `_lanczos`)
    u_t = torch.tensor(u[:, order])
    u_t = u_t / u_t.norm(dim=0).clamp_min(1e-300)
    resid = _residuals(hvp, lam_t, u_t)
    return EigResult(eigenvalues=lam_t, eigenvectors=u_t, residuals=resid,
                     n_hvp=count[0] + u_t.shape[1], converged=converged)


def deflated_power_iteration(hvp: Operator, n: int, k: int = 1, *, tol: float = 1e-6,
                             maxiter: int = 10_000, seed: int = 0) -> EigResult:
    """The k largest-magnitude eigenpairs by power iteration with deflation (PyHessian's way).

    Each pair iterates v ← A v/‖A v‖, orthogonalized against the pairs found, until the
    Rayleigh quotient changes by less than tol·|λ|. The baseline `zgdyn bench` compares
    Lanczos against; residuals as in `extreme_eigs`.
    """
    rng = np.random.default_rng(seed)
    vecs: list[Tensor] = []
    vals: list[float] = []
    count = 0
    converged = True
    for _ in range(k):
        v = torch.tensor(rng.standard_normal(n))
        lam_old = None
        for _ in range(maxiter):
            for u in vecs:
                v = v - torch.dot(u, v) * u
            v = v / v.norm()
            av = hvp(v).detach().to("cpu", torch.float64)
            count += 1
            lam = float(torch.dot(v, av))
            if lam_old is not None and abs(lam - lam_old) <= tol * abs(lam):
                break
            lam_old, v = lam, av
        else:
            converged = False
        vecs.append(v)
        vals.append(lam)
    u_t = torch.stack(vecs, dim=1)
    lam_t = torch.tensor(vals, dtype=torch.float64)
    resid = _residuals(hvp, lam_t, u_t)
    return EigResult(eigenvalues=lam_t, eigenvectors=u_t, residuals=resid, n_hvp=count + k,
                     converged=converged)


# -- stochastic trace and spectral density ---------------------------------------------------


def _probe_stream(n: int, n_probes: int, seed: int) -> Iterator[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n_probes):
        yield torch.randint(0, 2, (n,), generator=gen).to(torch.float64) * 2 - 1


def rademacher_probes(n: int, n_probes: int, seed: int) -> Tensor:
    """Z (n_probes, n) float64 of independent ±1 entries: the probes `hutchinson_trace` and
    `slq_density` draw for the same (n, seed), in the same order."""
    return torch.stack(list(_probe_stream(n, n_probes, seed)))


def hutchinson_trace(hvp: Operator, n: int, n_probes: int, seed: int) -> tuple[float, float]:
    """tr A ≈ (1/P) Σ_p z_pᵀ A z_p with Rademacher z_p (n,); returns (estimate, its stderr).

    stderr = std(z_pᵀ A z_p, ddof=1) / √P, so P = n_probes ≥ 2.
    """
    if n_probes < 2:
        raise ValueError(f"n_probes: must be >= 2 for a standard error, got {n_probes}")
    quad = np.array([float(torch.dot(z, hvp(z).detach().to("cpu", torch.float64)))
                     for z in _probe_stream(n, n_probes, seed)])
    return float(quad.mean()), float(quad.std(ddof=1) / math.sqrt(n_probes))


def _lanczos(op: Operator, v0: Tensor, m: int, *,
             keep_basis: bool = False) -> tuple[Tensor, ...]:
    """(α (j,), β (j−1,)) of the Lanczos tridiagonal T_j, j ≤ m, with full reorthogonalization,
    and the basis Q (j, n) if keep_basis; stops early at an invariant subspace. All in
    torch's own memory, so the rounding never depends on where numpy put an array."""
    n = v0.numel()
    basis = torch.zeros(min(m, n), n, dtype=torch.float64)
    alpha: list[float] = []
    beta: list[float] = []
    q = v0.to(torch.float64) / v0.to(torch.float64).norm()
    for j in range(basis.shape[0]):
        basis[j] = q
        w = op(q.clone()).detach().to("cpu", torch.float64)
        alpha.append(float(q @ w))
        for _ in range(2):  # twice is enough (Kahan–Parlett)
            w = w - basis[:j + 1].t() @ (basis[:j + 1] @ w)
        b = float(w.norm())
        scale = max(max(abs(x) for x in alpha), max(beta, default=0.0), 1e-300)
        if j == basis.shape[0] - 1 or b <= 1e-10 * scale:
            break
        beta.append(b)
        q = w / b
    a_t = torch.tensor(alpha, dtype=torch.float64)
    b_t = torch.tensor(beta, dtype=torch.float64)
    if keep_basis:
        return a_t, b_t, basis[:len(alpha)]
    return a_t, b_t


def _tridiagonal_eigh(alpha: Tensor, beta: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the symmetric tridiagonal (α, β)."""
    return torch.linalg.eigh(torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1))


def _counted(op: Operator) -> tuple[Operator, list[int]]:
    """`op`, and a one-element list counting its calls."""
    count = [0]

    def counted(v: Tensor) -> Tensor:
        count[0] += 1
        return op(v)

    return counted, count


def lanczos_extremes(hvp: Operator, n: int, *, steps: int = 150, k: int = 1,
                     tol: float = 1e-4, seed: int = 0) -> EigResult:
    """The k largest and k smallest Ritz pairs (2k, largest first) of one Krylov space.

    A fixed budget of `steps` HVPs (plus 2k for the residuals) with full reorthogonalization,
    started from N(0, I) (numpy default_rng(seed)). Unlike ARPACK it always returns, with
    true residuals ‖A v − θ v‖; converged means every residual ≤ tol·max|θ|. Extremes of a
    wide spectrum converge first, so this suits "is there a direction below −wd?".
    """
    op, count = _counted(hvp)
    v0 = torch.tensor(np.random.default_rng(seed).standard_normal(n))
    alpha, beta, basis = _lanczos(op, v0, steps, keep_basis=True)
    theta, s = _tridiagonal_eigh(alpha, beta)
    k = min(k, len(theta) // 2) or 1
    pick = list(range(len(theta) - 1, len(theta) - 1 - k, -1)) + list(range(k - 1, -1, -1))
    lam = theta[pick]
    vecs = basis.t() @ s[:, pick]  # (n, 2k)
    vecs = vecs / vecs.norm(dim=0).clamp_min(1e-300)
    resid = _residuals(hvp, lam, vecs)
    scale = float(theta.abs().max())
    return EigResult(eigenvalues=lam, eigenvectors=vecs, residuals=resid,
                     n_hvp=count[0] + vecs.shape[1],
                     converged=bool((resid <= tol * scale).all()))


def slq_density(hvp: Operator, n: int, n_probes: int, n_steps: int,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic Lanczos quadrature: φ(λ) ≈ Σ_i w_i δ(λ − λ_i); returns (nodes, weights).

    For each Rademacher probe z (n,), m = n_steps Lanczos steps from z/‖z‖ give T_m = S Θ Sᵀ;
    its Gauss rule has nodes Θ_jj and weights S_0j². Weights are averaged over the probes, so
    they sum to 1 and Σ_i w_i f(λ_i) ≈ tr f(A) / n, exactly so for polynomials of degree
    < 2m for each probe's quadratic form. Both arrays (n_probes·m,) float64, or shorter
    where Lanczos found an invariant subspace early.
    """
    if n_probes < 1 or n_steps < 1:
        raise ValueError(f"n_probes and n_steps: must be >= 1, got {n_probes}, {n_steps}")
    nodes, weights = [], []
    for z in _probe_stream(n, n_probes, seed):
        theta, s = _tridiagonal_eigh(*_lanczos(hvp, z, n_steps))
        nodes.append(theta.numpy())
        weights.append(s[0].square().numpy() / n_probes)
    return np.concatenate(nodes), np.concatenate(weights)


def smoothed_density(nodes: np.ndarray, weights: np.ndarray, grid: np.ndarray,
                     sigma: float) -> np.ndarray:
    """ρ(x) = Σ_i w_i N(x; λ_i, σ²) on grid (g,) from `slq_density`'s nodes, weights (q,)."""
    x = np.asarray(grid, dtype=np.float64)[:, None] - np.asarray(nodes, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return kernel @ np.asarray(weights, dtype=np.float64)


# -- Adam's preconditioned spectrum ------------------------------------------------------------


def adam_preconditioner(exp_avg_sq: Tensor, step: int, beta2: float, eps: float) -> Tensor:
    """D = √(v / (1 − β2^t)) + eps (n,): Adam's denominator, op for op as the fused step.

    exp_avg_sq: Adam's second moment v (n,), flattened in θ's order; step: t ≥ 1.
    """
    if step < 1:
        raise ValueError(f"step: Adam's step count must be >= 1, got {step}")
    return exp_avg_sq.sqrt() / math.sqrt(1.0 - beta2 ** step) + eps


def preconditioned_hvp(hvp: Operator, d: Tensor) -> Operator:
    """The symmetric operator v ↦ D^{-1/2} H D^{-1/2} v, D = diag(d) (n,).

    Similar to D^{-1} H, so it has the same eigenvalues: the preconditioned sharpness is
    its top eigenvalue. Computed in d's dtype on d's device.
    """
    s = d.detach().rsqrt()

    def op(v: Tensor) -> Tensor:
        return s * hvp(s * v.to(s)).to(s)

    return op


def adam_stability_threshold(lr: float, beta1: float) -> float:
    """The preconditioned-sharpness threshold of Adam: (2 + 2β1) / ((1 − β1)·η) (38/η at β1=0.9).

    Adam with momentum β1 and step η is linearly stable on a quadratic only while
    λ_max(D^{-1} H) < (2 + 2β1)/((1 − β1) η) (Cohen et al. 2022, "Adaptive gradient methods
    at the edge of stability"), where the preconditioned sharpness is seen to equilibrate.
    """
    return (2.0 + 2.0 * beta1) / ((1.0 - beta1) * lr)


def linearized_growth_rates(eigenvalues_preconditioned: Tensor | np.ndarray, lr: float,
                            weight_decay: float, *, exact: bool = False) -> Tensor:
    """Per-epoch growth rate of a perturbation along each preconditioned eigendirection.

    Linearized AdamW near θ with the preconditioner D frozen and momentum neglected (valid on
    time scales ≫ 1/(1 − β1) epochs): in u = D^{1/2} δθ,
        u ← (1 − η·wd) u − η D^{-1/2} H D^{-1/2} u,
    so along an eigenvector with eigenvalue μ, u ← (1 − η(wd + μ)) u, a rate
        r = log|1 − η(wd + μ)| ≈ −η μ − η wd   (the default; exact=True gives the log).
    r > 0 (growth) iff μ < −wd, i.e. a negative direction steeper than the decay.
    eigenvalues_preconditioned: (k,); returns (k,) float64.
    """
    mu = _as_tensor(eigenvalues_preconditioned).to(torch.float64)
    if exact:
        return torch.log(torch.abs(1.0 - lr * (weight_decay + mu)))
    return -lr * mu - lr * weight_decay


# -- overlaps -----------------------------------------------------------------------------------


def subspace_overlap(vecs: Tensor, project: Callable[[Tensor], Tensor]) -> Tensor:
    """o_j = ‖P v_j‖² / ‖v_j‖² (k,) for columns v_j of vecs (n, k), P an orthogonal projector
    on flat vectors (n,) given by the caller (e.g. onto the memorization subspace θ_M)."""
    out = []
    for j in range(vecs.shape[1]):
        v = vecs[:, j]
        pv = project(v).to(v)
        out.append(torch.dot(pv, pv) / torch.dot(v, v))
    return torch.stack(out)


def gradient_overlaps(vecs: Tensor, per_pair_grads: Tensor) -> Tensor:
    """C_jm = ⟨v_j, g_m⟩ / (‖v_j‖ ‖g_m‖) (k, m): cosines between columns of vecs (n, k) and
    rows of per_pair_grads (m, n); 0 where a gradient vanishes."""
    g = per_pair_grads.to(vecs)
    dots = vecs.t() @ g.t()  # (k, m)
    norms = vecs.norm(dim=0)[:, None] * g.norm(dim=1)[None, :]
    return torch.where(norms > 0, dots / norms.clamp_min(torch.finfo(norms.dtype).tiny),
                       torch.zeros_like(dots))


def per_pair_gradients(p: int, params_flat: Tensor, like: Like, a: Tensor | np.ndarray,
                       b: Tensor | np.ndarray, y: Tensor | np.ndarray,
                       idx: Tensor | np.ndarray, *, chunk_size: int | None = None) -> Tensor:
    """G_m = ∇_θ CE(f_θ(a_i, b_i), y_i) for i = idx[m]; G (len(idx), n), unweighted.

    a, b, y: (N,) pairs and labels; idx: (m,) positions in them; params_flat θ (n,) laid out
    as `like`. vmap over grad; chunk_size bounds the memory of one batch of the vmap.
    """
    theta = params_flat.detach()
    like = dict(like)
    sel = _as_tensor(idx, torch.int64)
    a_s, b_s, y_s = (_as_tensor(t, torch.int64)[sel].to(theta.device) for t in (a, b, y))

    def ce_one(th: Tensor, ai: Tensor, bi: Tensor, yi: Tensor) -> Tensor:
        logits = functional_logits(unflatten(th, like), ai[None], bi[None], p=p)
        return nn.functional.cross_entropy(logits, yi[None])

    return torch.func.vmap(torch.func.grad(ce_one), in_dims=(None, 0, 0, 0),
                           chunk_size=chunk_size)(theta, a_s, b_s, y_s)


__all__ = ["WHICH", "dense_hessian", "EigResult", "extreme_eigs", "deflated_power_iteration",
           "rademacher_probes", "hutchinson_trace", "lanczos_extremes", "slq_density",
           "smoothed_density", "adam_preconditioner", "preconditioned_hvp",
           "adam_stability_threshold", "linearized_growth_rates", "subspace_overlap",
           "gradient_overlaps", "per_pair_gradients", "Like", "LossFn", "Operator",
           "flatten_params", "gradient", "make_hvp", "step_curvature", "unflatten",
           "weighted_loss_fn"]
