"""Universal patterns against a user's model: one level-relative order pattern for every snippet.

The pattern ``u`` (Wg, 2, L) (shares at time offset t, side s, j levels from the best price) is mapped onto each
snippet's own levels (:func:`lobsim.propagation.universal_orders`), propagated and scored with the stress objective.
It minimises the mean hinge ``relu(-margin)`` over training snippets (the objective's margin is > 0 exactly when a
snippet is fooled, so fooled snippets stop pulling):

- differentiable models: Adam on ``u`` with the straight-through rounding of the thesis' universal attack;
- gradient-free models: random search (one placement of q shares per proposal, kept when the training loss drops).

The pattern is deployed as integers on test snippets and scored like the capital attack: fool rate among the
eligible snippets, capital, relative size and cost of the deployed orders.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lobsim.attacks.capital import book_tensors_centred, gradient_mode, logits_of
from lobsim.snippets import SnippetBatch


@dataclass
class UniversalFit:
    pattern: np.ndarray
    method: str
    history: list[float] = field(default_factory=list)


def _prepared(model: Any, objective: Any, batch: SnippetBatch) -> tuple:
    from lobsim.propagation import TouchPropagator

    P, S, M, c = book_tensors_centred(batch)
    with torch.no_grad(), gradient_mode(model):
        clean = logits_of(model, P, S, M, c).detach()
    labels = torch.as_tensor(batch.labels)
    return batch, TouchPropagator(batch), P, S, M, c, objective.reference(clean, labels)


def _loss(model: Any, objective: Any, prep: tuple, pattern: torch.Tensor) -> torch.Tensor:
    from lobsim.propagation import universal_orders

    b, op, P, S, M, c, y = prep
    out = logits_of(model, P, S + op(universal_orders(pattern, b)), M, c)
    return torch.relu(-objective.margin(out, y)).mean()


def fit_universal(model: Any, objective: Any, batches: list[SnippetBatch], steps: int = 200, lr: float = 0.5,
                  budget: float = 1e5, seed: int = 0) -> UniversalFit:
    """Fit an integer pattern on training batches (see the module docstring)."""
    W, L = batches[0].window, batches[0].levels
    preps = [_prepared(model, objective, b) for b in batches]
    hist: list[float] = []
    if getattr(model, "differentiable", True):
        gen = torch.Generator().manual_seed(int(seed))
        u = (1e-3 * torch.rand((W, 2, L), generator=gen, dtype=torch.float32)).requires_grad_(True)
        opt = torch.optim.Adam([u], lr=lr)
        for k in range(steps):
            prep = preps[k % len(preps)]
            q = torch.floor(u + 0.5)
            pat = u + (q - u).detach()
            with gradient_mode(model):
                loss = _loss(model, objective, prep, pat)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                u.clamp_(min=0.0)
            hist.append(float(loss.detach()))
        return UniversalFit(np.floor(u.detach().numpy().astype(np.float64) + 0.5).astype(np.int64), "adam", hist)
    # gradient-free: random search on the integer pattern, capital per snippet kept below the budget
    rng = np.random.default_rng(seed)
    pat = torch.zeros((W, 2, L), dtype=torch.float32)
    price = float(np.median([np.abs(b.prices[b.mask]).mean() for b in batches])) / 1e4
    with torch.no_grad(), gradient_mode(model):
        best = float(np.mean([float(_loss(model, objective, p, pat)) for p in preps]))
        for _ in range(steps):
            t, s, j = int(rng.integers(W)), int(rng.integers(2)), int(rng.integers(L))
            room = budget / price - float(pat.sum())
            if room < 1:
                break
            q = float(max(1, min(room, round(2.0 ** rng.uniform(0, 10)))))
            pat[t, s, j] += q
            val = float(np.mean([float(_loss(model, objective, p, pat)) for p in preps]))
            if val < best:
                best = val
            else:
                pat[t, s, j] -= q
            hist.append(best)
    return UniversalFit(pat.numpy().astype(np.int64), "random search", hist)
