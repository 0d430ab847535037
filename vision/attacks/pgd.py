"""Projected gradient descent (ascent on the loss) with random restarts, for the Linf, L2 and L1 balls.

Each iteration takes the steepest-ascent step of the threat model (:mod:`vision.attacks.steps`) and projects back
onto the ball intersected with the [0, 1] box (:mod:`vision.attacks.projections`; for L1 the exact projection
onto the intersection). Per example, the attack keeps the best iterate of a run (``select="best"``: success
first, then the highest loss) or the last one (``select="last"``, what adversarial training usually uses), and
the best run over restarts; restarts after the first only attack the examples not yet broken, so restarts never
lower the success rate.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, best_over_restarts, better, is_success, objective
from .projections import project
from .steps import check_norm, default_alpha, l1_k_range, random_start, steepest_step

__all__ = ["PGD", "make_generator"]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    """A seeded generator on ``device``, or None (use the global RNG) when ``seed`` is None."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class PGD(Attack):
    """PGD in the ``norm`` ball of radius ``eps`` (``norm`` in linf, l2, l1).

    Args:
        eps: radius of the ball (pixel units, inputs in [0, 1]).
        alpha: step length in the threat model's norm; default 2.5 * eps / steps.
        steps: gradient steps per restart.
        norm: ``linf`` (sign step), ``l2`` (normalised gradient step) or ``l1`` (sparse top-k step).
        restarts: independent runs; the best per example is kept.
        random_start: start the first run at a random point of the ball (later restarts always start randomly).
        targeted: ``y`` is the target class; the attack minimises its cross-entropy.
        l1_k: range [k1, k2] of coordinates moved per L1 step, drawn uniformly per example and step.
        l1_k_percent: read ``l1_k`` as percentages of the input size (default) instead of coordinate counts.
        select: ``best`` keeps the best iterate of a run, ``last`` the final iterate.
        early_stop: stop a run once every example in it succeeded (only with ``select="best"``).
        seed: seed for the random starts and L1 k draws (None: torch's global RNG).
        use_eval_mode: attack the model in eval mode (restored afterwards).
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        norm: str = "linf",
        restarts: int = 1,
        random_start: bool = True,
        targeted: bool = False,
        *,
        l1_k: tuple[float, float] = (5.0, 20.0),
        l1_k_percent: bool = True,
        select: str = "best",
        early_stop: bool = False,
        seed: int | None = None,
        use_eval_mode: bool = True,
    ) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        if steps < 0 or restarts < 1:
            raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
        if select not in ("best", "last"):
            raise ValueError(f"select must be 'best' or 'last', got {select!r}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.norm = check_norm(norm)
        self.alpha = float(alpha) if alpha is not None else default_alpha(self.eps, self.steps)
        self.restarts = int(restarts)
        self.random_start = bool(random_start)
        self.l1_k = (float(l1_k[0]), float(l1_k[1]))
        self.l1_k_percent = bool(l1_k_percent)
        self.select = select
        self.early_stop = bool(early_stop)
        self.seed = seed

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        gen = make_generator(self.seed, x.device)

        def one(idx: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
            xs, ys = x[idx], y[idx]
            if self.random_start or r > 0:
                delta0 = random_start(xs, self.eps, self.norm, gen)
            else:
                delta0 = torch.zeros_like(xs)
            delta, obj, succ = self.run(model, xs, ys, delta0, gen)
            return (xs + delta).clamp(0.0, 1.0), obj, succ

        return best_over_restarts(x, self.restarts, one)

    def run(
        self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor, gen: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One PGD run from ``delta``; returns (delta, objective, success) of the selected iterate."""
        k_range = l1_k_range(x[0].numel(), self.l1_k, self.l1_k_percent)
        best_d = delta.detach().clone()
        best_obj = torch.full((x.shape[0],), -torch.inf, device=x.device)
        best_succ = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        delta = delta.detach()
        for t in range(self.steps + 1):
            last = t == self.steps
            delta.requires_grad_(not last)
            logits = model(x + delta)
            obj = objective(logits, y, self.targeted)
            succ = is_success(logits.detach(), y, self.targeted)
            if self.select == "best":
                upd = better(succ, obj.detach(), best_succ, best_obj)
                best_d[upd] = delta.detach()[upd]
                best_obj = torch.where(upd, obj.detach(), best_obj)
                best_succ = torch.where(upd, succ, best_succ)
            if last or (self.early_stop and self.select == "best" and bool(best_succ.all())):
                break
            (grad,) = torch.autograd.grad(obj.sum(), delta)
            step = steepest_step(grad, x, delta.detach(), self.alpha, self.norm, k_range, gen)
            delta = project(delta.detach() + step, x, self.eps, self.norm)
        if self.select == "last":
            return delta.detach(), obj.detach(), succ
        return best_d, best_obj, best_succ
