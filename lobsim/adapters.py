"""Feature adapters: differentiable functions of the book that valuation models read as input channels.

Every adapter has two twins that compute the same numbers:

- ``torch(P, S, M) -> (B, W, C)``: ``P`` prices in dollars (float, any common shift per snippet, e.g. the
  attack's per-snippet centring), ``S`` float sizes (a perturbation may be added), ``M`` bool mask of real
  levels, all ``(B, W, 2, L)``. Differentiable in ``S`` (and ``P``); masked levels get zero gradient.
- ``numpy(prices, sizes) -> (T, C)``: a day's grid arrays, int64 prices in LOBSTER units (dollars x 10,000)
  and int64 sizes ``(T, 2, L)``; float64 result in dollars / shares. Also accepts any ``(..., 2, L)``.

``price_like`` channels move one-for-one with a common shift of all prices (SWA, mid, microprice): models see
them relative to the window's last value (``x = (v - v[-1]) / scale``), which keeps every model input
shift-invariant. The other channels (imbalances, depth, spread) do not depend on the price level and are
standardised with the training mean and standard deviation.

The threat model only adds whole shares at existing prices: channels that depend on prices alone (mid, spread)
get zero gradient from the attacker's orders. That is correct, not a bug.

Adding an adapter is one :func:`register` call (one entry in ``REGISTRY``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lobsim.grid import level_mask

PRICE_SCALE = 10_000.0  # LOBSTER price units per dollar
BID, ASK = 0, 1


@dataclass(frozen=True)
class Adapter:
    """One named input: torch and numpy twins, whether it is price-like, and its channel count for L levels."""

    name: str
    price_like: bool
    channels: Callable[[int], int]
    torch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    numpy: Callable[[np.ndarray, np.ndarray], np.ndarray]
    doc: str
    channel_names: Callable[[int], list[str]] | None = None

    def names(self, levels: int) -> list[str]:
        """Channel names for ``levels`` levels (``name`` itself for one channel)."""
        if self.channel_names is not None:
            return self.channel_names(levels)
        c = self.channels(levels)
        return [self.name] if c == 1 else [f"{self.name}[{i}]" for i in range(c)]


REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter) -> Adapter:
    """Add an adapter to the registry (its name must be new)."""
    if adapter.name in REGISTRY:
        raise ValueError(f"adapter {adapter.name!r} is already registered")
    REGISTRY[adapter.name] = adapter
    return adapter


def get(name: str) -> Adapter:
    if name not in REGISTRY:
        raise ValueError(f"unknown input {name!r}; --inputs takes a comma-separated list of {sorted(REGISTRY)}")
    return REGISTRY[name]


def parse_inputs(inputs: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"swa,imbalance"`` or a sequence -> a validated tuple of input names (default ``("swa",)``)."""
    if inputs is None:
        return ("swa",)
    items = [s.strip() for s in inputs.split(",")] if isinstance(inputs, str) else [str(s).strip() for s in inputs]
    items = [s for s in items if s]
    if not items:
        raise ValueError("--inputs: no input named; give e.g. --inputs swa or --inputs swa,imbalance,mid")
    for s in items:
        get(s)
    dup = sorted({s for s in items if items.count(s) > 1})
    if dup:
        raise ValueError(f"--inputs: {dup} named more than once")
    return tuple(items)


def n_channels(inputs: Sequence[str], levels: int) -> int:
    """Total channels of ``inputs`` on a book of ``levels`` levels."""
    return sum(get(n).channels(levels) for n in inputs)


def channel_names(inputs: Sequence[str], levels: int) -> list[str]:
    return [c for n in inputs for c in get(n).names(levels)]


def price_like_channels(inputs: Sequence[str], levels: int) -> list[bool]:
    """Per channel: True for price-like (normalised relative to the window's last value)."""
    return [get(n).price_like for n in inputs for _ in range(get(n).channels(levels))]


