"""Extreme eigenpairs of a symmetric operator from blocks of products: a thick-restarted
block Krylov (unpreconditioned block Davidson) method with warm starts.

The operator takes a block of b vectors as rows, V (b, n) ↦ A V (b, n) (`as_block` wraps
a one-vector operator), so b HVPs are one pass of GEMMs. The basis Q (m, n) grows by the
residual block R = A Y − Y Θ of the wanted Ritz pairs that have not converged, which in
exact arithmetic spans the next block Krylov direction: with no restarts this is block
Lanczos with full reorthogonalization. When the basis reaches `max_dim` rows it restarts
thick, keeping the Ritz vectors of both ends (and A Q by the same rotation, at no HVP).
A pair is converged when ‖A y − θ y‖ ≤ tol · max|θ|, max|θ| the spectral scale found so
far; the reported residuals come from one fresh product of the final vectors. Both ends
come out of one Krylov space. Linear algebra in float64 on the CPU, all in torch, so a
fixed seed gives bitwise the same result run after run.

    >>> res = block_extremes(mh.block, mh.n, k=10, which="both", tol=1e-6)
    >>> later = block_extremes(op, n, k=10, which="both", x0=res.eigenvectors.T)  # warm
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .hessian import WHICH, EigResult, Operator

BlockOperator = Callable[[Tensor], Tensor]  # V (b, n) -> A V (b, n)


def as_block(op: Operator) -> BlockOperator:
    """A block operator V (b, n) ↦ A V (b, n) from a one-vector operator, row by row."""
    def block(V: Tensor) -> Tensor:
        return torch.stack([op(v).detach().to("cpu", torch.float64) for v in V])
    return block


def preconditioned_block(op: BlockOperator, d: Tensor) -> BlockOperator:
    """V ↦ D^{-1/2} A D^{-1/2} V for rows V (b, n), D = diag(d) (n,): similar to D⁻¹A.
    In float64 on d's device."""
    s = d.to(torch.float64).rsqrt()

    def block(V: Tensor) -> Tensor:
        return s * op(s * V.to(s)).to(s)

    return block


def _orthonormal_rows(X: Tensor, Q: Tensor, *, rtol: float = 1e-10) -> Tensor:
    """Rows spanning the part of X (b, n) orthogonal to the orthonormal rows Q (m, n),
    orthonormal; directions below rtol of X's largest are dropped (rank deficiency)."""
    scale = float(X.norm(dim=1).max()) if X.shape[0] else 0.0
    if scale == 0.0:
        return X[:0]
    X = X / scale
    for _ in range(2):  # classical Gram-Schmidt, twice (Kahan-Parlett)
        if Q.shape[0]:
            X = X - (X @ Q.t()) @ Q
    u, s, vh = torch.linalg.svd(X, full_matrices=False)
    Y = vh[s > rtol]
    if Q.shape[0] and Y.shape[0]:  # one more pass against what the SVD's rounding let in
        Y = Y - (Y @ Q.t()) @ Q
        Y = Y / Y.norm(dim=1, keepdim=True)
    return Y


def _wanted(m: int, k: int, which: str) -> list[int]:
    """Indices into ascending Ritz values: the k largest (descending), then the k smallest
    (descending), as `which` asks."""
    top = list(range(m - 1, m - 1 - k, -1))
    bottom = list(range(k - 1, -1, -1))
    return {"top": top, "bottom": bottom, "both": top + bottom}[which]


