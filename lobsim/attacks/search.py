"""Gradient-free integer attack: score-based random search over (t, side, level) placements, model outputs only.

Per snippet the state is integer orders A (start: none) and the objective's margin m(A) (> 0 means fooled).
Every iteration proposes, for every active snippet at once, one placement: q whole shares at one real entry
(t, s, j). The entry is drawn from an adaptive distribution (side x level weights and time-bucket weights, raised
when a proposal at that place is accepted); the dollars of the proposal are log-uniform in [scale / 16, scale],
with ``scale = max(c0, capital of A)``, so proposals are scale-free (a $9 and a $580 book behave alike). The
proposal is kept when it raises the margin and keeps the capital within the budget; after ``patience`` refused
proposals in a row, c0 doubles (up to the budget). A snippet stops at its first success; its orders are then
minimised (random-order pruning, :mod:`lobsim.attacks.minimize`).

The member never calls autograd: it works for models with ``differentiable = False`` (an ONNX or scikit-learn
model) and it is the ensemble's check for gradient masking (it succeeds where gradients see nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lobsim.attacks.workspace import Tracker, Workspace


@dataclass
class SearchMember:
    """Random search; ``run(ws, rng) -> Tracker``."""

    budget: float
    max_iter: int = 400
    init_fraction: float = 1e-3
    patience: int = 8
    time_buckets: int = 16
    boost: float = 1.5
    minimize: bool = True
    name: str = "search"
    uses_gradient = False

    def run(self, ws: Workspace, rng: np.random.Generator) -> Tracker:
        from lobsim.attacks.minimize import prune

        tr = Tracker(ws.n)
        n = ws.n
        _, W, _, L = ws.shape
        cmax = float(self.budget)
        nb = max(1, min(self.time_buckets, W))
        real = ws.M.view(n, -1).cpu().numpy()
        price = ws.centre[:, None].cpu().numpy() + ws.P.view(n, -1).cpu().numpy().astype(np.float64)
        cap = np.zeros(n)  # per tracker row
        m = ws.margin(ws.clean)
        c0 = np.full(n, cmax * self.init_fraction)
        refused = np.zeros(n, np.int64)
        w_sj = np.ones((n, 2 * L))
        w_tb = np.ones((n, nb))
        w, rows = ws, np.arange(n)  # the current workspace and the tracker row of each of its rows
        A = w.zeros()
        live_rows = np.ones(n, bool)  # per local row of w: still searching
        for it in range(1, self.max_iter + 1):
            loc = np.flatnonzero(live_rows)
            act = rows[loc]
            k = act.size
            sj = _draw(w_sj[act], rng)
            tb = _draw(w_tb[act], rng)
            lo, hi = (tb * W) // nb, ((tb + 1) * W) // nb
            t = lo + (rng.random(k) * np.maximum(hi - lo, 1)).astype(np.int64)
            flat = t * 2 * L + sj
            ok = real[act, flat]
            p = np.where(ok, price[act, flat], 1.0)
            scale = np.maximum(c0[act], cap[act])
            dollars = scale * 2.0 ** (-4.0 * rng.random(k))
            q = np.maximum(1, np.rint(dollars / p)).astype(np.int64)
            room = np.floor((cmax - cap[act]) / p).astype(np.int64)
            q = np.where(ok, np.minimum(q, room), 0)
            live = q > 0
            self._add(A, loc[live], flat[live], q[live])
            out = w.outputs(A)
            m_new = w.margin(out)[loc]
            fooled_new = w.fooled(out)[loc]
            accept = live & (m_new > m[act])
            rej = live & ~accept
            self._add(A, loc[rej], flat[rej], -q[rej])
            ai = np.flatnonzero(accept)
            ar = act[ai]
            m[ar] = m_new[ai]
            cap[ar] += q[ai] * p[ai]
            w_sj[ar, sj[ai]] *= self.boost
            w_tb[ar, tb[ai]] *= self.boost
            refused[ar] = 0
            idle = act[~accept]
            refused[idle] += 1
            grow = idle[refused[idle] >= self.patience]
            c0[grow] = np.minimum(2 * c0[grow], cmax)
            refused[grow] = 0
            tr.iterations[act] = it
            hit = ai[fooled_new[ai]]
            if hit.size:
                tr.offer(act[hit], A, loc[hit], np.zeros(w.n) + cap[rows], it)
                live_rows[loc[hit]] = False
            if not live_rows.any():
                break
            if live_rows.sum() * 4 <= 3 * w.n:  # compact: evaluate only the snippets still searching
                keep = np.flatnonzero(live_rows)
                w, rows = w.select(keep), rows[keep]
                A = A[torch.as_tensor(keep, device=A.device)].contiguous()
                live_rows = np.ones(keep.size, bool)
        tr.peak[:] = np.where(np.isnan(tr.first_capital), cap, tr.first_capital)
        tr.freeze_fallback()
        if self.minimize:
            prune(ws, tr, np.flatnonzero([b is not None for b in tr.best]), False, rng)
        return tr

    @staticmethod
    def _add(A: torch.Tensor, loc: np.ndarray, flat: np.ndarray, q: np.ndarray) -> None:
        if loc.size:
            dev = A.device
            A[torch.as_tensor(loc, device=dev), torch.as_tensor(flat, device=dev)] += torch.as_tensor(
                q, dtype=A.dtype, device=dev)


def _draw(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category per row of non-negative weights (k, C)."""
    c = np.cumsum(weights, axis=1)
    u = rng.random(weights.shape[0]) * c[:, -1]
    return np.minimum((c < u[:, None]).sum(axis=1), weights.shape[1] - 1)


@dataclass
class SearchAttack:
    """The gradient-free attack alone (works on models without gradients); returns one record per snippet."""

    budget: float = 100_000.0
    max_iter: int = 400
    minimize: bool = True
    fill_model: str = "touch"
    batch_size: int = 64
    device: str = "cpu"
    model_name: str = ""
    objective: Any = "untargeted"

    def __post_init__(self) -> None:
        if not self.budget > 0 or self.max_iter < 1:
            raise ValueError("SearchAttack: budget must be positive and max_iter >= 1")

    def member(self) -> SearchMember:
        return SearchMember(budget=self.budget, max_iter=self.max_iter, minimize=self.minimize)

    def __call__(self, model: Any, batch: Any, seed: int = 0, progress: bool = False) -> list:
        from lobsim.attacks.objectives import make_objective
        from lobsim.attacks.runner import run_members

        return run_members(model, batch, [self.member()], budget=self.budget, objective=make_objective(self.objective),
                           seed=seed, batch_size=self.batch_size, device=self.device, fill_model=self.fill_model,
                           model_name=self.model_name, progress=progress, label="search attack")
