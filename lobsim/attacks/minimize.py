"""Minimal capital after a success: remove the least useful dollars while the snippet stays fooled.

For each fooled snippet the placed orders are ranked from least to most useful per dollar: by the gradient of the
objective's margin per dollar at the current orders (members with gradients), or in a random order (the
gradient-free member, which may only use model outputs). A bisection on X, the dollars removed from the front of
that ranking (whole entries first, the entry that straddles X loses just enough shares), finds the largest removal
that still fools the model; every fooling probe that is cheaper than the best orders so far replaces them.
Rounds repeat with a fresh ranking until a round gains less than ``tol``. All snippets of a chunk are probed
together (one batched model call per probe).
"""

from __future__ import annotations

import numpy as np
import torch

from lobsim.attacks.workspace import Found, Tracker, Workspace


def _remove(order: np.ndarray, flat: np.ndarray, shares: np.ndarray, price: np.ndarray, cum: np.ndarray,
            x: float) -> tuple[np.ndarray, np.ndarray]:
    """Orders left after removing ``x`` dollars from the front of ``order`` (indices into flat/shares)."""
    k = int(np.searchsorted(cum, x, side="right"))  # entries order[:k] go entirely
    keep = order[k:]
    q = shares[keep].copy()
    if k < len(order):
        before = cum[k - 1] if k > 0 else 0.0
        cut = int(np.ceil((x - before) / price[keep[0]] - 1e-12))
        q[0] -= min(max(cut, 0), q[0])
    nz = q > 0
    return flat[keep][nz], q[nz]


def prune(ws: Workspace, tracker: Tracker, rows: np.ndarray, use_gradient: bool, rng: np.random.Generator,
          rounds: int = 3, probes: int = 12, tol: float = 1e-3) -> None:
    """Minimise the capital of ``tracker.best[rows]`` (rows of ``ws`` whose best orders fool the model), in place."""
    rows = np.asarray([r for r in rows if tracker.best[r] is not None and len(tracker.best[r].flat)], np.int64)
    if rows.size == 0:
        return
    sub = ws if (rows.size == ws.n and np.array_equal(rows, np.arange(ws.n))) else ws.select(rows)
    n = rows.size
    buf = sub.zeros()
    cur: list[Found] = [tracker.best[r] for r in rows]  # type: ignore[misc]
    for _ in range(rounds):
        base = list(cur)  # this round's ranking and probes are built from the orders at its start
        start = np.array([c.capital for c in base])
        prices = [sub.prices_of(c.flat, i) for i, c in enumerate(base)]
        if use_gradient:
            buf.zero_()
            for i, c in enumerate(base):
                buf[i, torch.as_tensor(c.flat, device=buf.device)] = torch.as_tensor(
                    c.shares, dtype=buf.dtype, device=buf.device)
            _, _, g = sub.loss_grad(buf)
            g = g.detach().cpu().numpy()
            scores = [g[i, c.flat] / prices[i] for i, c in enumerate(base)]
        else:
            scores = [rng.random(len(c.flat)) for c in base]
        orders = [np.argsort(s, kind="stable") for s in scores]
        cums = [np.cumsum((c.shares * p)[o]) for c, p, o in zip(base, prices, orders)]
        lo = np.zeros(n)
        hi = np.array([cm[-1] if len(cm) else 0.0 for cm in cums])
        for _ in range(probes):
            mid = (lo + hi) / 2
            buf.zero_()
            trial = []
            for i, c in enumerate(base):
                f, q = _remove(orders[i], c.flat, c.shares, prices[i], cums[i], mid[i])
                trial.append((f, q))
                if len(f):
                    buf[i, torch.as_tensor(f, device=buf.device)] = torch.as_tensor(q, dtype=buf.dtype,
                                                                                   device=buf.device)
            fooled, _ = sub.check(buf)
            for i in range(n):
                if fooled[i]:
                    lo[i] = mid[i]
                    f, q = trial[i]
                    cap = float((q * sub.prices_of(f, i)).sum())
                    if cap < cur[i].capital:
                        cur[i] = Found(f, q, cap)
                else:
                    hi[i] = mid[i]
        gain = 1.0 - np.array([c.capital for c in cur]) / np.maximum(start, 1e-300)
        if not np.any(gain > tol):
            break
    for i, r in enumerate(rows):
        tracker.best[r] = cur[i]
