"""Euclidean projections of batched perturbations onto norm balls (and the [0, 1] pixel box).

All functions take a perturbation ``delta`` of shape (B, ...) and treat each example separately.

- :func:`project_linf`: clip to [-eps, eps].
- :func:`project_l2`: rescale onto the L2 ball when outside.
- :func:`project_l1`: the exact sort-based projection onto the L1 ball (sort |delta|, find the threshold eta,
  soft-threshold).
- :func:`project_l1_box`: the exact projection onto the L1 ball intersected with the box ``lo <= delta <= hi``
  (``lo <= 0 <= hi``; with ``lo = -x`` and ``hi = 1 - x`` this keeps ``x + delta`` in [0, 1]). The solution is
  ``sign(v) * clip(|v| - lam, 0, b)`` with ``b`` the box bound on the side of ``v``; the function ``lam -> L1 norm``
  is piecewise linear, so sorting its 2n breakpoints gives ``lam`` exactly.
- :func:`project`: onto the ball of the given norm and the [0, 1] box around ``x`` (exact for linf and l1; for l2
  the ball projection is followed by the box clip, which stays feasible).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["clip_box", "project_linf", "project_l2", "project_l1", "project_l1_box", "project"]


def _flat(delta: Tensor) -> Tensor:
    return delta.reshape(delta.shape[0], -1)


def clip_box(x: Tensor, delta: Tensor) -> Tensor:
    """The perturbation that keeps ``x + delta`` in [0, 1] (coordinate-wise clip; never increases any norm)."""
    return (x + delta).clamp(0.0, 1.0) - x


def project_linf(delta: Tensor, eps: float) -> Tensor:
    """Project onto the L-infinity ball of radius ``eps``."""
    return delta.clamp(-eps, eps)


def project_l2(delta: Tensor, eps: float) -> Tensor:
    """Project onto the L2 ball of radius ``eps`` (rescale the examples outside it)."""
    norms = _flat(delta).norm(p=2, dim=1).clamp_min(1e-12)
    scale = (eps / norms).clamp(max=1.0)
    return delta * scale.view(-1, *([1] * (delta.dim() - 1)))


def project_l1(delta: Tensor, eps: float) -> Tensor:
    """Exact Euclidean projection onto the L1 ball of radius ``eps`` (sort-based, per example).

    With gamma = |delta| sorted in decreasing order, rho = max{j : gamma_j - (sum_{r<=j} gamma_r - eps) / j > 0},
    eta = (sum_{r<=rho} gamma_r - eps) / rho, and the result is sign(delta) * max(|delta| - eta, 0).
    Examples already inside the ball are returned unchanged.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    flat = _flat(delta)
    work = flat.double()
    a = work.abs()
    inside = a.sum(dim=1) <= eps
    if bool(inside.all()):
        return delta.clone()
    gamma, _ = a.sort(dim=1, descending=True)
    csum = gamma.cumsum(dim=1)
    j = torch.arange(1, gamma.shape[1] + 1, device=delta.device, dtype=work.dtype)
    cond = gamma - (csum - eps) / j > 0
    rho = (cond * j).amax(dim=1).clamp_min(1).long()  # cond holds at j=1 whenever gamma_1 > 0
    eta = (csum.gather(1, (rho - 1).unsqueeze(1)).squeeze(1) - eps) / rho.to(work.dtype)
    eta = torch.where(inside, torch.zeros_like(eta), eta.clamp_min(0.0))
    out = work.sign() * (a - eta.unsqueeze(1)).clamp_min(0.0)
    out = _shrink_into_l1(out, eps)
    return out.to(delta.dtype).reshape(delta.shape)


def project_l1_box(delta: Tensor, eps: float, lo: Tensor, hi: Tensor) -> Tensor:
    """Exact Euclidean projection onto {d : ||d||_1 <= eps, lo <= d <= hi} per example (requires lo <= 0 <= hi).

    ``lo`` and ``hi`` broadcast to ``delta``. For images, ``lo = -x`` and ``hi = 1 - x``.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    lo = torch.broadcast_to(lo, delta.shape)
    hi = torch.broadcast_to(hi, delta.shape)
    if bool((lo > 0).any()) or bool((hi < 0).any()):
        raise ValueError("project_l1_box needs lo <= 0 <= hi (the unperturbed point must be inside the box)")
    v = _flat(delta).double()
    lo_f, hi_f = _flat(lo).double(), _flat(hi).double()
    a = v.abs()
    b = torch.where(v >= 0, hi_f, -lo_f)  # the box bound on the side the coordinate points to
    boxed = a.clamp(max=b)  # the solution when the L1 constraint is inactive (lam = 0)
    total0 = boxed.sum(dim=1)
    active = total0 > eps
    lam = torch.zeros_like(total0)
    if bool(active.any()):
        va, ba = a[active], b[active]
        start = (va - ba).clamp_min(0.0)  # where coordinate i starts to shrink as lam grows
        # events: slope -1 at start_i and +1 at a_i (coordinates with b_i = 0 never move: no events)
        moving = (ba > 0).to(va.dtype)
        pts = torch.cat([start, va], dim=1)
        slope_delta = torch.cat([-moving, moving], dim=1)
        pts, order = pts.sort(dim=1)
        slope_delta = slope_delta.gather(1, order)
        slope = slope_delta.cumsum(dim=1)  # slope of f on [pts_k, pts_{k+1}]
        gaps = pts[:, 1:] - pts[:, :-1]
        f0 = boxed[active].sum(dim=1)  # f(0) = f(pts_0) since f is flat on [0, min start]
        f_at = torch.cat([f0.unsqueeze(1), f0.unsqueeze(1) + (slope[:, :-1] * gaps).cumsum(dim=1)], dim=1)
        ok = f_at >= eps
        # the last breakpoint with f >= eps (there is one: f(pts_0) = f0 > eps and f(last) = 0 < eps)
        idx = torch.arange(pts.shape[1], device=pts.device).expand_as(pts)
        k = torch.where(ok, idx, torch.zeros_like(idx)).amax(dim=1, keepdim=True)
        s_k = slope.gather(1, k).squeeze(1)
        lam_a = pts.gather(1, k).squeeze(1) + (f_at.gather(1, k).squeeze(1) - eps) / (-s_k).clamp_min(1.0)
        lam[active] = lam_a
    out = v.sign() * (a - lam.unsqueeze(1)).clamp(min=0.0).clamp(max=b)
    out = _shrink_into_l1(out, eps)
    return out.to(delta.dtype).reshape(delta.shape)


def _shrink_into_l1(flat: Tensor, eps: float) -> Tensor:
    """Rescale rows whose L1 norm exceeds ``eps`` by rounding only (keeps the box since it shrinks toward 0)."""
    norms = flat.abs().sum(dim=1)
    scale = torch.where(norms > eps, eps / norms.clamp_min(1e-30), torch.ones_like(norms))
    return flat * scale.unsqueeze(1)


def project(delta: Tensor, x: Tensor, eps: float, norm: str) -> Tensor:
    """Project onto the ``norm`` ball of radius ``eps`` intersected with the box keeping ``x + delta`` in [0, 1]."""
    if norm == "linf":
        return clip_box(x, project_linf(delta, eps))
    if norm == "l2":
        return clip_box(x, project_l2(delta, eps))
    if norm == "l1":
        return project_l1_box(delta, eps, -x, 1.0 - x)
    raise ValueError(f"unknown norm {norm!r}; expected 'linf', 'l2' or 'l1'")
