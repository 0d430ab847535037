"""Momentum iterative FGSM (MI-FGSM, Dong et al. 2018) in the l_inf ball."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, is_success, objective
from .projections import clip_box, project_linf


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018) in the Linf ball: ``g <- mu g + grad / ||grad||_1``,
    ``x <- proj(x + alpha sign(g))`` for ``steps`` iterations, ``alpha = eps / steps`` by default, from ``x``."""

    norm = "linf"

    def __init__(self, eps: float, steps: int = 20, decay: float = 1.0, alpha: float | None = None,
                 targeted: bool = False, *, use_eval_mode: bool = True) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        if eps < 0 or steps < 1:
            raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
        self.eps, self.steps, self.decay = float(eps), int(steps), float(decay)
        self.alpha = float(alpha) if alpha is not None else self.eps / self.steps

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        delta = torch.zeros_like(x)
        g = torch.zeros_like(x)
        for _ in range(self.steps):
            delta.requires_grad_(True)
            obj = objective(model(x + delta), y, self.targeted)
            (grad,) = torch.autograd.grad(obj.sum(), delta)
            l1 = grad.abs().reshape(grad.shape[0], -1).sum(1).clamp_min(1e-12)
            g = self.decay * g + grad / l1.view(-1, *([1] * (grad.dim() - 1)))
            delta = clip_box(x, project_linf(delta.detach() + self.alpha * g.sign(), self.eps))
        x_adv = (x + delta).clamp(0.0, 1.0)
        with torch.no_grad():
            logits = model(x_adv)
        return AttackResult(x_adv.detach(), is_success(logits, y, self.targeted), objective(logits, y, self.targeted))
