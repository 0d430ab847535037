"""The differentiable multiclass SVM of MetaOptNet: a Crammer-Singer dual QP per task, solved and differentiated
exactly.

The QP (MetaOptNet's form, with ``K`` the support Gram matrix, ``Y`` the one-hot support labels, ``C`` the cost
and ``r`` an optional ridge on the dual variables)::

    min_alpha  1/2 sum_k alpha_k^T (K + r I) alpha_k - sum_i alpha_i[y_i]
    s.t.       alpha_i[k] <= C * Y_i[k],   sum_k alpha_i[k] = 0            (i = support example, k = class)

and the class weights are ``w_k = sum_i alpha_i[k] x_i``. Substituting ``beta = C Y - alpha`` turns the feasible set
into a product of scaled simplices, ``beta_i >= 0, sum_k beta_i[k] = C``, with objective
``f(beta) = 1/2 <beta, Kr beta> + <Y - C Kr Y, beta>`` (``Kr = K + r I``).

Method (documented in docs/vision-fewshot.md):

1. **Solve**: accelerated projected gradient (FISTA with adaptive restart) on the simplices, step ``1 / L`` with
   ``L`` the largest eigenvalue of ``Kr``; the projection onto ``C * simplex`` is the exact sort-based one.
2. **Polish**: read the active set (``beta_i[k] = 0``) off the iterate and solve the KKT conditions restricted to
   that face (a linear system: stationarity on the free coordinates, ``beta = 0`` on the active ones, the simplex
   sums) with ``torch.linalg.solve`` in float64. When the active set is right this is the exact optimum; it is
   checked (``beta >= 0`` and the active multipliers ``>= 0``) and more iterations run where the check fails.
3. **Differentiate**: the polished solution is the solution of that linear system, and autograd differentiates
   through ``torch.linalg.solve`` with respect to ``K`` (hence the support embeddings). This is the implicit
   derivative of the QP solution (exact wherever the active set is locally constant, i.e. under strict
   complementarity, the same condition under which the KKT-based derivative of qpth/OptNet is exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["project_simplex", "solve_cs_dual", "cs_svm_alpha", "kkt_residuals", "SVMSolveInfo"]


def project_simplex(v: Tensor, total: float) -> Tensor:
    """Euclidean projection of each row (last axis) of ``v`` onto ``{b >= 0, sum b = total}`` (sort-based)."""
    n = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(dim=-1) - total
    ks = torch.arange(1, n + 1, device=v.device, dtype=v.dtype)
    cond = u - css / ks > 0
    rho = (cond * ks).amax(dim=-1, keepdim=True).clamp_min(1)  # the last index where cond holds (1-based)
    theta = css.gather(-1, rho.long() - 1) / rho
    return (v - theta).clamp_min(0.0)


@dataclass
class SVMSolveInfo:
    """How the solve went: FISTA iterations run, tasks whose polished solution failed the KKT check."""

    iterations: int
    failed_tasks: int


def _fista(kr: Tensor, lin: Tensor, total: float, beta: Tensor, lipschitz: Tensor, iters: int) -> Tensor:
    """FISTA with gradient-based adaptive restart on ``1/2 <b, Kr b> + <lin, b>`` over products of simplices."""
    z, t = beta.clone(), torch.ones(beta.shape[0], 1, 1, dtype=beta.dtype, device=beta.device)
    step = 1.0 / lipschitz.view(-1, 1, 1)
    for _ in range(iters):
        grad = kr @ z + lin
        new = project_simplex(z - step * grad, total)
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        restart = ((z - new) * (new - beta)).sum(dim=(1, 2), keepdim=True) > 0
        mom = torch.where(restart, torch.zeros_like(t), (t - 1) / t_new)
        z = new + mom * (new - beta)
        t = torch.where(restart, torch.ones_like(t), t_new)
        beta = new
    return beta


def _kkt_system(kr: Tensor, lin: Tensor, active: Tensor, total: float) -> Tensor:
    """Solve the KKT system on the face ``active`` (B, n, N); returns beta (B, n, N), differentiable."""
    b, n, m = lin.shape
    nm = n * m
    dev, dt = lin.device, lin.dtype
    eye_m = torch.eye(m, device=dev, dtype=dt)
    big = torch.einsum("bij,kl->bikjl", kr, eye_m).reshape(b, nm, nm)  # (Kr kron I)[(i,k),(j,l)]
    nu_cols = -torch.eye(n, device=dev, dtype=dt).repeat_interleave(m, dim=0).expand(b, nm, n)
    act = active.reshape(b, nm, 1)
    top = torch.cat([torch.where(act, torch.zeros_like(big), big), torch.where(act, torch.zeros_like(nu_cols),
                                                                               nu_cols)], dim=2)
    top = top + torch.cat([torch.diag_embed(act.squeeze(2).to(dt)), torch.zeros(b, nm, n, device=dev, dtype=dt)],
                          dim=2)
    sums = torch.cat([torch.eye(n, device=dev, dtype=dt).repeat_interleave(m, dim=1),
                      torch.zeros(n, n, device=dev, dtype=dt)], dim=1).expand(b, n, nm + n)
    mat = torch.cat([top, sums], dim=1)
    rhs = torch.cat([torch.where(act.squeeze(2), torch.zeros_like(lin.reshape(b, nm)), -lin.reshape(b, nm)),
                     torch.full((b, n), total, device=dev, dtype=dt)], dim=1)
    sol = torch.linalg.solve(mat, rhs.unsqueeze(2)).squeeze(2)
    return sol[:, :nm].reshape(b, n, m)


def _kkt_ok(kr: Tensor, lin: Tensor, beta: Tensor, active: Tensor, tol: float) -> Tensor:
    """Per task: the polished point is feasible and its active multipliers are non-negative (within tol)."""
    grad = kr @ beta + lin
    free = ~active
    big = torch.finfo(grad.dtype).max
    nu = torch.where(free, grad, torch.full_like(grad, big)).amin(dim=2, keepdim=True)
    mult = grad - nu
    scale = 1.0 + grad.abs().amax(dim=(1, 2))
    feas = (beta.amin(dim=(1, 2)) >= -tol * (1 + beta.abs().amax(dim=(1, 2))))
    dual = (torch.where(active, mult, torch.zeros_like(mult)).amin(dim=(1, 2)) >= -tol * scale)
    return feas & dual


def _problem(gram: Tensor, labels: Tensor, way: int, cost: float, ridge: float) -> tuple[Tensor, Tensor, Tensor]:
    n = gram.shape[-1]
    kr = gram + ridge * torch.eye(n, device=gram.device, dtype=gram.dtype)
    onehot = torch.nn.functional.one_hot(labels, way).to(gram.dtype)
    lin = onehot - cost * (kr @ onehot)
    return kr, lin, onehot


def solve_cs_dual(gram: Tensor, labels: Tensor, way: int, cost: float = 0.1, ridge: float = 0.0,
                  iters: int = 50, rounds: int = 40, tol: float = 1e-9,
                  active_tol: float = 1e-10) -> tuple[Tensor, SVMSolveInfo]:
    """Solve the dual for a batch of tasks; returns ``beta`` (B, n, way) with gradients w.r.t. ``gram``.

    ``gram``: (B, n, n) support Gram matrices (float; solved in float64), ``labels``: (B, n) in [0, way).
    """
    if gram.dim() != 3 or gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must be (B, n, n), got {tuple(gram.shape)}")
    if labels.shape != gram.shape[:2]:
        raise ValueError(f"labels must be (B, n) = {tuple(gram.shape[:2])}, got {tuple(labels.shape)}")
    if cost <= 0 or ridge < 0:
        raise ValueError(f"need cost C > 0 and ridge >= 0, got C={cost}, ridge={ridge}")
    g64 = gram.double()
    kr, lin, onehot = _problem(g64, labels, way, cost, ridge)
    with torch.no_grad():
        krd, lind = kr.detach(), lin.detach()
        lipschitz = torch.linalg.eigvalsh(krd)[:, -1].clamp_min(1e-12)
        beta = torch.full_like(lind, cost / way)
        ok = torch.zeros(gram.shape[0], dtype=torch.bool, device=gram.device)
        run = 0
        best = beta
        for _ in range(rounds):
            beta = _fista(krd, lind, cost, beta, lipschitz, iters)
            run += iters
            active = _active(beta, cost, active_tol)
            polished = _kkt_system(krd, lind, active, cost)
            ok = _kkt_ok(krd, lind, polished, active, tol)
            best = torch.where(ok.view(-1, 1, 1), polished.clamp_min(0.0), beta)
            if bool(ok.all()):
                break
        active = _active(best, cost, active_tol)
    sol = _kkt_system(kr, lin, active, cost)
    # tasks whose check failed keep the (feasible) FISTA iterate as value, with the face's derivative
    sol = torch.where(ok.view(-1, 1, 1), sol, sol + (best - sol).detach())
    return sol, SVMSolveInfo(run, int((~ok).sum()))


def _active(beta: Tensor, cost: float, active_tol: float) -> Tensor:
    """Coordinates at the bound (beta ~ 0); each example keeps at least its largest coordinate free."""
    active = beta <= active_tol * max(cost, 1.0)
    top = beta.argmax(dim=2, keepdim=True)
    return active.scatter(2, top, False)


def cs_svm_alpha(gram: Tensor, labels: Tensor, way: int, cost: float = 0.1, ridge: float = 0.0,
                 **solver: float) -> Tensor:
    """The dual solution ``alpha = C Y - beta`` (B, n, way) in the dtype of ``gram``; ``w_k = sum_i alpha_ik x_i``."""
    beta, _ = solve_cs_dual(gram, labels, way, cost, ridge, **solver)
    onehot = torch.nn.functional.one_hot(labels, way).to(beta.dtype)
    return (cost * onehot - beta).to(gram.dtype)


def kkt_residuals(gram: Tensor, labels: Tensor, way: int, alpha: Tensor, cost: float,
                  ridge: float = 0.0) -> dict[str, float]:
    """KKT residuals of ``alpha`` for the QP above, computed directly from its definition (float64).

    Returns the largest violation of: the upper bounds ``alpha_ik <= C Y_ik`` (primal), the sums (equality),
    the sign of the bound multipliers ``mu_ik = nu_i - g_ik >= 0`` with ``g = Kr alpha - Y`` the objective's
    gradient and ``nu_i`` the equality multiplier (dual), stationarity ``g_ik - nu_i + mu_ik = 0`` on the
    coordinates off the bound, and complementary slackness ``mu_ik (C Y_ik - alpha_ik) = 0``.
    """
    g64, a = gram.double(), alpha.double()
    kr, _, onehot = _problem(g64, labels, way, cost, ridge)
    grad = kr @ a - onehot
    slack = cost * onehot - a                                  # >= 0
    # nu_i: stationarity on free coordinates (slack > 0) gives mu = 0 there, so nu_i = g_ik on them
    free = slack > 1e-9 * max(cost, 1.0)
    nu = torch.where(free, grad, torch.zeros_like(grad)).sum(2, keepdim=True) / free.sum(2, keepdim=True).clamp_min(1)
    mu = nu - grad
    return {
        "primal": float((-slack).clamp_min(0).max()),
        "equality": float(a.sum(2).abs().max()),
        "stationarity": float(torch.where(free, mu.abs(), torch.zeros_like(mu)).max()),
        "dual": float((-mu).clamp_min(0).max()),
        "complementarity": float((mu * slack).abs().max()),
    }
