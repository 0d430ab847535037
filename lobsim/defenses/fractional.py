"""Feature channels as linear-fractional functions of the attacker's resting shares, with sound bounds.

Every supported adapter channel (``lobsim.adapters``) of one snapshot is, as a function of the shares ``d`` the
attacker adds at the 2L (side, level) entries of that snapshot,

    v(d) = f0 + (q . d) / (d0 + kappa . d),        kappa >= 0, d0 > 0, d >= 0,

with f0 the clean value: SWA (q = price - SWA, kappa = 1 on real levels, d0 = total size), the imbalances
(kappa = their level weights), the microprice (kappa = 1 on the best levels), and the linear channels depth and
sizes (kappa = 0, d0 = 1). Channels that depend on prices only (mid, spread, prices) are constants (q = 0). The
order-flow imbalance (``ofi``) couples two snapshots and is not supported.

Two kinds of bound, both valid for every d >= 0 with dollar value ``sum_k price_k d_k <= eps`` at that snapshot
(the shares resting at one snapshot never exceed the capital: each order rests at one price at a time):

- :func:`ranges`: the exact range per snapshot. A linear-fractional function over a simplex takes its extremes at
  the vertices, here d = 0 and d = (eps / price_k) e_k, so min and max over the 2L + 1 vertices are exact.
- :func:`relaxation`: linear bounds ``f0 - c_l + l . d <= v(d) <= f0 + c_u + u . d``. With e_k = q_k - c kappa_k
  (c >= 0) and K = eps max_k kappa_k / price_k (the largest possible kappa . d), ``u_k = e_k / d0`` where
  e_k >= 0 and ``e_k / (d0 + K)`` where e_k < 0 is an upper bound, since (c + u . d)(d0 + kappa . d) - q . d =
  c d0 + sum_k d_k ((d0 + kappa . d) u_k - e_k) and every term is >= 0 (docs/defenses.md). Linear channels
  (kappa = 0) are exact. The constant c trades offset for slope; ``c = 0`` is
  the tangent-like bound, :func:`best_offset` picks the c that minimises the bound's worst case at one snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lobsim.adapters import get

BID, ASK = 0, 1
SUPPORTED = ("swa", "depth", "sizes", "imbalance", "depth_imbalance", "weighted_imbalance", "microprice", "mid",
             "spread", "prices")


@dataclass
class Fractional:
    """Channels ``(B, W, C)`` as ``f0 + (q . d) / (d0 + kappa . d)``; ``q``, ``kappa`` are ``(B, W, C, 2L)``."""

    f0: torch.Tensor
    q: torch.Tensor
    d0: torch.Tensor
    kappa: torch.Tensor

    def value(self, delta: torch.Tensor) -> torch.Tensor:
        """Channels of the book plus ``delta`` ``(B, W, 2, L)`` (the adapters' numbers, for the tests)."""
        d = delta.reshape(delta.shape[0], delta.shape[1], 1, -1).to(self.q.dtype)
        return self.f0 + (self.q * d).sum(-1) / (self.d0 + (self.kappa * d).sum(-1))

    def select(self, index: torch.Tensor) -> Fractional:
        return Fractional(self.f0[index], self.q[index], self.d0[index], self.kappa[index])


def check_supported(inputs: Sequence[str]) -> None:
    bad = [n for n in inputs if n not in SUPPORTED]
    if bad:
        raise ValueError(f"certify: input(s) {bad} are not linear-fractional in the sizes at one snapshot; "
                         f"certification supports {list(SUPPORTED)} (train with --inputs from these)")


def _ratio(num0: torch.Tensor, nu: torch.Tensor, den0: torch.Tensor, kappa: torch.Tensor, real: torch.Tensor,
           name: str) -> tuple[torch.Tensor, ...]:
    """(f0, q, d0, kappa) of num / den with num = num0 + nu . d, den = den0 + kappa . d (one channel)."""
    free = ((kappa > 0) & real).any(-1)  # the attacker can move the denominator at this snapshot
    if bool(((den0 <= 0) & free).any()):
        b, t = (int(i) for i in torch.nonzero((den0 <= 0) & free)[0])
        raise ValueError(f"certify: {name} at snippet {b}, step {t} has a zero denominator on a real level; its "
                         "value jumps when shares are added, so no bound holds")
    den = torch.where(den0 > 0, den0, torch.ones_like(den0))
    f0 = torch.where(den0 > 0, num0 / den, torch.zeros_like(num0))  # the adapters' safe division gives 0 there
    q = (nu - f0[..., None] * kappa) * real
    return f0, q, den, kappa * real


def fractional(inputs: Sequence[str], P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> Fractional:
    """The channels of ``inputs`` (in order) of books ``(B, W, 2, L)``: centred dollar prices ``P``, float sizes
    ``S`` and the real-level mask ``M`` (as ``lobsim.attacks.capital.book_tensors_centred`` gives them), float64."""
    check_supported(inputs)
    P, S = P.double(), S.double()
    B, W, _, L = P.shape
    Mf = M.double()
    P, S = P * Mf, S * Mf
    flat = (B, W, 2 * L)
    real = M.reshape(flat)
    parts: list[tuple[torch.Tensor, ...]] = []

    def entry(s: int, j: int) -> torch.Tensor:
        e = torch.zeros(2 * L, dtype=torch.float64)
        e[s * L + j] = 1.0
        return e

    def const(name: str) -> None:
        v = get(name).torch(P, S, M).double()  # (B, W, c)
        c = v.shape[-1]
        parts.append((v, torch.zeros(flat[:2] + (c, 2 * L), dtype=torch.float64),
                      torch.ones_like(v), torch.zeros(flat[:2] + (c, 2 * L), dtype=torch.float64)))

    for name in inputs:
        if name == "swa":
            num0, den0 = (P * S).sum((-2, -1)), S.sum((-2, -1))
            f0, q, d0, k = _ratio(num0, P.reshape(flat), den0, real.double(), real, name)
            parts.append((f0[..., None], q[:, :, None], d0[..., None], k[:, :, None]))
        elif name in ("depth", "sizes"):
            ones = torch.ones(flat, dtype=torch.float64) * real
            if name == "depth":
                f0 = S.sum(-1)  # (B, W, 2)
                q = torch.stack([ones * torch.cat([torch.ones(L), torch.zeros(L)]).double(),
                                 ones * torch.cat([torch.zeros(L), torch.ones(L)]).double()], dim=2)
            else:
                f0 = S.reshape(flat)
                q = ones[:, :, None, :] * torch.eye(2 * L, dtype=torch.float64)  # (B, W, 2L, 2L)
            parts.append((f0, q, torch.ones_like(f0), torch.zeros_like(q)))
        elif name in ("imbalance", "depth_imbalance", "weighted_imbalance"):
            if name == "imbalance":
                w = entry(BID, 0) + entry(ASK, 0)
            elif name == "depth_imbalance":
                w = torch.ones(2 * L, dtype=torch.float64)
            else:
                lw = 1.0 / (1.0 + torch.arange(L, dtype=torch.float64))
                w = torch.cat([lw, lw])
            sign = torch.cat([torch.ones(L), -torch.ones(L)]).double()
            Sf = S.reshape(flat)
            num0, den0 = (Sf * w * sign).sum(-1), (Sf * w).sum(-1)
            nu, kap = (w * sign).expand(flat), w.expand(flat)
            f0, q, d0, k = _ratio(num0, nu, den0, kap, real, name)
            parts.append((f0[..., None], q[:, :, None], d0[..., None], k[:, :, None]))
        elif name == "microprice":
            pb, pa, sb, sa = P[..., BID, 0], P[..., ASK, 0], S[..., BID, 0], S[..., ASK, 0]
            both = M[..., BID, 0] & M[..., ASK, 0]
            mid = get("mid").torch(P, S, M)[..., 0].double()
            nu = pa[..., None] * entry(BID, 0) + pb[..., None] * entry(ASK, 0)
            kap = (entry(BID, 0) + entry(ASK, 0)).expand(flat)
            num0 = torch.where(both, pb * sa + pa * sb, mid)
            den0 = torch.where(both, sa + sb, torch.ones_like(sa))
            f0, q, d0, k = _ratio(num0, nu, den0, kap, real & both[..., None], name)
            parts.append((f0[..., None], q[:, :, None], d0[..., None], k[:, :, None]))
        else:
            const(name)
    f0, q, d0, k = (torch.cat([p[i] for p in parts], dim=2) for i in range(4))
    return Fractional(f0, q * real[:, :, None].double(), d0, k * real[:, :, None].double())


def max_kappa_shares(fr: Fractional, price: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """K = eps * max_k kappa_k / price_k ``(B, W, C)``: the largest ``kappa . d`` a budget of ``eps`` (B,) dollars
    can reach at one snapshot (``price`` absolute dollars ``(B, W, 2L)``, +inf at masked levels)."""
    return eps[:, None, None] * (fr.kappa / price[:, :, None]).amax(-1)


def ranges(fr: Fractional, price: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (lo, hi) ``(B, W, C)`` of every channel at every snapshot over ``sum_k price_k d_k <= eps``."""
    shares = eps[:, None, None, None] / price[:, :, None]  # vertex sizes (B, W, 1, 2L); 0 at masked levels
    vert = fr.f0[..., None] + fr.q * shares / (fr.d0[..., None] + fr.kappa * shares)
    return torch.minimum(vert.amin(-1), fr.f0), torch.maximum(vert.amax(-1), fr.f0)


def _slopes(e: torch.Tensor, d0: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    return torch.where(e >= 0, e / d0[..., None], e / (d0 + K)[..., None])


def upper(fr: Fractional, K: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Slopes u ``(B, W, C, 2L)`` of the upper bound ``v <= f0 + c + u . d`` (offset ``c >= 0``, (B, W, C))."""
    return _slopes(fr.q - c[..., None] * fr.kappa, fr.d0, K)


def lower(fr: Fractional, K: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Slopes l of the lower bound ``v >= f0 - c + l . d``."""
    return -_slopes(-fr.q - c[..., None] * fr.kappa, fr.d0, K)


def best_offset(fr: Fractional, price: torch.Tensor, eps: torch.Tensor, K: torch.Tensor, side: str,
                iters: int = 24) -> torch.Tensor:
    """The offset c >= 0 that minimises the upper (``side="upper"``) or maximises the lower bound's worst value
    at each snapshot over the budget simplex (golden-section search; the worst value is convex in c).

    The worst value is ``c + max(0, max_k eps slope_k(c) / price_k)``; its slope in c is at least
    ``1 - max_k kappa_k eps / (price_k d0)``, so c = 0 is optimal wherever the budget buys less than the snapshot's
    (weighted) depth, and only the other snapshots are searched."""
    sgn = 1.0 if side == "upper" else -1.0
    shares = (eps[:, None, None, None] / price[:, :, None]).expand_as(fr.q)
    need = (fr.kappa * shares / fr.d0[..., None]).amax(-1) > 1.0
    out = torch.zeros_like(fr.f0)
    if not bool(need.any()):
        return out
    q, kap, d0, Kn, x = (sgn * fr.q)[need], fr.kappa[need], fr.d0[need], K[need], shares[need]

    def worst(c: torch.Tensor) -> torch.Tensor:
        return c + (_slopes(q - c[:, None] * kap, d0, Kn) * x).amax(-1).clamp_min(0.0)

    ratio = torch.where(kap > 0, q / torch.where(kap > 0, kap, torch.ones_like(kap)), torch.zeros_like(q))
    lo, hi = torch.zeros_like(d0), ratio.amax(-1).clamp_min(0.0)
    g = (5 ** 0.5 - 1) / 2
    for _ in range(iters):
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
        left = worst(a) <= worst(b)
        hi, lo = torch.where(left, b, hi), torch.where(left, lo, a)
    c = (lo + hi) / 2
    out[need] = torch.where(worst(c) <= worst(torch.zeros_like(c)), c, torch.zeros_like(c))
    return out
