"""Fast adversarial training: one FGSM step from a uniform random start (alpha = 1.25 eps by default).

The inner step is written out here (two forward/backward passes per batch and nothing else) because it is the
hot loop of the fastest defense; ``tests/vision/test_defenses.py`` checks it against ``vision.attacks.fgsm.FGSM``
with the same random start. The catastrophic-overfitting guard lives in :mod:`vision.defenses.early_stopping`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def fgsm_rs_delta(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float,
                  delta0: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
    """The FGSM-RS perturbation: delta0 ~ U(-eps, eps) (clipped so x + delta0 is in [0, 1]), one signed-gradient
    step of size ``alpha``, then projection onto the ball and the [0, 1] box."""
    if delta0 is None:
        delta0 = (torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1) * eps
    delta = ((x + delta0).clamp(0.0, 1.0) - x).detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta).float(), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


class FastTraining:
    """FGSM with random start: ``loss = CE(model(x + delta_fgsm_rs), y)`` (model stays in train mode)."""

    name = "fast"

    def __init__(self, eps: float, alpha: float | None = None) -> None:
        self.eps = float(eps)
        self.alpha = 1.25 * self.eps if alpha is None else float(alpha)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        delta = fgsm_rs_delta(model, x, y, self.eps, self.alpha)
        logits = model(x + delta)
        return F.cross_entropy(logits.float(), y), logits
