"""Multi steepest descent (MSD): one attack over the union of the Linf, L2 and L1 balls.

Every iteration computes the gradient once at the current perturbation, forms one candidate per threat model
(its steepest-ascent step, then the projection onto that ball and the [0, 1] box) and keeps, per example, the
candidate with the highest loss. Each iterate therefore lies in at least one of the balls (the one it was
projected onto). The first run starts at the clean input (or at a random point when ``random_start``); later
restarts start at a random point of the balls in turn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, best_over_restarts, better, is_success, objective
from .pgd import make_generator
from .projections import project
from .steps import check_norm, default_alpha, l1_k_range, random_start, steepest_step

__all__ = ["MSD"]

DEFAULT_EPS = {"linf": 0.3, "l2": 2.0, "l1": 10.0}


def _per_norm(value: float | Sequence[float] | Mapping[str, float], norms: tuple[str, ...], name: str) -> list[float]:
    if isinstance(value, Mapping):
        missing = [n for n in norms if n not in value]
        if missing:
            raise ValueError(f"{name} has no value for {missing}")
        return [float(value[n]) for n in norms]
    if isinstance(value, int | float):
        return [float(value)] * len(norms)
    vals = [float(v) for v in value]
    if len(vals) != len(norms):
        raise ValueError(f"{name} needs one value per norm {norms}, got {vals}")
    return vals


class MSD(Attack):
    """Multi steepest descent over the union of ``norms`` balls.

    Args:
        eps: radii, a mapping ``{"linf": .., "l2": .., "l1": ..}`` or a sequence aligned with ``norms``.
        alpha: step lengths in the same form; default 2.5 * eps / steps per norm.
        steps: iterations (each: one forward+backward, then one forward per candidate).
        norms: the threat models of the union (any non-empty subset of linf, l2, l1).
        restarts: independent runs; the best per example is kept.
        random_start: start the first run at a random point (in the first norm's ball) instead of the clean input.
        targeted: ``y`` is the target class.
        l1_k, l1_k_percent: the sparse L1 step's range of coordinates (see :class:`vision.attacks.PGD`).
        seed: seed for random starts and L1 k draws.
        use_eval_mode: attack the model in eval mode (restored afterwards).
    """

    norm = "union"

    def __init__(
        self,
        eps: float | Sequence[float] | Mapping[str, float] = DEFAULT_EPS,
        alpha: float | Sequence[float] | Mapping[str, float] | None = None,
        steps: int = 100,
        norms: Sequence[str] = ("linf", "l2", "l1"),
        restarts: int = 1,
        random_start: bool = False,
        targeted: bool = False,
        *,
        l1_k: tuple[float, float] = (5.0, 20.0),
        l1_k_percent: bool = True,
        seed: int | None = None,
        use_eval_mode: bool = True,
    ) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        self.norms = tuple(check_norm(n) for n in norms)
        if not self.norms or len(set(self.norms)) != len(self.norms):
            raise ValueError(f"norms must be a non-empty list of distinct norms, got {norms}")
        if steps < 0 or restarts < 1:
            raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
        self.eps = dict(zip(self.norms, _per_norm(eps, self.norms, "eps"), strict=True))
        if any(e < 0 for e in self.eps.values()):
            raise ValueError(f"eps must be >= 0, got {self.eps}")
        self.steps = int(steps)
        if alpha is None:
            self.alpha = {n: default_alpha(e, self.steps) for n, e in self.eps.items()}
        else:
            self.alpha = dict(zip(self.norms, _per_norm(alpha, self.norms, "alpha"), strict=True))
        self.restarts = int(restarts)
        self.random_start = bool(random_start)
        self.l1_k = (float(l1_k[0]), float(l1_k[1]))
        self.l1_k_percent = bool(l1_k_percent)
        self.seed = seed

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        gen = make_generator(self.seed, x.device)

        def one(idx: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
            xs, ys = x[idx], y[idx]
            if self.random_start or r > 0:
                n = self.norms[(r - (0 if self.random_start else 1)) % len(self.norms)]
                delta0 = random_start(xs, self.eps[n], n, gen)
            else:
                delta0 = torch.zeros_like(xs)
            delta, obj, succ = self.run(model, xs, ys, delta0, gen)
            return (xs + delta).clamp(0.0, 1.0), obj, succ

        return best_over_restarts(x, self.restarts, one)

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, gen: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One MSD run from ``delta``; returns (delta, objective, success) of the best iterate per example."""
        k_range = l1_k_range(x[0].numel(), self.l1_k, self.l1_k_percent)
        b = x.shape[0]
        delta = delta.detach()
        best_d = delta.clone()
        best_obj = torch.full((b,), -torch.inf, device=x.device)
        best_succ = torch.zeros(b, dtype=torch.bool, device=x.device)

        def keep(d: Tensor, obj: Tensor, succ: Tensor) -> None:
            nonlocal best_obj, best_succ
            upd = better(succ, obj, best_succ, best_obj)
            best_d[upd] = d[upd]
            best_obj = torch.where(upd, obj, best_obj)
            best_succ = torch.where(upd, succ, best_succ)

        if self.steps == 0:
            with torch.no_grad():
                logits = model(x + delta)
            keep(delta, objective(logits, y, self.targeted), is_success(logits, y, self.targeted))
        for t in range(self.steps):
            delta.requires_grad_(True)
            logits = model(x + delta)
            obj = objective(logits, y, self.targeted)
            if t == 0:
                keep(delta.detach(), obj.detach(), is_success(logits.detach(), y, self.targeted))
            (grad,) = torch.autograd.grad(obj.sum(), delta)
            d0 = delta.detach()
            cand_d, cand_obj = d0, torch.full_like(best_obj, -torch.inf)
            with torch.no_grad():
                for n in self.norms:
                    step = steepest_step(grad, x, d0, self.alpha[n], n, k_range, gen)
                    d = project(d0 + step, x, self.eps[n], n)
                    lg = model(x + d)
                    o = objective(lg, y, self.targeted)
                    keep(d, o, is_success(lg, y, self.targeted))
                    upd = o > cand_obj
                    cand_d = torch.where(upd.view(-1, *([1] * (x.dim() - 1))), d, cand_d)
                    cand_obj = torch.where(upd, o, cand_obj)
            delta = cand_d
        return best_d, best_obj, best_succ
