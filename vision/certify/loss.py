"""The robust loss (Theorem 2) and the certificates (Corollaries 1 and 2).

With c_j = e_y - e_j for every class j, J_j is a lower bound of f_y(x') - f_j(x') over the perturbation set, so
-J_j upper-bounds f_j - f_y (and -J_y = 0). For a translation-invariant, monotone loss such as cross-entropy,
``CE(-J, y)`` upper-bounds the worst-case loss: :func:`robust_loss` is a drop-in replacement for
``F.cross_entropy(model(x), y)``. An example is *certified* when J_j > 0 for every j != y: no perturbation in the
set changes the class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dual import DualNetwork

__all__ = ["margin_bounds", "robust_loss", "Certificate", "certify_batch"]


def _differences(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """c (B, K, K) with c[b, j] = e_{labels[b]} - e_j."""
    eye = torch.eye(num_classes, dtype=dtype, device=labels.device)
    return eye[labels].unsqueeze(1) - eye.unsqueeze(0)


def margin_bounds(model: nn.Module, x: Tensor, labels: Tensor, eps: float | Tensor, norm: str = "linf",
                  proj: int | None = None, clip: tuple[float, float] | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """J (B, K): J[b, j] <= min over the set of f_{labels[b]}(x') - f_j(x'); J[b, labels[b]] = 0."""
    dn = DualNetwork(model, x, eps, norm, proj, clip, generator)
    if len(dn.output_shape) != 1:
        raise ValueError(f"the model must output logits (B, K), got per-example shape {dn.output_shape}")
    c = _differences(labels, dn.output_shape[0], x.dtype)
    return dn.objective(c)


def robust_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, norm: str = "linf",
                proj: int | None = None, clip: tuple[float, float] | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(mean CE(-J, y), per-example 'not certified' flags): the robust loss and the robust error it implies.

    With ``proj`` the bound is the random-projection estimate (training); the flags are then estimates too.
    """
    j = margin_bounds(model, x, y, eps, norm, proj, clip, generator)
    loss = F.cross_entropy(-j, y)
    return loss, _min_other(j.detach(), y) <= 0


@dataclass
class Certificate:
    """Per-example results of :func:`certify_batch` (all tensors (B,))."""

    pred: Tensor            # clean prediction
    certified: Tensor       # Corollary 1: the true label is provably kept over the whole set
    detected: Tensor        # Corollary 2: the *predicted* label is provably kept (a test-time flag, no labels)
    margin: Tensor          # min_{j != y} J_j (> 0 iff certified)


def certify_batch(model: nn.Module, x: Tensor, y: Tensor, eps: float | Tensor, norm: str = "linf",
                  clip: tuple[float, float] | None = None) -> Certificate:
    """Exact certificates (no projections) for a batch, in eval mode and without gradients."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            pred = model(x).argmax(1)
            dn = DualNetwork(model, x, eps, norm, None, clip)
            k = dn.output_shape[0]
            margin = _min_other(dn.objective(_differences(y, k, x.dtype)), y)
            margin_pred = _min_other(dn.objective(_differences(pred, k, x.dtype)), pred)
    finally:
        model.train(was)
    return Certificate(pred, margin > 0, margin_pred > 0, margin)


def _min_other(j: Tensor, labels: Tensor) -> Tensor:
    """min over j != label of J[:, j]."""
    return (j + F.one_hot(labels, j.shape[1]).to(j.dtype) * torch.finfo(j.dtype).max).min(dim=1).values
