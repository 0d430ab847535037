"""Steepest-ascent steps and random starts for the Linf, L2 and L1 threat models (shared by PGD and MSD).

- Linf: ``alpha * sign(g)``.
- L2: ``alpha * g / ||g||_2``.
- L1 (sparse): among the coordinates that can still move in the direction of their gradient without leaving
  [0, 1], take the top k by |g| (k drawn per example and step uniformly from an integer range, either a count of
  coordinates or a percentage of the input size) and move each by ``alpha / k`` in the direction of its gradient
  sign, so the step has L1 length ``alpha``. The plain L1 steepest-ascent step (one coordinate) is ``k = 1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

NORMS = ("linf", "l2", "l1")

__all__ = ["NORMS", "check_norm", "random_start", "steepest_step", "default_alpha", "l1_k_range"]


def check_norm(norm: str) -> str:
    """Validate a norm name and return it."""
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return norm


def default_alpha(eps: float, steps: int) -> float:
    """Step size used when none is given: 2.5 * eps / steps (enough to cross the ball and come back)."""
    return 2.5 * eps / max(int(steps), 1)


def _bview(v: Tensor, like: Tensor) -> Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def random_start(x: Tensor, eps: float, norm: str, generator: torch.Generator | None = None) -> Tensor:
    """A random perturbation in the ``norm`` ball of radius ``eps``, clipped so ``x + delta`` stays in [0, 1].

    Linf: uniform in the cube. L2: a uniform direction times ``eps * U(0, 1)``. L1: uniform in the L1 ball
    (normalised exponentials with a random sign, the Dirichlet construction).
    """
    b = x.shape[0]
    n = x[0].numel()
    kw = dict(device=x.device, dtype=x.dtype, generator=generator)
    if norm == "linf":
        delta = (torch.rand(x.shape, **kw) * 2 - 1) * eps
    elif norm == "l2":
        d = torch.randn(x.shape, **kw)
        d = d / _bview(d.reshape(b, -1).norm(dim=1).clamp_min(1e-12), x)
        delta = d * _bview(torch.rand(b, **kw) * eps, x)
    elif norm == "l1":
        e = -torch.log(torch.rand(b, n + 1, **kw).clamp_min(1e-30))  # Exp(1)
        mag = e[:, :n] / e.sum(dim=1, keepdim=True)
        sign = torch.where(torch.rand(b, n, **kw) < 0.5, -1.0, 1.0).to(x.dtype)
        delta = (sign * mag * eps).reshape(x.shape)
    else:
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    return (x + delta).clamp(0.0, 1.0) - x


def l1_k_range(n: int, l1_k: tuple[float, float], percent: bool) -> tuple[int, int]:
    """Integer range [k1, k2] of coordinates per L1 step, from a count or a percentage of ``n``."""
    k1, k2 = float(l1_k[0]), float(l1_k[1])
    if k1 <= 0 or k2 < k1:
        raise ValueError(f"l1_k must satisfy 0 < k1 <= k2, got {l1_k}")
    if percent:
        k1, k2 = k1 * n / 100.0, k2 * n / 100.0
    lo = max(1, min(n, int(math.floor(k1))))
    hi = max(lo, min(n, int(math.ceil(k2))))
    return lo, hi


def steepest_step(
    grad: Tensor,
    x: Tensor,
    delta: Tensor,
    alpha: float,
    norm: str,
    l1_k: tuple[int, int] = (1, 1),
    generator: torch.Generator | None = None,
) -> Tensor:
    """The steepest-ascent direction scaled to length ``alpha`` in ``norm`` (to be added to ``delta``).

    ``l1_k`` is the integer range of coordinates per L1 step (see :func:`l1_k_range`).
    """
    b = grad.shape[0]
    if norm == "linf":
        return alpha * grad.sign()
    if norm == "l2":
        gn = grad.reshape(b, -1).norm(dim=1).clamp_min(1e-12)
        return alpha * grad / _bview(gn, grad)
    if norm != "l1":
        raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")
    g = grad.reshape(b, -1)
    cur = (x + delta).reshape(b, -1)
    # coordinates pinned at the box in the direction the gradient pushes may not be chosen
    blocked = ((g > 0) & (cur >= 1.0)) | ((g < 0) & (cur <= 0.0)) | (g == 0)
    score = g.abs().masked_fill(blocked, -1.0)
    k1, k2 = l1_k
    k2 = min(k2, g.shape[1])
    k1 = min(k1, k2)
    k = torch.randint(k1, k2 + 1, (b,), device=g.device, generator=generator) if k2 > k1 else None
    vals, idx = score.topk(k2, dim=1)
    take = vals >= 0
    if k is not None:
        take &= torch.arange(k2, device=g.device).unsqueeze(0) < k.unsqueeze(1)
    count = take.sum(dim=1, keepdim=True).clamp_min(1).to(g.dtype)
    step = torch.zeros_like(g)
    step.scatter_(1, idx, take.to(g.dtype) * g.gather(1, idx).sign() * (alpha / count))
    return step.reshape(grad.shape)