def features_numpy(inputs: Sequence[str], prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """float64 ``(..., C)`` channels of int64 books ``(..., 2, L)`` (LOBSTER units), in the order of ``inputs``."""
    prices, sizes = np.asarray(prices), np.asarray(sizes)
    if prices.shape != sizes.shape or prices.ndim < 2 or prices.shape[-2] != 2:
        raise ValueError(f"adapters: prices {prices.shape} and sizes {sizes.shape} must both be (..., 2, L)")
    return np.concatenate([get(n).numpy(prices, sizes) for n in inputs], axis=-1)


def features_torch(inputs: Sequence[str], P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``(B, W, C)`` channels of books ``(B, W, 2, L)`` (differentiable), in the order of ``inputs``."""
    parts = [get(n).torch(P, S, M) for n in inputs]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


# -- helpers -----------------------------------------------------------------------------------------------------


def _np_masked(prices: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mask, dollars with 0 where masked, float sizes with 0 where masked)."""
    m = level_mask(prices)
    return m, np.where(m, prices, 0).astype(np.float64) / PRICE_SCALE, np.where(m, sizes, 0).astype(np.float64)


def _t_masked(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    zp = torch.zeros((), dtype=P.dtype, device=P.device)
    zs = torch.zeros((), dtype=S.dtype, device=S.device)
    return M, torch.where(M, P, zp), torch.where(M, S, zs)


def _first_bad(bad: np.ndarray) -> int | tuple[int, ...]:
    idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad.ravel())), bad.shape))
    return idx[0] if len(idx) == 1 else idx


