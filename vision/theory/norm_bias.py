"""The norm-bias regulariser of spec-000 section 4.2: R_mu(phi) = | sum_i phi_i^2 - mu^2 |, over all parameters.

R_0 is weight decay (sum phi^2 with a coefficient); R_mu pulls the squared parameter norm towards mu^2 instead of 0.
Its (sub)gradient is 2 sign(||phi||^2 - mu^2) phi; the source's reference code adds coef sign(.) phi to the gradient
(the factor 2 is absorbed in the coefficient). :class:`NormBiasTraining` adds ``coef * R_mu`` to the cross-entropy,
so with ``mu = 0`` it is exactly weight decay of strength 2 coef (a test checks this against SGD's weight decay).
The source's heuristic for mu: train with weight decay, record the final norm, set mu slightly higher
(:func:`mu_from_weight_decay`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["squared_norm", "norm_bias_penalty", "NormBiasTraining", "mu_from_weight_decay", "parameter_norm"]


def squared_norm(model: nn.Module) -> Tensor:
    """sum of phi_i^2 over every trainable parameter (differentiable)."""
    return sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad)


def norm_bias_penalty(model: nn.Module, mu2: float) -> Tensor:
    """R_mu = | ||phi||^2 - mu^2 | (``mu2`` is mu^2)."""
    if mu2 < 0:
        raise ValueError(f"mu^2 must be >= 0, got {mu2}")
    return (squared_norm(model) - mu2).abs()


class NormBiasTraining:
    """``loss = CE(model(x), y) + coef * R_mu``; returns (loss, logits)."""

    name = "norm-bias"

    def __init__(self, mu2: float, coef: float) -> None:
        if mu2 < 0 or coef < 0:
            raise ValueError(f"norm-bias needs mu^2 >= 0 and coef >= 0, got {mu2} and {coef}")
        self.mu2, self.coef = float(mu2), float(coef)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y) + self.coef * norm_bias_penalty(model, self.mu2)
        return loss, logits


def mu_from_weight_decay(final_norm: float, factor: float = 1.1) -> float:
    """mu^2 for a final weight-decay parameter norm: (factor * norm)^2 ("slightly higher")."""
    if final_norm <= 0 or factor <= 0:
        raise ValueError(f"need a positive norm and factor, got {final_norm} and {factor}")
    return float((factor * final_norm) ** 2)


def parameter_norm(model: nn.Module) -> float:
    """||phi||_2 over the trainable parameters."""
    with torch.no_grad():
        return float(squared_norm(model).sqrt())
