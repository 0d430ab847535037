"""Projected Sinkhorn (Wong, Schmidt & Kolter 2019; spec-003 section 2.10, Algorithm 8) with local transport plans.

Images are mass vectors. The Wasserstein ball of radius eps around x holds every z that x can be moved to by a
transport plan Pi >= 0 with row sums x, column sums z and cost <Pi, C> <= eps. Mass may move only inside a k x k
window (``kernel``, 5 by default), with cost C = (di^2 + dj^2)^(p/2) for a move by (di, dj) pixels (p = 1: the
1-Wasserstein distance); each channel has its own plan and the cost budget is shared by all channels.

The entropy-regularised projection of w onto the ball,

    min_{z, Pi >= 0}  1/2 ||w - z||^2 + (1/lam) sum Pi log Pi   s.t.  Pi 1 = x,  Pi^T 1 = z,  <Pi, C> <= eps,

is solved in its dual (Lemma 2) by block coordinate ascent, all in the log domain:

    alpha_i = log x_i - logsumexp_j (beta_j - psi C_ij - 1)                 (rows sum to x)
    beta_j  = lam w_j - W(lam K_j exp(lam w_j)),  K_j = sum_i exp(alpha_i - psi C_ij - 1)  (Lambert W)
    psi     = psi - t g / h,  g = <Pi, C> - eps,  h = -<Pi, C * C>,  t halved until psi >= 0   (Newton on psi)

and z = w - beta / lam. An optional per-pixel ceiling ``upper`` (the pixel range, in mass units) is part of the
problem: the z-minimisation then clips, and beta_j = min(beta_j, log(upper / K_j)).

Two additions make the result exactly feasible (the projection is otherwise only approximately so): at the end
the rows are renormalised to sum to x, z is taken as the plan's column sums, and if the plan still costs more than
eps, or a pixel exceeds ``upper``, plan and z are blended with the identity plan (which moves nothing and costs
nothing) by the largest factor that satisfies both. The returned :class:`Projection` carries the plan's cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["local_cost", "lambertw_exp", "Projection", "project_wasserstein", "transport_cost"]


def local_cost(kernel: int = 5, p: float = 1.0, dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu") -> Tensor:
    """Cost of moving mass by each offset of a ``kernel`` x ``kernel`` window, flattened row-major: (k*k,)."""
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"the transport window must be an odd size >= 1, got {kernel}")
    r = kernel // 2
    d = torch.arange(-r, r + 1, dtype=dtype, device=device)
    di, dj = torch.meshgrid(d, d, indexing="ij")
    return (di ** 2 + dj ** 2).pow(p / 2).reshape(-1)


def lambertw_exp(s: Tensor, iters: int = 8) -> Tensor:
    """W(exp(s)), the principal Lambert W of e^s, for any real s (also huge s, where e^s overflows).

    Solves e^u + u = s for u = log W by Newton's method (convex and increasing in u, so it converges from any
    start; from this start 6 steps reach double precision on s in [-60, 60]); W = e^u. For s < -50,
    W(e^s) = e^s to double precision.
    """
    tiny = s < -50
    ss = torch.where(tiny, torch.full_like(s, -50.0), s)
    u = torch.where(ss > 1, torch.log(ss - torch.log(ss.clamp_min(1.0))), ss)
    for _ in range(iters):
        eu = torch.exp(u)
        u = u - (eu + u - ss) / (eu + 1)
    return torch.where(tiny, torch.exp(s), torch.exp(u))


def _unfold(a: Tensor, kernel: int, fill: float) -> Tensor:
    """(B, C, H, W) -> (B, C, k*k, H*W): entry [.., o, i] is a at pixel i + offset o (``fill`` outside)."""
    b, c, h, w = a.shape
    r = kernel // 2
    padded = F.pad(a, (r, r, r, r), value=fill)
    u = F.unfold(padded.reshape(b * c, 1, h + 2 * r, w + 2 * r), kernel)   # (B*C, k*k, H*W)
    return u.reshape(b, c, kernel * kernel, h * w)


def _fold_back(v: Tensor, kernel: int, shape: tuple[int, int]) -> Tensor:
    """Adjoint of :func:`_unfold`: (B, C, k*k, H*W) -> (B, C, H, W), summing each entry onto pixel i + offset o."""
    b, c = v.shape[:2]
    h, w = shape
    r = kernel // 2
    out = F.fold(v.reshape(b * c, kernel * kernel, h * w), (h + 2 * r, w + 2 * r), kernel)
    return out.reshape(b, c, h + 2 * r, w + 2 * r)[:, :, r: r + h, r: r + w]


@dataclass
class Projection:
    """Result of :func:`project_wasserstein` (per example tensors have the batch axis first)."""

    z: Tensor            # the projection (B, C, H, W), exactly inside the ball (see the module docstring)
    cost: Tensor         # (B,) transport cost of the plan that certifies it (<= eps)
    blend: Tensor        # (B,) factor of the final blend with the identity plan (1 = no blend needed)
    iterations: int
    psi: Tensor          # (B,) final dual variable of the cost constraint


def _window_sum(a: Tensor, weights: Tensor, kernel: int) -> Tensor:
    """out_i = sum_o weights[b, o] * a_{i+o} over the k x k window (zero outside): one depthwise convolution.

    a (B, C, H, W), weights (B, k*k) (one kernel per example, shared by its channels)."""
    b, c, h, w = a.shape
    r = kernel // 2
    wk = weights.view(b, 1, 1, kernel, kernel).expand(b, c, 1, kernel, kernel).reshape(b * c, 1, kernel, kernel)
    return F.conv2d(a.reshape(1, b * c, h, w), wk, padding=r, groups=b * c).view(b, c, h, w)


def _log_window_sum(loga: Tensor, weights: Tensor, kernel: int) -> Tensor:
    """log sum_o weights[b, o] exp(loga_{i+o}), stabilised by each example's largest finite entry."""
    b = loga.shape[0]
    finite = torch.where(torch.isfinite(loga), loga, torch.full_like(loga, -torch.inf))
    top = finite.reshape(b, -1).amax(dim=1).clamp_min(-1e30).view(-1, 1, 1, 1)
    return torch.log(_window_sum(torch.exp(loga - top), weights, kernel)) + top


