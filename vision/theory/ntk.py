"""The empirical neural tangent kernel of a network on a few inputs (spec-000 section 4.3).

Phi[i, j, k, l] = sum_p d f(x_i)_k / d phi_p * d f(x_j)_l / d phi_p, an (N, N, C, C) tensor (N = 25 images in the
source). :func:`ntk_change` gives the two numbers the source tracks between the kernel before and after training:
the relative change ||Phi_1 - Phi_0|| / ||Phi_0|| and the correlation coefficient
Cov(Phi_1, Phi_0) / (sigma(Phi_1) sigma(Phi_0)) over the tensor's entries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["jacobian", "empirical_ntk", "ntk_change"]


def jacobian(model: nn.Module, x: Tensor, max_entries: int = 400_000_000) -> Tensor:
    """(N * C, P) Jacobian of the outputs (row i * C + k = output k of input i) w.r.t. the trainable parameters,
    one backward pass per output (eval mode; the mode is restored)."""
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in params)
    was = model.training
    model.eval()
    try:
        jac = None
        for i in range(x.shape[0]):  # one input at a time: each backward pass only runs through one example
            out = model(x[i: i + 1])
            if out.ndim != 2:
                raise ValueError(f"the NTK needs (N, C) outputs, got {tuple(out.shape)}")
            c = out.shape[1]
            if jac is None:
                if x.shape[0] * c * n_params > max_entries:
                    raise ValueError(f"the Jacobian would hold {x.shape[0] * c} x {n_params} entries "
                                     f"(> {max_entries}); use fewer images (--set ntk_images=N), a narrower "
                                     "network, or raise --set ntk_max_entries")
                jac = torch.empty(x.shape[0] * c, n_params, dtype=out.dtype, device=out.device)
            for k in range(c):
                gs = torch.autograd.grad(out[0, k], params, retain_graph=k < c - 1, allow_unused=True)
                jac[i * c + k] = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                                            for p, g in zip(params, gs)])
    finally:
        model.train(was)
    return jac


def empirical_ntk(model: nn.Module, x: Tensor, max_entries: int = 400_000_000) -> Tensor:
    """The (N, N, C, C) empirical NTK (float64) of ``model`` at inputs ``x``; ``max_entries`` caps the Jacobian's
    size (N C x parameters)."""
    jac = jacobian(model, x, max_entries).double()
    n = x.shape[0]
    c = jac.shape[0] // n
    return (jac @ jac.T).reshape(n, c, n, c).permute(0, 2, 1, 3).contiguous()


def ntk_change(before: Tensor, after: Tensor) -> dict[str, float]:
    """{"relative_change", "correlation", "norm_before", "norm_after"} between two kernels of equal shape."""
    if before.shape != after.shape:
        raise ValueError(f"kernels of different shapes: {tuple(before.shape)} vs {tuple(after.shape)}")
    a, b = before.double().flatten(), after.double().flatten()
    na = float(a.norm())
    ca, cb = a - a.mean(), b - b.mean()
    den = float(ca.norm() * cb.norm())
    return {"relative_change": float((b - a).norm()) / na if na > 0 else float("nan"),
            "correlation": float(ca @ cb) / den if den > 0 else float("nan"),
            "norm_before": na, "norm_after": float(b.norm())}
