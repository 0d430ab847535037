"""APGD-CE: PGD with momentum and an automatic step-size schedule (Linf and L2).

The algorithm, per example:

- Checkpoints: p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06); checkpoint j is the
  iteration ceil(p_j * N) for a budget of N iterations.
- Start at x_0 (the clean input or a random point of the ball), step size eta = 2 * eps.
  x_1 = P(x_0 + eta * s(grad_0)), with s the steepest-ascent direction of the norm (sign, or normalised gradient).
- Then z = P(x_k + eta * s(grad_k)) and x_{k+1} = P(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})) with momentum
  a = 0.75. The highest-loss point so far (x_max, f_max) is kept.
- At each checkpoint the step size is halved, and the iterate restarts from x_max (without momentum), if
  (1) the loss increased in fewer than rho = 0.75 of the steps since the previous checkpoint, or
  (2) the step size was not halved at the previous checkpoint and f_max has not grown since then.

The returned point is the first misclassified iterate found (or the one hitting the target), else x_max.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, best_over_restarts, better, is_success, objective
from .pgd import make_generator
from .projections import project
from .steps import random_start, steepest_step

__all__ = ["APGD", "checkpoints"]


def checkpoints(n_iter: int) -> list[int]:
    """The iterations (1..n_iter) at which APGD checks whether to halve its step size."""
    p = [0.0, 0.22]
    while True:
        nxt = p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)
        if nxt > 1.0:
            break
        p.append(nxt)
    out = sorted({math.ceil(round(q * n_iter, 6)) for q in p[1:]})  # round: 0.22 + 0.19 is not 0.41
    return [w for w in out if 0 < w <= n_iter]


class APGD(Attack):
    """APGD with the cross-entropy loss in the Linf or L2 ball.

    Args:
        eps: radius of the ball.
        steps: iterations N (each one forward and one backward pass).
        norm: ``linf`` or ``l2``.
        restarts: independent runs (random starts); the best per example is kept.
        random_start: start the first run at a random point of the ball (later restarts always do).
        targeted: ``y`` is the target class; the attack minimises its cross-entropy.
        rho: fraction of loss-increasing steps required between checkpoints to keep the step size.
        momentum: weight ``a`` of the new step against the previous displacement.
        seed: seed for the random starts.
        use_eval_mode: attack the model in eval mode (restored afterwards).
    """

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        norm: str = "linf",
        restarts: int = 1,
        random_start: bool = True,
        targeted: bool = False,
        *,
        rho: float = 0.75,
        momentum: float = 0.75,
        seed: int | None = None,
        use_eval_mode: bool = True,
    ) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        if norm not in ("linf", "l2"):
            raise ValueError(f"APGD supports norm 'linf' or 'l2', got {norm!r}")
        if eps < 0 or steps < 1 or restarts < 1:
            raise ValueError(f"need eps >= 0, steps >= 1, restarts >= 1; got {eps}, {steps}, {restarts}")
        self.eps = float(eps)
        self.steps = int(steps)
        self.norm = norm
        self.restarts = int(restarts)
        self.random_start = bool(random_start)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.seed = seed

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        gen = make_generator(self.seed, x.device)

        def one(idx: Tensor, r: int) -> tuple[Tensor, Tensor, Tensor]:
            xs, ys = x[idx], y[idx]
            if self.random_start or r > 0:
                delta0 = random_start(xs, self.eps, self.norm, gen)
            else:
                delta0 = torch.zeros_like(xs)
            delta, obj, succ = self.run(model, xs, ys, delta0)
            return (xs + delta).clamp(0.0, 1.0), obj, succ

        return best_over_restarts(x, self.restarts, one)

    def _loss_grad(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        delta = delta.detach().requires_grad_(True)
        logits = model(x + delta)
        obj = objective(logits, y, self.targeted)
        (grad,) = torch.autograd.grad(obj.sum(), delta)
        return obj.detach(), grad.detach(), is_success(logits.detach(), y, self.targeted)

    def run(self, model: nn.Module, x: Tensor, y: Tensor, delta: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One APGD run from ``delta``; returns (delta, objective, success) of the returned point per example."""
        b = x.shape[0]
        shape = (-1, *([1] * (x.dim() - 1)))
        eps, norm, a = self.eps, self.norm, self.momentum
        ckpts = checkpoints(self.steps)

        d_cur = delta.detach()
        f_cur, g_cur, s_cur = self._loss_grad(model, x, y, d_cur)
        # result tracker: success first, then loss
        res_d, res_obj, res_succ = d_cur.clone(), f_cur.clone(), s_cur.clone()
        # algorithm state: highest-loss point and its gradient
        d_max, f_max, g_max = d_cur.clone(), f_cur.clone(), g_cur.clone()
        eta = torch.full((b,), 2.0 * eps, device=x.device, dtype=x.dtype)
        d_prev = d_cur.clone()
        n_incr = torch.zeros(b, device=x.device)
        last_ckpt, eta_at_ckpt, fmax_at_ckpt = 0, eta.clone(), f_max.clone()

        for k in range(self.steps):
            step = steepest_step(g_cur, x, d_cur, 1.0, norm) * eta.view(shape)
            z = project(d_cur + step, x, eps, norm)
            if k == 0:
                d_new = z
            else:
                d_new = project(d_cur + a * (z - d_cur) + (1.0 - a) * (d_cur - d_prev), x, eps, norm)
            f_new, g_new, s_new = self._loss_grad(model, x, y, d_new)

            upd = better(s_new, f_new, res_succ, res_obj)
            res_d[upd] = d_new[upd]
            res_obj = torch.where(upd, f_new, res_obj)
            res_succ = torch.where(upd, s_new, res_succ)

            n_incr += (f_new > f_cur).float()
            up = f_new > f_max
            d_max[up], g_max[up] = d_new[up], g_new[up]
            f_max = torch.where(up, f_new, f_max)

            d_prev, d_cur, f_cur, g_cur = d_cur, d_new, f_new, g_new
            it = k + 1
            if it in ckpts:
                too_few = n_incr < self.rho * (it - last_ckpt)
                stalled = (eta == eta_at_ckpt) & (f_max <= fmax_at_ckpt)
                halve = too_few | stalled
                eta_before = eta
                eta = torch.where(halve, eta / 2.0, eta)
                hv = halve.view(shape)
                d_cur = torch.where(hv, d_max, d_cur)
                d_prev = torch.where(hv, d_max, d_prev)  # no momentum right after a restart from x_max
                g_cur = torch.where(hv, g_max, g_cur)
                f_cur = torch.where(halve, f_max, f_cur)
                n_incr.zero_()
                last_ckpt, eta_at_ckpt, fmax_at_ckpt = it, eta_before, f_max.clone()
        return res_d, res_obj, res_succ