def project_wasserstein(x: Tensor, w: Tensor, eps: float | Tensor, *, kernel: int = 5, lam: float = 1000.0,
                        p: float = 1.0, maxiter: int = 50, tol: float = 1e-4,
                        upper: float | Tensor | None = None) -> Projection:
    """Project ``w`` onto the Wasserstein ball of radius ``eps`` around ``x`` (both (B, C, H, W), x >= 0).

    ``eps`` and ``upper`` may be floats or (B,) tensors. Iterates at most ``maxiter`` times, stopping when no
    entry of z moves by more than ``tol`` times the largest entry of x. The window sums of the updates are
    depthwise convolutions of the exponentiated (max-shifted) dual variables.
    """
    if x.shape != w.shape or x.dim() != 4:
        raise ValueError(f"x and w must both be (B, C, H, W); got {tuple(x.shape)} and {tuple(w.shape)}")
    if bool((x < 0).any()):
        raise ValueError("x must be a non-negative mass vector (images in [0, 1])")
    if lam <= 0 or maxiter < 1:
        raise ValueError(f"need lam > 0 and maxiter >= 1, got lam={lam}, maxiter={maxiter}")
    b, c, h, wd = x.shape
    dt = x.dtype
    eps_t = torch.as_tensor(eps, dtype=dt, device=x.device).expand(b).clone()
    cost = local_cost(kernel, p, dt, x.device)
    log_x = torch.log(x)                      # -inf where there is no mass
    log_up = None
    if upper is not None:
        up_t = torch.as_tensor(upper, dtype=dt, device=x.device).expand(b)
        if bool((x > up_t.view(-1, 1, 1, 1) * (1 + 1e-6)).any()):
            raise ValueError("x exceeds the per-pixel ceiling `upper`")
        log_up = torch.log(up_t).view(-1, 1, 1, 1)
    log_lam = float(torch.log(torch.tensor(lam, dtype=torch.float64)))
    beta = torch.full_like(x, -float(torch.log(torch.tensor(float(c * h * wd), dtype=torch.float64))))
    alpha = beta.clone()
    psi = torch.ones(b, dtype=dt, device=x.device)
    scale = x.reshape(b, -1).amax(dim=1).clamp_min(torch.finfo(dt).tiny)
    z_old = w
    it = 0
    for it in range(1, maxiter + 1):
        k_psi = torch.exp(-psi.view(-1, 1) * cost.view(1, -1) - 1.0)            # (B, k*k)
        alpha = log_x - _log_window_sum(beta, k_psi, kernel)                     # rows sum to x
        log_k = _log_window_sum(alpha, k_psi, kernel)                            # symmetric window: column sums
        beta = lam * w - lambertw_exp(log_lam + log_k + lam * w)
        if log_up is not None:
            beta = torch.minimum(beta, log_up - log_k)
        # Newton step on psi with the plan after both updates: <Pi, C> and <Pi, C^2> as window sums
        top_a = alpha.reshape(b, -1).amax(dim=1).clamp_min(-1e30).view(-1, 1, 1, 1)
        top_b = beta.reshape(b, -1).amax(dim=1).view(-1, 1, 1, 1)
        ua, vb = torch.exp(alpha - top_a), torch.exp(beta - top_b)
        shift = torch.exp(top_a + top_b).view(-1)
        g = (ua * _window_sum(vb, k_psi * cost, kernel)).sum(dim=(1, 2, 3)) * shift - eps_t
        hh = -(ua * _window_sum(vb, k_psi * cost ** 2, kernel)).sum(dim=(1, 2, 3)) * shift
        step = torch.where(hh < 0, g / hh.clamp_max(-torch.finfo(dt).tiny), torch.zeros_like(g))
        t = torch.ones_like(psi)
        for _ in range(60):
            bad = psi - t * step < 0
            if not bool(bad.any()):
                break
            t = torch.where(bad, t / 2, t)
        psi = (psi - t * step).clamp_min(0)
        z = w - beta / lam
        if log_up is not None:
            z = torch.minimum(z, torch.exp(log_up))
        moved = ((z - z_old).abs().reshape(b, -1).amax(dim=1) / scale).max()
        z_old = z
        if it > 1 and float(moved) <= tol:
            break
    return _feasible(x, beta, psi, cost, kernel, eps_t, upper, it)