def _kept(m: int, keep: int, which: str) -> list[int]:
    """Indices into ascending Ritz values kept at a thick restart: `keep` at the wanted end,
    or half at each end for both."""
    keep = min(keep, m)
    if which == "top":
        return list(range(m - keep, m))
    if which == "bottom":
        return list(range(keep))
    return sorted(set(range(keep // 2)) | set(range(m - keep // 2, m)))


def _block_settings(n: int, k: int, which: str, block: int | None, max_dim: int | None,
                    keep: int | None, max_hvp: int | None) -> tuple[int, int, int, int, int]:
    """(pairs wanted, block size, basis size at a restart, budget of products, Ritz
    vectors kept at a restart), checked; see `block_extremes` for the defaults."""
    if which not in WHICH:
        raise ValueError(f"which: must be {' | '.join(WHICH)}, got {which!r}")
    if not 1 <= k or 2 * k > n:
        raise ValueError(f"k: must be in [1, n/2 = {n // 2}], got {k}")
    n_want = k * len(WHICH[which])
    bs = max(block or 2, 1)
    max_dim = min(n, max_dim or max(240, 4 * n_want + 40))
    if max_dim < n_want + bs:
        raise ValueError(f"max_dim: must be at least {n_want + bs} (pairs + block), got "
                         f"{max_dim}")
    max_hvp = max_hvp or int(50 * n ** 0.5 + 100 * n_want)
    keep = min(max_dim - bs, keep or max(2 * n_want + 2 * k, max_dim // 2))
    return n_want, bs, max_dim, max_hvp, keep


def _thick_restart(Q: Tensor, AQ: Tensor, T: Tensor, theta: Tensor, S: Tensor,
                   idx: Tensor | list[int]) -> int:
    """Shrink the basis in place to the Ritz vectors `idx` (T becomes their Ritz values on
    the diagonal); returns the new basis size."""
    m = S.shape[0]
    rot = S[:, idx].t()  # (r, m)
    Q[:len(idx)] = rot @ Q[:m]
    AQ[:len(idx)] = rot @ AQ[:m]
    T.zero_()
    T[range(len(idx)), range(len(idx))] = theta[idx]
    return len(idx)


def block_extremes(op: BlockOperator, n: int, k: int = 10, which: str = "both", *,
                   tol: float = 1e-6, x0: Tensor | None = None, block: int | None = None,
                   max_dim: int | None = None, keep: int | None = None,
                   max_hvp: int | None = None, seed: int = 0) -> EigResult:
    """The k algebraically largest ("top"), smallest ("bottom") or both (2k) eigenpairs of
    the symmetric operator A (n, n), largest first, by thick-restarted block Krylov.

    op: V (b, n) ↦ A V (b, n), in any float dtype (results are taken in float64). x0: a
    warm start (r, n), e.g. the eigenvectors found at the previous checkpoint as rows
    (``res.eigenvectors.T``); the first block is x0, filled up with N(0, I) rows from
    torch.Generator(seed) to `block` rows if it has fewer. block: the rows added per
    step (default 2: at p = 97 blocks of 2 took the fewest products, 4 and 8 up to 1.3x
    and 1.6x more). max_dim: the basis size that triggers a thick restart (default
    max(240, 4·pairs + 40), at most n); keep: the Ritz vectors kept then (default
    max(2·pairs + 2k, max_dim/2)). max_hvp: a budget of products (default
    50·n^0.5 + 100·pairs). converged means every returned pair has a fresh residual
    ‖A v − θ v‖ ≤ tol · max|θ|.
    """
    n_want, bs, max_dim, max_hvp, keep = _block_settings(n, k, which, block, max_dim, keep,
                                                         max_hvp)
    gen = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    start = torch.zeros(0, n, dtype=f64) if x0 is None else \
        x0.detach().to("cpu", f64).reshape(-1, n)
    fill = bs - start.shape[0]
    if fill > 0:
        start = torch.cat([start, torch.randn(fill, n, dtype=f64, generator=gen)])
    Q = torch.empty(max_dim, n, dtype=f64)  # basis rows
    AQ = torch.empty(max_dim, n, dtype=f64)  # A applied to each
    T = torch.zeros(max_dim, max_dim, dtype=f64)  # Q A Q^T
    m, count = 0, 0
    X = start
    theta = S = None
    while True:
        X = _orthonormal_rows(X, Q[:m])
        if X.shape[0] == 0 or m + X.shape[0] > max_dim:  # restart thick, or refill
            if theta is None:
                raise RuntimeError("block_extremes: the start block has no rank")
            m = _thick_restart(Q, AQ, T, theta, S, _kept(m, keep, which))
            if X.shape[0] == 0:  # the residuals lie in the basis: add fresh directions
                X = torch.randn(bs, n, dtype=f64, generator=gen)
            X = _orthonormal_rows(X, Q[:m])
        b = X.shape[0]
        AX = op(X).detach().to("cpu", f64)
        count += b
        Q[m:m + b], AQ[m:m + b] = X, AX
        C = Q[:m + b] @ AX.t()  # (m + b, b)
        T[:m + b, m:m + b] = C
        T[m:m + b, :m + b] = C.t()
        m += b
        T[:m, :m] = 0.5 * (T[:m, :m] + T[:m, :m].t())
        theta, S = torch.linalg.eigh(T[:m, :m])  # ascending
        if m < n_want:  # fewer Ritz pairs than wanted: grow the Krylov space by a block
            X = AX
            continue
        want = _wanted(m, k, which)
        rot = S[:, want].t()  # (n_want, m)
        Y, AY = rot @ Q[:m], rot @ AQ[:m]
        R = AY - theta[want][:, None] * Y
        scale = float(theta.abs().max())
        done = R.norm(dim=1) <= tol * scale
        if bool(done.all()) or count >= max_hvp or m >= n:
            break
        X = R[~done][:bs]
    lam = theta[want]
    AY = op(Y).detach().to("cpu", f64)
    resid = (AY - lam[:, None] * Y).norm(dim=1)
    return EigResult(eigenvalues=lam.clone(), eigenvectors=Y.t().contiguous(),
                     residuals=resid, n_hvp=count + Y.shape[0],
                     converged=bool((resid <= tol * scale).all()))


__all__ = ["block_extremes", "as_block", "preconditioned_block", "BlockOperator"]