def _safe_div_t(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den where den != 0, else 0 (no NaN in the forward pass or the gradient)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _safe_div_np(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    ok = den != 0
    return np.where(ok, num / np.where(ok, den, 1.0), 0.0)


# -- SWA (the thesis input) ----------------------------------------------------------------------------------------


def _swa_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    from lobsim.features import swa

    return swa(prices, sizes)[..., None]


def _swa_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    from lobsim.features import swa_torch

    return swa_torch(P, S, M).unsqueeze(-1)


# -- mid and microprice --------------------------------------------------------------------------------------------


def _mid_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    m, p, _ = _np_masked(prices, sizes)
    mb, ma = m[..., BID, 0], m[..., ASK, 0]
    n = mb.astype(np.float64) + ma
    if np.any(n == 0):
        raise ValueError(f"mid: snapshot {_first_bad(n == 0)} has no best bid and no best ask")
    return ((p[..., BID, 0] + p[..., ASK, 0]) / n)[..., None]


def _mid_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    M, p, _ = _t_masked(P, S, M)
    n = M[..., BID, 0].to(P.dtype) + M[..., ASK, 0].to(P.dtype)
    return _safe_div_t(p[..., BID, 0] + p[..., ASK, 0], n).unsqueeze(-1)


def _micro_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    m, p, s = _np_masked(prices, sizes)
    mid = _mid_np(prices, sizes)[..., 0]
    den = s[..., BID, 0] + s[..., ASK, 0]
    both = m[..., BID, 0] & m[..., ASK, 0] & (den > 0)
    micro = _safe_div_np(p[..., BID, 0] * s[..., ASK, 0] + p[..., ASK, 0] * s[..., BID, 0], den)
    return np.where(both, micro, mid)[..., None]


def _micro_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    M, p, s = _t_masked(P, S, M)
    mid = _mid_t(P, S, M)[..., 0]
    den = s[..., BID, 0] + s[..., ASK, 0]
    both = M[..., BID, 0] & M[..., ASK, 0] & (den > 0)
    micro = _safe_div_t(p[..., BID, 0] * s[..., ASK, 0] + p[..., ASK, 0] * s[..., BID, 0], den)
    return torch.where(both, micro, mid).unsqueeze(-1)


# -- imbalances ----------------------------------------------------------------------------------------------------


def _imb_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    _, _, s = _np_masked(prices, sizes)
    b, a = s[..., BID, 0], s[..., ASK, 0]
    return _safe_div_np(b - a, b + a)[..., None]


def _imb_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    _, _, s = _t_masked(P, S, M)
    b, a = s[..., BID, 0], s[..., ASK, 0]
    return _safe_div_t(b - a, b + a).unsqueeze(-1)


def _depth_imb_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    _, _, s = _np_masked(prices, sizes)
    d = s.sum(axis=-1)
    return _safe_div_np(d[..., BID] - d[..., ASK], d[..., BID] + d[..., ASK])[..., None]


def _depth_imb_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    _, _, s = _t_masked(P, S, M)
    d = s.sum(dim=-1)
    return _safe_div_t(d[..., BID] - d[..., ASK], d[..., BID] + d[..., ASK]).unsqueeze(-1)


# -- depth and spread ----------------------------------------------------------------------------------------------


def _depth_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    _, _, s = _np_masked(prices, sizes)
    return s.sum(axis=-1)


def _depth_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    _, _, s = _t_masked(P, S, M)
    return s.sum(dim=-1)


def _spread_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    m, p, _ = _np_masked(prices, sizes)
    both = m[..., BID, 0] & m[..., ASK, 0]
    return np.where(both, p[..., ASK, 0] - p[..., BID, 0], 0.0)[..., None]


def _spread_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    M, p, _ = _t_masked(P, S, M)
    both = M[..., BID, 0] & M[..., ASK, 0]
    return torch.where(both, p[..., ASK, 0] - p[..., BID, 0], torch.zeros_like(p[..., ASK, 0])).unsqueeze(-1)


def _one(levels: int) -> int:
    return 1


register(Adapter("swa", True, _one, _swa_t, _swa_np,
                 "size-weighted average price over both sides and all real levels (the thesis input), $"))
register(Adapter("mid", True, _one, _mid_t, _mid_np,
                 "mid price (best bid + best ask) / 2, $; the one real best quote when a side is empty"))
register(Adapter("microprice", True, _one, _micro_t, _micro_np,
                 "(bid x ask size + ask x bid size) / (bid size + ask size) at the best level, $; mid if a side is "
                 "empty"))
register(Adapter("imbalance", False, _one, _imb_t, _imb_np,
                 "order-book imbalance at the best level: (bid size - ask size) / (bid size + ask size)"))
register(Adapter("depth_imbalance", False, _one, _depth_imb_t, _depth_imb_np,
                 "imbalance of the total depth over the top-L real levels: (D_bid - D_ask) / (D_bid + D_ask)"))
register(Adapter("depth", False, lambda levels: 2, _depth_t, _depth_np,
                 "total shares on the top-L real levels, one channel per side (bid, ask)",
                 channel_names=lambda levels: ["depth_bid", "depth_ask"]))
register(Adapter("spread", False, _one, _spread_t, _spread_np,
                 "best ask - best bid, $ (0 when a side is empty)"))


# -- raw top-L sizes and prices, depth-weighted imbalance, order-flow imbalance (issue 12: users' own models) -------


def _levels_names(kind: str) -> Callable[[int], list[str]]:
    return lambda levels: [f"{side}_{kind}{j + 1}" for side in ("bid", "ask") for j in range(levels)]


def _sizes_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    _, _, s = _np_masked(prices, sizes)
    return s.reshape(s.shape[:-2] + (-1,))


def _sizes_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    _, _, s = _t_masked(P, S, M)
    return s.reshape(s.shape[:-2] + (-1,))


def _fill_prices(p, m, where):
    """Masked levels take the nearest real price on their side (shallower first, then deeper); a side without any
    real level takes the other side's (filled) best price. Works for numpy and torch (``where``)."""
    L = p.shape[-1]
    cols, have = [p[..., j] for j in range(L)], [m[..., j] for j in range(L)]
    for j in range(1, L):  # forward fill from the best level down
        cols[j] = where(have[j], cols[j], cols[j - 1])
        have[j] = have[j] | have[j - 1]
    for j in range(L - 2, -1, -1):  # a masked best level takes the nearest deeper real price
        cols[j] = where(have[j], cols[j], cols[j + 1])
        have[j] = have[j] | have[j + 1]
    side_ok = have[0]  # (..., 2): the side has a real level
    best = cols[0]
    other = best[..., ::-1] if isinstance(best, np.ndarray) else best.flip(-1)
    fill = [where(side_ok, c, other) for c in cols]
    return fill, side_ok


def _prices_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    m, p, _ = _np_masked(prices, sizes)
    cols, ok = _fill_prices(p, m, np.where)
    if np.any(~ok.any(axis=-1)):
        raise ValueError(f"prices: snapshot {_first_bad(~ok.any(axis=-1))} has no real price level")
    out = np.stack(cols, axis=-1)  # (..., 2, L)
    return out.reshape(out.shape[:-2] + (-1,))


def _prices_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    M, p, _ = _t_masked(P, S, M)
    cols, _ = _fill_prices(p, M, torch.where)
    out = torch.stack(cols, dim=-1)
    return out.reshape(out.shape[:-2] + (-1,))


def _level_weights(L: int) -> np.ndarray:
    return 1.0 / (1.0 + np.arange(L, dtype=np.float64))


def _wimb_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    _, _, s = _np_masked(prices, sizes)
    d = (s * _level_weights(s.shape[-1])).sum(axis=-1)
    return _safe_div_np(d[..., BID] - d[..., ASK], d[..., BID] + d[..., ASK])[..., None]


def _wimb_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    _, _, s = _t_masked(P, S, M)
    w = torch.as_tensor(_level_weights(s.shape[-1]), dtype=s.dtype, device=s.device)
    d = (s * w).sum(dim=-1)
    return _safe_div_t(d[..., BID] - d[..., ASK], d[..., BID] + d[..., ASK]).unsqueeze(-1)


def _ofi_parts(pb, pa, qb, qa, ge, le, zero_first):
    """Cont-Kukanov-Stoikov order-flow imbalance between consecutive snapshots along axis -1 (time last)."""
    e = (ge(pb[..., 1:], pb[..., :-1]) * qb[..., 1:] - le(pb[..., 1:], pb[..., :-1]) * qb[..., :-1]
         - le(pa[..., 1:], pa[..., :-1]) * qa[..., 1:] + ge(pa[..., 1:], pa[..., :-1]) * qa[..., :-1])
    return zero_first(e)


def _ofi_np(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    if prices.ndim < 3:
        raise ValueError("ofi: needs a time axis, books (..., T, 2, L)")
    m, _, s = _np_masked(prices, sizes)
    p = prices.astype(np.float64)  # empty levels keep LOBSTER's dummies: -9999999999 bid, +9999999999 ask
    pb, pa = p[..., BID, 0], p[..., ASK, 0]
    qb, qa = s[..., BID, 0], s[..., ASK, 0]
    pb = np.where(m[..., BID, 0], pb, -np.inf)
    pa = np.where(m[..., ASK, 0], pa, np.inf)
    ge = lambda a, b: (a >= b).astype(np.float64)  # noqa: E731
    le = lambda a, b: (a <= b).astype(np.float64)  # noqa: E731
    first = lambda e: np.concatenate([np.zeros(e.shape[:-1] + (1,)), e], axis=-1)  # noqa: E731
    return _ofi_parts(pb, pa, qb, qa, ge, le, first)[..., None]


def _ofi_t(P: torch.Tensor, S: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    M, _, s = _t_masked(P, S, M)
    inf = torch.tensor(float("inf"), dtype=P.dtype, device=P.device)
    pb = torch.where(M[..., BID, 0], P[..., BID, 0], -inf).detach()  # prices enter through indicators only
    pa = torch.where(M[..., ASK, 0], P[..., ASK, 0], inf).detach()
    ge = lambda a, b: (a >= b).to(s.dtype)  # noqa: E731
    le = lambda a, b: (a <= b).to(s.dtype)  # noqa: E731
    first = lambda e: torch.cat([torch.zeros_like(e[..., :1]), e], dim=-1)  # noqa: E731
    return _ofi_parts(pb, pa, s[..., BID, 0], s[..., ASK, 0], ge, le, first).unsqueeze(-1)


register(Adapter("sizes", False, lambda levels: 2 * levels, _sizes_t, _sizes_np,
                 "raw shares on each of the top-L levels: bid levels 1..L, then ask levels 1..L (0 where empty)",
                 channel_names=_levels_names("size")))
register(Adapter("prices", True, lambda levels: 2 * levels, _prices_t, _prices_np,
                 "raw prices of the top-L levels, $: bid levels 1..L, then ask levels 1..L; an empty level takes the "
                 "nearest real price of its side (the other side's best when a side is empty)",
                 channel_names=_levels_names("price")))
register(Adapter("weighted_imbalance", False, _one, _wimb_t, _wimb_np,
                 "depth-weighted imbalance, level j (1 = best) weighted 1/j: sum w (bid - ask) / sum w (bid + ask)"))
register(Adapter("ofi", False, _one, _ofi_t, _ofi_np,
                 "order-flow imbalance at the best level between consecutive grid steps (Cont, Kukanov and Stoikov "
                 "2014), shares; 0 at a window's first step. Prices enter only through which quote moved: no price "
                 "gradient"))