def _feasible(x: Tensor, beta: Tensor, psi: Tensor, cost: Tensor, kernel: int, eps: Tensor,
              upper: float | Tensor | None, iterations: int, rounds: int = 5) -> Projection:
    """An exactly feasible point from the final dual variables.

    The plan Pi[i, i+o] = x_i K_o e^beta_{i+o} / sum_o' K_o' e^beta_{i+o'} has rows summing to x exactly; z is its
    column sums. Pixels above the ceiling (a rounding-level excess, since the iterates respect it) send the excess
    of their inflow back to where it came from (the sources keep it: zero cost), for up to ``rounds`` rounds.
    Whatever still violates the cost budget or the ceiling is fixed by blending with the identity plan.
    """
    b, c, h, w = x.shape
    tiny = torch.finfo(x.dtype).tiny
    k_psi = torch.exp(-psi.view(-1, 1) * cost.view(1, -1) - 1.0)                       # (B, k*k)
    top = beta.reshape(b, -1).amax(dim=1).view(-1, 1, 1, 1)
    v = torch.exp(beta - top)
    row = _window_sum(v, k_psi, kernel)                                                 # sum_o K_o v_{i+o}
    ratio = torch.where(x > 0, x / row.clamp_min(tiny), torch.zeros_like(x)).reshape(b, c, 1, h * w)
    plan = ratio * k_psi.view(b, 1, -1, 1) * _unfold(v, kernel, 0.0)                   # (B, C, k*k, H*W)
    centre = (kernel * kernel) // 2                                                     # the offset (0, 0)
    z = _fold_back(plan, kernel, (h, w))
    up = None
    if upper is not None:
        up = torch.as_tensor(upper, dtype=x.dtype, device=x.device).expand(b).view(-1, 1, 1, 1)
        for _ in range(rounds):
            over = (z - up).clamp_min(0)
            if not bool((over > 0).any()):
                break
            own = plan[:, :, centre].reshape(b, c, h, w)                                # mass that stayed put
            frac = torch.where(over > 0, over / (z - own).clamp_min(tiny), torch.zeros_like(z)).clamp(0, 1)
            moved = plan * _unfold(frac, kernel, 0.0)                                   # inflow sent back
            moved[:, :, centre] = 0
            plan = plan - moved
            plan[:, :, centre] += moved.sum(dim=2)
            z = _fold_back(plan, kernel, (h, w))
    plan_cost = (plan * cost.view(1, 1, -1, 1)).sum(dim=(1, 2, 3))
    t = torch.where(plan_cost > eps, eps / plan_cost.clamp_min(tiny), torch.ones_like(plan_cost))
    if up is not None:
        excess = z > up
        rr = torch.where(excess, (up - x).clamp_min(0) / (z - x).clamp_min(tiny), torch.ones_like(z))
        t = torch.minimum(t, rr.reshape(b, -1).amin(dim=1).clamp(0, 1))
    tv = t.view(-1, 1, 1, 1)
    z = tv * z + (1 - tv) * x
    return Projection(z, t * plan_cost, t, iterations, psi)


def transport_cost(plan: Tensor, kernel: int, p: float = 1.0) -> Tensor:
    """Cost (B,) of a local plan given as (B, C, k*k, H*W)."""
    return (plan * local_cost(kernel, p, plan.dtype, plan.device).view(1, 1, -1, 1)).sum(dim=(1, 2, 3))
