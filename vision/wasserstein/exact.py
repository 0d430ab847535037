"""Exact references for tiny images (tests and checks only): the Wasserstein distance as an LP, and the exact
Euclidean projection onto the (local-plan) Wasserstein ball as a QP, both with scipy."""

from __future__ import annotations

import numpy as np
from scipy import sparse
from scipy.optimize import linprog, minimize

__all__ = ["local_pairs", "wasserstein_lp", "exact_projection"]


def local_pairs(h: int, w: int, kernel: int | None, p: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Allowed moves (source, target, cost) between the pixels of an h x w image; ``kernel`` None = any move."""
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    src, dst = np.meshgrid(np.arange(h * w), np.arange(h * w), indexing="ij")
    src, dst = src.ravel(), dst.ravel()
    di, dj = ii[dst] - ii[src], jj[dst] - jj[src]
    keep = np.ones(src.shape, bool) if kernel is None else (np.abs(di) <= kernel // 2) & (np.abs(dj) <= kernel // 2)
    cost = (di[keep] ** 2 + dj[keep] ** 2) ** (p / 2)
    return src[keep], dst[keep], cost.astype(float)


def _marginals(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[sparse.csr_matrix, sparse.csr_matrix]:
    m = len(src)
    rows = sparse.csr_matrix((np.ones(m), (src, np.arange(m))), shape=(n, m))
    cols = sparse.csr_matrix((np.ones(m), (dst, np.arange(m))), shape=(n, m))
    return rows, cols


def wasserstein_lp(x: np.ndarray, z: np.ndarray, kernel: int | None = None, p: float = 1.0) -> float:
    """min <Pi, C> over plans with row sums x and column sums z (one channel, (H, W) arrays of equal mass)."""
    h, w = x.shape
    src, dst, cost = local_pairs(h, w, kernel, p)
    rows, cols = _marginals(h * w, src, dst)
    a_eq = sparse.vstack([rows, cols[:-1]])            # one column constraint is implied by equal masses
    b_eq = np.concatenate([x.ravel(), z.ravel()[:-1]])
    res = linprog(cost, A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if res.status != 0:
        raise ValueError(f"no transport plan between the two images within the window: {res.message}")
    return float(res.fun)


def exact_projection(x: np.ndarray, w: np.ndarray, eps: float, kernel: int | None = 5, p: float = 1.0
                     ) -> tuple[np.ndarray, float]:
    """argmin_z 1/2 ||w - z||^2 over the Wasserstein ball of radius eps around x (one channel, (H, W)).

    Solved over the plan Pi (z = Pi^T 1) with SLSQP; returns (z, objective).
    """
    h, wd = x.shape
    n = h * wd
    src, dst, cost = local_pairs(h, wd, kernel, p)
    rows, cols = _marginals(n, src, dst)
    rows_d, cols_d = rows.toarray(), cols.toarray()
    wv = w.ravel()

    def fun(v: np.ndarray) -> tuple[float, np.ndarray]:
        r = cols_d @ v - wv
        return 0.5 * float(r @ r), cols_d.T @ r

    v0 = np.zeros(len(src))
    diag = src == dst
    v0[diag] = x.ravel()[src[diag]]                     # the identity plan: feasible
    cons = [{"type": "eq", "fun": lambda v: rows_d @ v - x.ravel(), "jac": lambda v: rows_d},
            {"type": "ineq", "fun": lambda v: eps - cost @ v, "jac": lambda v: -cost[None, :]}]
    res = minimize(fun, v0, jac=True, method="SLSQP", bounds=[(0, None)] * len(src), constraints=cons,
                   options={"maxiter": 1000, "ftol": 1e-14})
    if not res.success:
        raise ValueError(f"the exact projection did not converge: {res.message}")
    z = (cols_d @ res.x).reshape(h, wd)
    return z, float(res.fun)
