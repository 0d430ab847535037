"""Hessian of a training loss with respect to the parameters: Hessian-vector products (double back-propagation,
summed over the data in batches) and the extreme eigenvalues by power iteration (spec-000 section 4.1: "500
iterations of the power method on a shifted full-dataset Hessian").

:func:`extreme_eigenvalues`: the power method on H gives the eigenvalue of largest magnitude, lambda_1; the power
method on the shifted operator H - lambda_1 I then gives lambda_other - lambda_1, hence the eigenvalue at the
other end of the spectrum. A test compares both with a dense eigensolver on a tiny network.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["flat_params", "loss_and_grad", "hvp", "power_iteration", "extreme_eigenvalues", "dense_hessian"]


def flat_params(model: nn.Module) -> list[Tensor]:
    """The parameters that require gradients, in order."""
    return [p for p in model.parameters() if p.requires_grad]


def _batches(x: Tensor, y: Tensor, batch_size: int):
    for s in range(0, x.shape[0], batch_size):
        yield x[s: s + batch_size], y[s: s + batch_size]


def _loss(model: nn.Module, xb: Tensor, yb: Tensor, n: int,
          loss_fn: Callable[[Tensor, Tensor], Tensor] | None) -> Tensor:
    out = model(xb)
    if loss_fn is None:
        return F.cross_entropy(out, yb, reduction="sum") / n
    return loss_fn(out, yb) * (xb.shape[0] / n)


def loss_and_grad(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1000,
                  loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> tuple[float, Tensor]:
    """(mean loss over the whole set, flat gradient) (default loss: cross-entropy; ``loss_fn`` returns a batch
    mean)."""
    params = flat_params(model)
    total, grads = 0.0, [torch.zeros_like(p) for p in params]
    for xb, yb in _batches(x, y, batch_size):
        loss = _loss(model, xb, yb, x.shape[0], loss_fn)
        gs = torch.autograd.grad(loss, params)
        total += float(loss.detach())
        grads = [a + b for a, b in zip(grads, gs)]
    return total, torch.cat([g.reshape(-1) for g in grads])


def hvp(model: nn.Module, x: Tensor, y: Tensor, v: Tensor, batch_size: int = 1000,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """H v for the full-data mean loss (flat ``v`` over :func:`flat_params`)."""
    params = flat_params(model)
    chunks, i = [], 0
    for p in params:
        chunks.append(v[i: i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    if i != v.numel():
        raise ValueError(f"vector of length {v.numel()} does not match {i} parameters")
    out = torch.zeros_like(v)
    for xb, yb in _batches(x, y, batch_size):
        loss = _loss(model, xb, yb, x.shape[0], loss_fn)
        gs = torch.autograd.grad(loss, params, create_graph=True)
        dot = sum((g * c).sum() for g, c in zip(gs, chunks))
        hv = torch.autograd.grad(dot, params)
        out += torch.cat([h.reshape(-1) for h in hv]).to(out.dtype)
    return out


def power_iteration(matvec: Callable[[Tensor], Tensor], dim: int, iters: int = 500, tol: float = 0.0,
                    generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu") -> tuple[float, int]:
    """(eigenvalue of largest magnitude (the Rayleigh quotient at the last iterate), iterations used).

    Stops early when the Rayleigh quotient changes by less than ``tol`` (relative) between iterations.
    """
    if iters < 1:
        raise ValueError(f"power iteration needs iters >= 1, got {iters}")
    v = torch.randn(dim, generator=generator, dtype=dtype, device="cpu").to(device)
    v = v / v.norm()
    lam = 0.0
    for it in range(1, iters + 1):
        w = matvec(v)
        new = float(v @ w)
        nrm = w.norm()
        if float(nrm) == 0.0:
            return 0.0, it
        v = w / nrm
        if tol > 0 and it > 1 and abs(new - lam) <= tol * max(abs(new), 1e-30):
            return new, it
        lam = new
    return lam, iters


def extreme_eigenvalues(matvec: Callable[[Tensor], Tensor], dim: int, iters: int = 500, tol: float = 0.0,
                        seed: int = 0, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> dict[str, float]:
    """{"max", "min", "dominant", "iters_dominant", "iters_shifted"} of a symmetric operator by two power runs."""
    gen = torch.Generator().manual_seed(int(seed))
    lam1, it1 = power_iteration(matvec, dim, iters, tol, gen, dtype, device)
    lam2, it2 = power_iteration(lambda v: matvec(v) - lam1 * v, dim, iters, tol, gen, dtype, device)
    other = lam2 + lam1
    return {"max": max(lam1, other), "min": min(lam1, other), "dominant": lam1, "iters_dominant": it1,
            "iters_shifted": it2}


def dense_hessian(model: nn.Module, x: Tensor, y: Tensor,
                  loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """The full (P, P) Hessian by P Hessian-vector products with unit vectors (tiny networks only: the
    reference for tests)."""
    p = sum(t.numel() for t in flat_params(model))
    dtype = flat_params(model)[0].dtype
    eye = torch.eye(p, dtype=dtype)
    return torch.stack([hvp(model, x, y, eye[i], loss_fn=loss_fn) for i in range(p)])
