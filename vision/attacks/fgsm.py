"""Fast gradient sign method, optionally from a random start (the "fast" adversarial-training attack).

Without a random start: ``x + eps * sign(grad)``. With one: ``delta ~ U(-eps, eps)``, then one step of
``alpha * sign(grad)`` taken at ``x + delta`` (default ``alpha = 1.25 * eps``), then clip to the ball and to [0, 1].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, is_success, objective
from .pgd import make_generator
from .projections import clip_box, project_linf
from .steps import random_start as sample_start

__all__ = ["FGSM"]


class FGSM(Attack):
    """One signed-gradient step in the Linf ball of radius ``eps``.

    Args:
        eps: Linf radius (pixel units).
        alpha: step size; default ``eps`` without random start, ``1.25 * eps`` with it.
        random_start: start from ``x + U(-eps, eps)`` (clipped to [0, 1]).
        targeted: ``y`` is the target class (the step descends its cross-entropy).
        seed: seed for the random start (None: torch's global RNG).
        use_eval_mode: attack the model in eval mode (restored afterwards).
    """

    norm = "linf"

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        random_start: bool = False,
        targeted: bool = False,
        *,
        seed: int | None = None,
        use_eval_mode: bool = True,
    ) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.random_start = bool(random_start)
        self.alpha = float(alpha) if alpha is not None else (1.25 * self.eps if random_start else self.eps)
        self.seed = seed

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        if self.random_start:
            delta = sample_start(x, self.eps, "linf", make_generator(self.seed, x.device))
        else:
            delta = torch.zeros_like(x)
        delta.requires_grad_(True)
        obj = objective(model(x + delta), y, self.targeted)
        (grad,) = torch.autograd.grad(obj.sum(), delta)
        delta = clip_box(x, project_linf(delta.detach() + self.alpha * grad.sign(), self.eps))
        x_adv = (x + delta).clamp(0.0, 1.0)
        with torch.no_grad():
            logits = model(x_adv)
        return AttackResult(x_adv, is_success(logits, y, self.targeted), objective(logits, y, self.targeted))
