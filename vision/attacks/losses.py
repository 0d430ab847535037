"""Per-example attack objectives (to be maximised) computed from logits.

- ``ce``: cross-entropy of the true label (untargeted) or minus the cross-entropy of the target.
- ``dlr``: the difference-of-logits ratio, ``-(z_y - max_{i != y} z_i) / (z_(1) - z_(3))`` with ``z_(k)`` the k-th
  largest logit. It is invariant to shifting and rescaling the logits, so saturated softmax outputs (a common form
  of gradient masking) do not flatten it.
- ``dlr_targeted``: ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)`` for a target class t (needs >= 4 classes).
- ``margin``: ``max_{i != y} z_i - z_y`` (positive exactly when the example is misclassified); the gradient-free
  attacks maximise it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("ce", "dlr")

__all__ = ["LOSSES", "ce_loss", "dlr_loss", "dlr_targeted_loss", "margin", "check_loss"]

_TINY = 1e-12


def check_loss(loss: str) -> str:
    """Validate a loss name and return it."""
    if loss not in LOSSES:
        raise ValueError(f"unknown attack loss {loss!r}; expected one of {LOSSES}")
    return loss


def ce_loss(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Cross-entropy of ``y`` per example (minus it when ``targeted``: then ``y`` is the target)."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    return -ce if targeted else ce


def _other_max(z: Tensor, y: Tensor) -> Tensor:
    """max over i != y of z_i, per row."""
    return z.scatter(1, y.unsqueeze(1), -torch.inf).amax(dim=1)


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Untargeted DLR loss per example (needs >= 3 classes)."""
    z = logits.float()
    if z.shape[1] < 3:
        raise ValueError(f"the DLR loss needs at least 3 classes, the model has {z.shape[1]}")
    top = z.topk(3, dim=1).values
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    return -(z_y - _other_max(z, y)) / (top[:, 0] - top[:, 2] + _TINY)


def dlr_targeted_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Targeted DLR loss per example for true labels ``y`` and targets ``target`` (needs >= 4 classes)."""
    z = logits.float()
    if z.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, the model has {z.shape[1]}")
    top = z.topk(4, dim=1).values
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    z_t = z.gather(1, target.unsqueeze(1)).squeeze(1)
    return -(z_y - z_t) / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _TINY)


def margin(logits: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """``max_{i != y} z_i - z_y`` (untargeted; > 0 iff misclassified) or ``z_t - max_{i != t} z_i`` (targeted,
    ``y`` = t; > 0 iff classified as the target; ties count as failures)."""
    z = logits.float()
    z_y = z.gather(1, y.unsqueeze(1)).squeeze(1)
    other = _other_max(z, y)
    return z_y - other if targeted else other - z_y
