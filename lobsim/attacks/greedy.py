"""The ensemble's cheap first member: one gradient, then a bisection on the budget along the best placements.

At zero orders one backward pass gives the margin's gradient per dollar of every entry. For k in ``tops``
(1, 16, 256 by default) the candidate orders put X dollars on the k entries with the largest positive gradient per
dollar, in proportion to it (sigma-delta rounded to whole shares, see :mod:`lobsim.attacks.steps`). A bisection on
log X between ``budget * 1e-6`` and ``budget`` finds the smallest X that fools the model (first checked at the
full budget). The cheapest success over k is then minimised. Cost: one backward pass and about
``len(tops) * (probes + 1)`` batched forward passes, against ``max_iter`` backward passes for the gradient member.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lobsim.attacks.workspace import Found, Tracker, Workspace


@dataclass
class GreedyMember:
    """``run(ws, rng) -> Tracker`` (see the module docstring)."""

    budget: float
    tops: tuple[int, ...] = (1, 16, 256)
    probes: int = 14
    minimize: bool = True
    name: str = "greedy"
    uses_gradient = True

    def run(self, ws: Workspace, rng: np.random.Generator) -> Tracker:
        from lobsim.attacks.minimize import prune

        tr = Tracker(ws.n)
        n = ws.n
        cmax = float(self.budget)
        _, _, g = ws.loss_grad(ws.zeros())
        price = ws.centre[:, None].to(g.device) + ws.P.view(n, -1).to(torch.float64)
        gz = torch.where(ws.M.view(n, -1), g.to(torch.float64) / price, 0.0).clamp_min(0.0)
        zero = (gz.amax(1) <= 0).cpu().numpy()
        for r in np.flatnonzero(zero):
            tr.status[r] = "zero_gradient"
        buf = ws.zeros()
        for k in self.tops:
            k = min(k, ws.N)
            val, idx = gz.topk(k, dim=1)
            wgt = val / val.sum(1, keepdim=True).clamp_min(1e-300)
            p_top = price.gather(1, idx)

            lo = np.log(np.full(n, cmax * 1e-6))
            hi = np.log(np.full(n, cmax))
            cap = _orders_at(buf, wgt, p_top, idx, np.exp(hi))
            ok, _ = ws.check(buf)
            ok &= ~zero & (cap <= cmax)
            if ok.any():
                for r in np.flatnonzero(ok):
                    tr.offer_found(r, Found.of_row(buf[r], float(cap[r])))
            for _ in range(self.probes):
                mid = (lo + hi) / 2
                cap = _orders_at(buf, wgt, p_top, idx, np.exp(mid))
                f, _ = ws.check(buf)
                f &= ok & (cap <= cmax)
                for r in np.flatnonzero(f):
                    tr.offer_found(r, Found.of_row(buf[r], float(cap[r])))
                hi = np.where(f, mid, hi)
                lo = np.where(f | ~ok, lo, mid)
        for r in range(n):
            if tr.best[r] is not None:
                tr.status[r], tr.first_capital[r] = "success", tr.best[r].capital
        tr.iterations[:] = 1
        tr.freeze_fallback()
        if self.minimize:
            prune(ws, tr, np.flatnonzero([b is not None for b in tr.best]), True, rng)
        return tr


def _orders_at(buf: torch.Tensor, wgt: torch.Tensor, p_top: torch.Tensor, idx: torch.Tensor, x: np.ndarray
               ) -> np.ndarray:
    """Fill buf with the rounded orders of x dollars per row spread over the entries idx by wgt; their capital."""
    xs = torch.as_tensor(x, dtype=torch.float64, device=buf.device)
    cnt = torch.floor((wgt * xs[:, None] / p_top).cumsum(1) + 0.5)
    q = torch.diff(cnt, dim=1, prepend=torch.zeros_like(cnt[:, :1]))
    buf.zero_()
    buf.scatter_(1, idx, q.to(buf.dtype))
    return (q * p_top).sum(1).cpu().numpy()
