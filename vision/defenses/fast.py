"""Fast adversarial training: one FGSM step from a random start (alpha = 1.25 eps by default).

The inner step is written out here (two forward/backward passes per batch and nothing else) because it is the
hot loop of the fastest defense; ``tests/vision/test_defenses.py`` checks it against ``vision.attacks.fgsm.FGSM``
with the same random start. The catastrophic-overfitting guard lives in :mod:`vision.defenses.early_stopping`.

Starts (``init``), as compared in Table 4.3 of the thesis (the R+FGSM ablation):

- ``uniform``: ``delta0 ~ U(-r, r)`` per coordinate, r = ``init_radius`` (default eps): Algorithm 7.
- ``hypercube``: ``delta0 = r * sign(N(0, 1))``, a random vertex of the cube of radius r (R+FGSM of Tramer et
  al. uses r = eps / 2 with alpha = eps / 2).
- ``zero``: plain FGSM.

``clip_init`` says whether ``x + delta0`` is clipped to [0, 1] *before* the gradient is taken. The MNIST reference
code does not clip there (it clips only the final perturbation), and on MNIST this matters: most pixels sit at 0
or 1, so clipping the start sets half of those coordinates to 0, and after the step of 1.25 eps and the final
clip every saturated pixel ends at exactly 0 or eps, the {0, eps} pattern of zero-init FGSM that overfits
catastrophically. The default is False (Algorithm 7 and the MNIST reference); True reproduces the earlier
behaviour of this module and the CIFAR-10 reference code (where few pixels are saturated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

INITS = ("uniform", "hypercube", "zero")

__all__ = ["INITS", "FastTraining", "fgsm_rs_delta", "init_delta"]


def init_delta(x: Tensor, radius: float, init: str = "uniform", generator: torch.Generator | None = None) -> Tensor:
    """A random start of radius ``radius``: ``uniform`` U(-r, r), ``hypercube`` r * sign(N(0, 1)), ``zero``."""
    if init == "uniform":
        return (torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator) * 2 - 1) * radius
    if init == "hypercube":
        g = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return torch.where(g >= 0, radius, -radius).to(x.dtype)
    if init == "zero":
        return torch.zeros_like(x)
    raise ValueError(f"unknown fast-training init {init!r}; choose one of {', '.join(INITS)} (--fast-init)")


def fgsm_rs_delta(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float,
                  delta0: Tensor | None = None, generator: torch.Generator | None = None, *,
                  init: str = "uniform", init_radius: float | None = None, clip_init: bool = False) -> Tensor:
    """The FGSM-RS perturbation: a random start ``delta0`` (see :func:`init_delta`; clipped so ``x + delta0`` is
    in [0, 1] only when ``clip_init``), one signed-gradient step of size ``alpha`` taken at ``x + delta0``, then
    projection onto the ball and the [0, 1] box."""
    if delta0 is None:
        delta0 = init_delta(x, eps if init_radius is None else float(init_radius), init, generator)
    if clip_init:
        delta0 = (x + delta0).clamp(0.0, 1.0) - x
    delta = delta0.detach().requires_grad_(True)
    loss = F.cross_entropy(model(x + delta).float(), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0.0, 1.0) - x


class FastTraining:
    """FGSM from a random start: ``loss = CE(model(x + delta_fgsm), y)`` (model stays in train mode).

    Args:
        eps: Linf radius.
        alpha: FGSM step (default 1.25 eps).
        init: ``uniform`` (default), ``hypercube`` or ``zero`` (see the module docstring).
        init_radius: radius of the random start (default eps; R+FGSM uses eps / 2).
        clip_init: clip ``x + delta0`` to [0, 1] before taking the gradient (default False, as the MNIST reference).
    """

    name = "fast"

    def __init__(self, eps: float, alpha: float | None = None, *, init: str = "uniform",
                 init_radius: float | None = None, clip_init: bool = False) -> None:
        if init not in INITS:
            raise ValueError(f"unknown fast-training init {init!r}; choose one of {', '.join(INITS)} (--fast-init)")
        self.eps = float(eps)
        self.alpha = 1.25 * self.eps if alpha is None else float(alpha)
        self.init = init
        self.init_radius = self.eps if init_radius is None else float(init_radius)
        self.clip_init = bool(clip_init)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        delta = fgsm_rs_delta(model, x, y, self.eps, self.alpha, init=self.init, init_radius=self.init_radius,
                              clip_init=self.clip_init)
        logits = model(x + delta)
        return F.cross_entropy(logits.float(), y), logits
