"""TRADES: ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with x_adv maximising the KL term in the Linf ball."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def trades_kl(logits_adv: Tensor, logits_clean: Tensor) -> Tensor:
    """Batch-mean KL(p_clean || p_adv) from logits (the TRADES robust term)."""
    return F.kl_div(F.log_softmax(logits_adv.float(), dim=1), F.log_softmax(logits_clean.float(), dim=1),
                    reduction="batchmean", log_target=True)


class TradesTraining:
    """TRADES with ``steps`` signed-gradient steps of size ``alpha`` on the KL, from x + 0.001 N(0, 1).

    The inner maximisation runs with the model in eval mode (batch-norm statistics frozen), as in the TRADES
    reference recipe; the outer loss is computed in train mode.
    """

    name = "trades"

    def __init__(self, eps: float, alpha: float, steps: int = 10, beta: float = 6.0) -> None:
        self.eps, self.alpha, self.steps, self.beta = float(eps), float(alpha), int(steps), float(beta)

    def perturb(self, model: nn.Module, x: Tensor) -> Tensor:
        """x_adv approximately maximising KL(f(x) || f(x_adv)) over the ball."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                clean = model(x).detach()
            x_adv = (x + 0.001 * torch.randn_like(x)).clamp(0.0, 1.0)
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                with torch.enable_grad():
                    kl = trades_kl(model(x_adv), clean)
                    (grad,) = torch.autograd.grad(kl, x_adv)
                x_adv = x_adv.detach() + self.alpha * grad.sign()
                x_adv = torch.min(torch.max(x_adv, x - self.eps), x + self.eps).clamp(0.0, 1.0)
        finally:
            model.train(was_training)
        return x_adv.detach()

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.perturb(model, x)
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y) + self.beta * trades_kl(model(x_adv), logits)
        return loss, logits
