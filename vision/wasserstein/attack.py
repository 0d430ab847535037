"""Wasserstein PGD with the adaptive radius (spec-003 section 2.10).

Each iteration takes the l_inf steepest-ascent step ``x_adv + alpha * sign(grad)`` in pixel space, then projects
onto the Wasserstein ball around the clean image with projected Sinkhorn. Images are divided by their total mass
before the projection (eps is a transport cost in units of "fraction of the image's mass x pixels moved") and the
pixel range [0, 1] is part of the projection (a per-pixel ceiling of 1 / mass), so the result is inside the ball
and in range without a clip that would destroy mass. Examples stop once misclassified; the others have their
radius multiplied by ``eps_factor`` every ``eps_every`` iterations. Per example the attack records the radius at
which it first succeeded (``eps_found``; inf when it never did; 0 for inputs misclassified already), which gives
the success-vs-radius curve.

Defaults are the thesis' MNIST test attack: eps 0.3 x 1.1 every 10 iterations, at most 200 iterations (radius up to
0.3 * 1.1^19 = 1.83), 5 x 5 plans, lam = 1000, step 0.1, 50 Sinkhorn iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision.attacks.base import Attack, AttackResult

from .sinkhorn import project_wasserstein

__all__ = ["WassersteinPGD", "WassersteinResult", "success_curve"]


@dataclass
class WassersteinResult(AttackResult):
    """An :class:`AttackResult` plus the radius at which each example was first fooled, and the final radius."""

    eps_found: Tensor | None = None   # (B,) radius at first success; inf if never; 0 if misclassified clean
    eps_final: Tensor | None = None   # (B,) radius of the ball x_adv lies in
    cost: Tensor | None = None        # (B,) transport cost of the plan certifying x_adv (in mass-normalised units)


class WassersteinPGD(Attack):
    """PGD in the Wasserstein ball with local transport plans and (optionally) a growing radius.

    Args:
        eps: initial radius (mass-normalised transport cost).
        alpha: l_inf step in pixel units.
        steps: maximum iterations.
        eps_factor: multiply the radius of the examples not yet fooled by this every ``eps_every`` iterations
            (1.0: a fixed radius).
        eps_every: iterations between radius increases.
        kernel: side of the local transport window (odd).
        lam: entropy regularisation of the projection (larger: closer to the exact projection).
        p: cost exponent, C = (di^2 + dj^2)^(p/2).
        sinkhorn_iters: projected Sinkhorn iterations per step; ``tol``: its stopping tolerance.
        targeted: ``y`` is the target class.
        clamp: the reference code's behaviour, for comparison: project without the pixel ceiling, then clamp to
            [0, 1]. The clamp removes mass, so the result can leave the ball (``cost`` no longer certifies it).
    """

    norm = "wasserstein"

    def __init__(self, eps: float = 0.3, alpha: float = 0.1, steps: int = 200, eps_factor: float = 1.1,
                 eps_every: int = 10, kernel: int = 5, lam: float = 1000.0, p: float = 1.0,
                 sinkhorn_iters: int = 50, tol: float = 1e-4, targeted: bool = False, *, clamp: bool = False,
                 use_eval_mode: bool = True) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        if eps <= 0 or alpha <= 0 or steps < 1 or eps_factor < 1 or eps_every < 1:
            raise ValueError("need eps > 0, alpha > 0, steps >= 1, eps_factor >= 1 and eps_every >= 1")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"--kernel must be odd and >= 1, got {kernel}")
        self.eps, self.alpha, self.steps = float(eps), float(alpha), int(steps)
        self.eps_factor, self.eps_every = float(eps_factor), int(eps_every)
        self.kernel, self.lam, self.p = int(kernel), float(lam), float(p)
        self.sinkhorn_iters, self.tol = int(sinkhorn_iters), float(tol)
        self.clamp = bool(clamp)

    @property
    def max_eps(self) -> float:
        """The largest radius the schedule reaches."""
        return self.eps * self.eps_factor ** ((self.steps - 1) // self.eps_every)

    def _fooled(self, logits: Tensor, y: Tensor) -> Tensor:
        pred = logits.argmax(1)
        return pred == y if self.targeted else pred != y

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        if x.dim() != 4:
            raise ValueError(f"the Wasserstein attack needs images (B, C, H, W), got shape {tuple(x.shape)}")
        b = x.shape[0]
        mass = x.reshape(b, -1).sum(1)
        if bool((mass <= 0).any()):
            raise ValueError("an all-black image has no mass to move; the Wasserstein attack needs mass > 0")
        x_adv = x.clone()
        eps = torch.full((b,), self.eps, dtype=x.dtype, device=x.device)
        eps_found = torch.full((b,), float("inf"), dtype=x.dtype, device=x.device)
        cost = torch.zeros(b, dtype=x.dtype, device=x.device)
        with torch.no_grad():
            done = self._fooled(model(x), y)
        eps_found[done] = 0.0
        for it in range(self.steps):
            act = (~done).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xa = x_adv[act].detach().requires_grad_(True)
            loss = F.cross_entropy(model(xa), y[act], reduction="sum")
            (grad,) = torch.autograd.grad(-loss if self.targeted else loss, xa)
            with torch.no_grad():
                w = xa.detach() + self.alpha * grad.sign()
                m = mass[act].view(-1, 1, 1, 1)
                pr = project_wasserstein(x[act] / m, w / m, eps[act], kernel=self.kernel, lam=self.lam, p=self.p,
                                         maxiter=self.sinkhorn_iters, tol=self.tol,
                                         upper=None if self.clamp else 1.0 / mass[act])
                new = (pr.z * m).clamp(0.0, 1.0)      # with the ceiling, z <= 1 already: the clamp trims rounding
                x_adv[act] = new
                cost[act] = pr.cost
                fooled = self._fooled(model(new), y[act])
                hit = act[fooled]
                eps_found[hit] = eps[hit]
                done[hit] = True
                if self.eps_factor > 1 and (it + 1) % self.eps_every == 0:
                    eps = torch.where(done, eps, eps * self.eps_factor)
        with torch.no_grad():
            logits = model(x_adv)
            success = self._fooled(logits, y)
            obj = F.cross_entropy(logits, y, reduction="none")
        # the radius of the ball each x_adv lies in: the radius of its last projection
        return WassersteinResult(x_adv.detach(), success, -obj if self.targeted else obj, eps_found, eps, cost)


def success_curve(eps_found: Tensor, grid: list[float]) -> list[float]:
    """Fraction of examples fooled at radius <= r for every r of ``grid`` (0 counts clean mistakes)."""
    return [float((eps_found <= r).float().mean()) for r in grid]
