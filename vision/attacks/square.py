"""Square Attack (Andriushchenko et al. 2020): a gradient-free random search in the Linf or L2 ball.

It only queries the model's logits, so a model that hides its gradients (saturated softmax, non-differentiable
preprocessing, randomness) does not fool it; when it finds adversarial examples that gradient attacks missed, the
gradients are not to be trusted (see :mod:`vision.attacks.suite`).

Per example, minimising the margin ``z_y - max_{i != y} z_i`` (untargeted; success once it is negative):

- Linf start: vertical stripes, ``x + eps * s`` with one random sign per (channel, column).
- L2 start: a grid of small blocks, each filled with a centred bump of random sign, the whole rescaled to L2 norm eps.
- Each iteration draws a square window of side ``s = round(sqrt(p * H * W))`` at a random position per example,
  where the fraction ``p`` shrinks on a fixed schedule (p_init, /2 after 10 of 10,000 scaled iterations, /4 after
  50, /8 after 200, then 500, 1000, 2000, 4000, 6000, 8000).
- Linf: the window gets a new random sign per channel (value +-eps), the rest of the perturbation is kept.
- L2: the mass of the window and of a second window is pooled and re-spread as a bump of random sign in the first
  window (the second is zeroed), keeping the L2 norm at eps where the box allows it.
- The candidate (clipped to the ball and to [0, 1]) is kept when its margin is lower. Examples already broken are
  not queried again.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult
from .losses import margin
from .pgd import make_generator

__all__ = ["Square", "p_schedule"]

_P_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def p_schedule(p_init: float, it: int, n_queries: int) -> float:
    """The fraction of pixels changed at iteration ``it`` of ``n_queries`` (the schedule is set for 10,000)."""
    i = int(it / max(n_queries, 1) * 10000)
    halvings = sum(i > s for s in _P_STEPS)
    return p_init / 2 ** halvings


def _window_mask(b: int, h: int, w: int, s: int, gen: torch.Generator | None, device) -> Tensor:
    """(B, 1, H, W) bool masks of one s x s window at a random position per example."""
    vh = torch.randint(0, h - s + 1, (b,), device=device, generator=gen)
    vw = torch.randint(0, w - s + 1, (b,), device=device, generator=gen)
    rows = torch.arange(h, device=device).unsqueeze(0)
    cols = torch.arange(w, device=device).unsqueeze(0)
    mh = (rows >= vh.unsqueeze(1)) & (rows < (vh + s).unsqueeze(1))
    mw = (cols >= vw.unsqueeze(1)) & (cols < (vw + s).unsqueeze(1))
    return (mh.unsqueeze(2) & mw.unsqueeze(1)).unsqueeze(1)


def _bump(s: int, device, dtype) -> Tensor:
    """An s x s centred bump (concentric squares with weight 1 / (ring + 1)^2), L2 norm 1."""
    c = (s - 1) / 2
    r = torch.arange(s, device=device, dtype=dtype)
    ring = torch.maximum((r - c).abs().unsqueeze(1), (r - c).abs().unsqueeze(0)).floor()
    m = 1.0 / (ring + 1.0) ** 2
    return m / m.norm()


class Square(Attack):
    """Square Attack in the Linf or L2 ball (images (B, C, H, W)).

    Args:
        eps: radius of the ball.
        queries: model queries per example (the initial point counts as one).
        norm: ``linf`` or ``l2``.
        p_init: initial fraction of the pixels in the window (default 0.8, as in AutoAttack's standard suite).
        restarts: independent runs; the best per example is kept.
        targeted: ``y`` is the target class (success once it is predicted).
        seed: seed of the random search.
        use_eval_mode: attack the model in eval mode (restored afterwards).
    """

    def __init__(self, eps: float, queries: int = 5000, norm: str = "linf", p_init: float = 0.8,
                 restarts: int = 1, targeted: bool = False, *, seed: int | None = None,
                 use_eval_mode: bool = True) -> None:
        super().__init__(targeted=targeted, use_eval_mode=use_eval_mode)
        if norm not in ("linf", "l2"):
            raise ValueError(f"Square supports norm 'linf' or 'l2', got {norm!r}")
        if eps < 0 or queries < 1 or restarts < 1:
            raise ValueError(f"need eps >= 0, queries >= 1, restarts >= 1; got {eps}, {queries}, {restarts}")
        p = float(p_init)
        if not 0 < p <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p}")
        self.eps, self.queries, self.norm, self.p_init = float(eps), int(queries), norm, p
        self.restarts, self.seed = int(restarts), seed

    def _margin(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return -margin(model(x), y, self.targeted)  # minimise: < 0 means success

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        if x.dim() != 4:
            raise ValueError(f"Square needs images (B, C, H, W), got shape {tuple(x.shape)}")
        gen = make_generator(self.seed, x.device)
        b = x.shape[0]
        best_x = x.clone()
        best_m = self._margin(model, x, y)
        for _ in range(self.restarts):
            todo = (best_m >= 0).nonzero().squeeze(1)
            if todo.numel() == 0 or self.eps == 0:
                break
            xa, m = self._run(model, x[todo], y[todo], gen)
            upd = m < best_m[todo]
            best_x[todo[upd]] = xa[upd]
            best_m[todo[upd]] = m[upd]
        succ = best_m < 0
        return AttackResult(best_x.detach(), succ, -best_m[:b])

    def _run(self, model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator | None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        eps = self.eps
        if self.norm == "linf":
            signs = torch.randint(0, 2, (b, c, 1, w), device=x.device, generator=gen).to(x.dtype) * 2 - 1
            delta = (x + eps * signs).clamp(0, 1) - x
        else:
            delta = self._l2_start(x, gen)
        m = self._margin(model, x + delta, y)
        for it in range(1, self.queries):
            act = (m >= 0).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            xa, da = x[act], delta[act]
            p = p_schedule(self.p_init, it, self.queries)
            s = max(int(round(math.sqrt(p * h * w))), 1)
            s = min(s, h, w)
            cand = self._linf_candidate(xa, da, s, gen) if self.norm == "linf" else self._l2_candidate(xa, da, s, gen)
            m_new = self._margin(model, xa + cand, y[act])
            better = m_new < m[act]
            if bool(better.any()):
                sel = act[better]
                delta[sel] = cand[better]
                m[sel] = m_new[better]
        return (x + delta).clamp(0, 1), m

    def _linf_candidate(self, x: Tensor, delta: Tensor, s: int, gen: torch.Generator | None) -> Tensor:
        b, c, h, w = x.shape
        mask = _window_mask(b, h, w, s, gen, x.device)
        signs = torch.randint(0, 2, (b, c, 1, 1), device=x.device, generator=gen).to(x.dtype) * 2 - 1
        cand = torch.where(mask, (x + self.eps * signs).clamp(0, 1) - x, delta)
        for _ in range(9):  # redraw the signs where the window would not change (the same signs as now)
            same = ((cand - delta).abs().flatten(1).amax(1) < 1e-7).nonzero().squeeze(1)
            if same.numel() == 0:
                break
            signs = torch.randint(0, 2, (same.numel(), c, 1, 1), device=x.device, generator=gen).to(x.dtype) * 2 - 1
            xs = x[same]
            cand[same] = torch.where(mask[same], (xs + self.eps * signs).clamp(0, 1) - xs, delta[same])
        return cand

    def _l2_start(self, x: Tensor, gen: torch.Generator | None) -> Tensor:
        b, c, h, w = x.shape
        s = max(h // 5, 1)
        delta = torch.zeros_like(x)
        bump = _bump(s, x.device, x.dtype)
        for i in range(0, h - s + 1, s):
            for j in range(0, w - s + 1, s):
                sign = torch.randint(0, 2, (b, c, 1, 1), device=x.device, generator=gen).to(x.dtype) * 2 - 1
                delta[:, :, i:i + s, j:j + s] = bump * sign
        delta = delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * self.eps
        return (x + delta).clamp(0, 1) - x

    def _l2_candidate(self, x: Tensor, delta: Tensor, s: int, gen: torch.Generator | None) -> Tensor:
        b, c, h, w = x.shape
        m1 = _window_mask(b, h, w, s, gen, x.device)
        m2 = _window_mask(b, h, w, s, gen, x.device)
        both = m1 | m2
        # the L2 mass available to the two windows: what they hold now plus what the ball has left
        inside = (delta * both).pow(2).flatten(2).sum(2)  # (B, C)
        total = delta.pow(2).flatten(1).sum(1, keepdim=True)  # (B, 1)
        spare = (self.eps ** 2 - total).clamp_min(0.0) / c
        budget = (inside + spare).clamp_min(0.0).sqrt()  # per channel
        bump = _bump(s, x.device, x.dtype)
        # place the bump into window 1 (per example: scatter via the mask, window pixels in row-major order)
        patch = torch.zeros_like(delta)
        flat_bump = bump.flatten()
        sign = torch.randint(0, 2, (b, c, 1, 1), device=x.device, generator=gen).to(x.dtype) * 2 - 1
        m1f = m1.expand(b, c, h, w)
        patch[m1f] = (flat_bump.view(1, 1, -1) * (sign.view(b, c, 1) * budget.view(b, c, 1))).reshape(-1)
        cand = torch.where(both, patch, delta)
        cand = (x + cand).clamp(0, 1) - x
        norms = cand.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = (self.eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
        return cand * scale
