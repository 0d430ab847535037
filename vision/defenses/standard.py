"""Standard (clean) training: cross-entropy on the unperturbed batch."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class StandardTraining:
    """``loss = CE(model(x), y)``; returns (loss, logits on the input the loss was taken at)."""

    name = "standard"

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits.float(), y), logits
