"""Ridge for every alpha and target from one eigendecomposition, with exact held-out errors; numpy and
scipy.linalg only, so a ridge fit in the CV harness imports no scikit-learn (`StandardizedRidge` in
regressors/standardized.py is the estimator around it).
"""

from __future__ import annotations

import numpy as np

RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-2, 6, 17))
MIN_GROUPS = 3  # fewer distinct groups than this: inner selection falls back to samples


def inner_groups(groups, n: int) -> np.ndarray | None:
    """The groups to hold out in inner selection, or None (sample-wise) when there are too few."""
    if groups is None:
        return None
    groups = np.asarray(groups)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} samples")
    if _has_missing(groups):
        raise ValueError("groups contain NaN or infinity (a missing group is no group to hold out)")
    return groups if len(np.unique(groups)) >= MIN_GROUPS else None


def _has_missing(groups: np.ndarray) -> bool:
    if groups.dtype.kind in "fc":
        return not bool(np.all(np.isfinite(groups)))
    if groups.dtype.kind == "O":
        return any(isinstance(g, float) and not np.isfinite(g) for g in groups.ravel().tolist())
    return False


def ridge_path(xc: np.ndarray, yc: np.ndarray, alphas: np.ndarray, groups: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ridge (unpenalised intercept) on centred xc (n x p) and centred targets yc (n x T).

    The hat matrix is 11'/n + Q diag(w) Q', from one eigendecomposition of the smaller Gram matrix; deleting a
    block b of samples gives the exact held-out residuals (I - H_bb)^-1 r_b. Blocks are the groups (leave one
    group out) or single samples (leave one out). Returns (best alpha per target, coefficients p x T,
    mean held-out squared error alphas x T)."""
    from scipy.linalg import eigh  # LAPACK's MRRR driver: about 3x faster than numpy's divide and conquer here

    n, p = xc.shape
    if n >= p:
        lam, v = eigh(xc.T @ xc, driver="evr", check_finite=False)
        lam = np.maximum(lam, 0.0)
        q = xc @ v
        weights = [1.0 / (lam + a) for a in alphas]
    else:
        lam, q = eigh(xc @ xc.T, driver="evr", check_finite=False)
        lam = np.maximum(lam, 0.0)
        v = None
        weights = [lam / (lam + a) for a in alphas]
    qy = q.T @ yc
    w = np.stack(weights)  # alphas x k
    residual = yc[None] - np.einsum("nk,ak,kt->ant", q, w, qy, optimize=True)  # alphas x n x T
    if groups is None:
        leverage = np.minimum((q ** 2) @ w.T + 1.0 / n, 1.0 - 1e-12)  # n x alphas
        held_out = residual / (1.0 - leverage.T)[:, :, None]
    else:
        held_out = np.empty_like(residual)
        for g in np.unique(groups):
            b = np.flatnonzero(groups == g)
            qb = q[b]
            h = (qb[None] * w[:, None, :]) @ qb.T + 1.0 / n  # alphas x |b| x |b| (matmul, not einsum: BLAS)
            held_out[:, b] = np.linalg.solve(np.eye(len(b))[None] - h, residual[:, b])
    errors = np.mean(held_out ** 2, axis=1)  # alphas x T
    best = np.argmin(errors, axis=0)
    chosen = alphas[best]
    coef = np.empty((p, yc.shape[1]))
    for t, a in enumerate(chosen):
        if v is not None:
            coef[:, t] = v @ (qy[:, t] / (lam + a))
        else:
            coef[:, t] = xc.T @ (q @ (qy[:, t] / (lam + a)))
    return chosen, coef, errors
