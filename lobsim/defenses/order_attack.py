"""The training-time capital attack: a fast single- or few-step attack in order space with a random start.

Variables are the dollars ``v[i] >= 0`` placed at the real top-L entries i = (t, s, j) of a snippet (orders
``a = v / price``, real-valued, rested by the differentiable touch propagation), with capital ``sum_i v_i <= eps``.
That set is a simplex (a dollar-weighted l1 ball on the non-negative orthant), so, as for l1 attacks on images, a
step does not follow the sign of the gradient (the l-inf rule) but moves ``alpha * eps`` dollars onto the ``top``
entries with the largest positive gradient per dollar, then projects back onto the simplex (which removes the
same amount from every entry, so dollars flow from weak entries to strong ones).

Random start (as in fast adversarial training): ``eps * U(0, 1)`` dollars spread over a random ``density`` share
of the real entries. ``steps = 1`` with ``alpha = 1.25`` is the fast (FGSM-like) attack; more steps make the
few-step (PGD-like) attack used by the catastrophic-overfitting guard.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lobsim.attacks.capital import gradient_mode, logits_of


def project_budget(v: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of rows ``v`` (B, N) onto ``{v >= 0, sum v <= eps}`` (eps (B,))."""
    v = v.clamp_min(0.0)
    over = v.sum(1) > eps
    if not bool(over.any()):
        return v
    u, e = v[over], eps[over].to(v.dtype)
    s = u.sort(1, descending=True).values
    css = s.cumsum(1) - e[:, None]
    k = torch.arange(1, u.shape[1] + 1, device=u.device, dtype=u.dtype)
    rho = (s - css / k > 0).sum(1).clamp_min(1)
    theta = css.gather(1, (rho - 1)[:, None]) / rho[:, None].to(u.dtype)
    out = v.clone()
    out[over] = (u - theta).clamp_min(0.0)
    return out


@dataclass
class OrderAttack:
    """``attack(model, book, y, eps, gen) -> orders (B, W, 2, L)`` (see the module docstring).

    steps: gradient steps; alpha: dollars moved per step as a fraction of eps; top: entries receiving dollars per
    step; density: share of the real entries holding the random start; random_start: off = start from no orders.
    """

    steps: int = 1
    alpha: float = 1.25
    top: int = 16
    density: float = 0.01
    random_start: bool = True

    def __post_init__(self) -> None:
        if self.steps < 1 or self.top < 1 or not self.alpha > 0 or not 0 < self.density <= 1:
            raise ValueError(f"OrderAttack: need steps >= 1, top >= 1, alpha > 0, 0 < density <= 1, got {self}")

    def __call__(self, model: Any, book: Book, y: torch.Tensor, eps: torch.Tensor,
                 gen: torch.Generator | None = None) -> torch.Tensor:
        B, N = book.real.shape
        eps = eps.to(book.price.dtype)
        if self.random_start:
            r1 = torch.rand((B, N), generator=gen).to(book.price.device)
            r2 = torch.rand((B, N), generator=gen).to(book.price.device)
            w = r2 * ((r1 < self.density) & book.real)
            w = w / w.sum(1, keepdim=True).clamp_min(1e-30)
            total = eps * torch.rand(B, generator=gen).to(book.price.device, book.price.dtype)
            v = w * total[:, None]
        else:
            v = torch.zeros((B, N), dtype=book.price.dtype, device=book.price.device)
        k = min(self.top, N)
        for _ in range(self.steps):
            a = (v / book.price).reshape(book.shape).detach().requires_grad_(True)
            with torch.enable_grad(), gradient_mode(model):
                out = book.logits(model, a)
                loss = F.cross_entropy(out, y, reduction="sum")
                (g,) = torch.autograd.grad(loss, a)
            gv = g.reshape(B, N) / book.price * book.real
            vals, idx = gv.topk(k, dim=1)
            d = torch.zeros_like(gv).scatter_(1, idx, vals.clamp_min(0.0))
            d = d / d.sum(1, keepdim=True).clamp_min(1e-30)
            v = project_budget(v + self.alpha * eps[:, None] * d, eps)
        return (v / book.price).reshape(book.shape).detach()


class Book:
    """One batch of snippets ready for order-space attacks: book tensors, absolute prices, the touch operator."""

    def __init__(self, batch: Any, device: str | torch.device = "cpu") -> None:
        from lobsim.attacks.capital import book_tensors_centred
        from lobsim.propagation import TouchPropagator

        self.batch = batch
        self.P, self.S, self.M, self.centre = book_tensors_centred(batch, device)
        self.shape = tuple(self.P.shape)
        B = self.shape[0]
        absolute = (self.P.double() + self.centre[:, None, None, None]).float()
        self.real = self.M.reshape(B, -1)
        self.price = torch.where(self.real, absolute.reshape(B, -1), torch.ones_like(absolute.reshape(B, -1)))
        self.op = TouchPropagator(batch, device=device)

    def logits(self, model: Any, orders: torch.Tensor | None = None) -> torch.Tensor:
        """Model outputs on the book plus the propagated (real-valued) orders (``None``: the clean book)."""
        S = self.S if orders is None else self.S + self.op(orders)
        return logits_of(model, self.P, S, self.M, self.centre)

    def capital(self, orders: torch.Tensor) -> torch.Tensor:
        """Dollars of real-valued orders (B,)."""
        return (orders.reshape(self.real.shape) * self.price * self.real).sum(1)


def step_generator(seed: int, step: int, tag: int = 13) -> torch.Generator:
    """A torch generator that depends only on (seed, step): a resumed run draws the same random starts."""
    return torch.Generator().manual_seed(int(np.random.default_rng([seed, tag, step]).integers(2**62)))
