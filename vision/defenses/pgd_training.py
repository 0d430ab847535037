"""PGD adversarial training (Madry et al.): minimise the cross-entropy at a PGD point of the ball."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from vision.attacks.pgd import PGD


class PGDTraining:
    """Each batch: ``steps`` PGD steps of size ``alpha`` from a random start (model kept in train mode, the last
    iterate used), then ``loss = CE(model(x_adv), y)``."""

    name = "pgd"

    def __init__(self, eps: float, alpha: float, steps: int, norm: str = "linf") -> None:
        self.eps, self.alpha, self.steps, self.norm = float(eps), float(alpha), int(steps), norm
        self.attack = PGD(eps, alpha, steps, norm=norm, restarts=1, random_start=True, select="last",
                          use_eval_mode=False)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.attack(model, x, y).x_adv.detach()
        logits = model(x_adv)
        return F.cross_entropy(logits.float(), y), logits
