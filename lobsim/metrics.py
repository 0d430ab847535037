"""Attack metrics per snippet: capital required, cost to the attacker (mark-to-market), relative size.

All money is float64 dollars (prices are LOBSTER units, dollars x 10,000).
"""

from __future__ import annotations

import numpy as np
import torch

from lobsim.grid import level_mask
from lobsim.propagation.exact import Propagation, check_orders
from lobsim.snippets import SnippetBatch

PRICE_SCALE = 10_000
MARKS = ("mid", "swa")


def capital(orders: np.ndarray | torch.Tensor, prices: np.ndarray) -> np.ndarray | torch.Tensor:
    """Dollar value of all placed orders, sum of shares x price over (t, s, j) -> (B,).

    Integer numpy orders give exact float64 dollars (orders at empty levels or negative orders are an error).
    Float torch orders give a differentiable tensor; orders at empty levels are ignored there.
    """
    prices = np.asarray(prices)
    if tuple(orders.shape) != prices.shape:
        raise ValueError(f"orders have shape {tuple(orders.shape)}, prices {prices.shape}")
    mask = level_mask(prices)
    if isinstance(orders, torch.Tensor):
        p = torch.as_tensor(np.where(mask, prices, 0) / PRICE_SCALE, device=orders.device, dtype=orders.dtype)
        return (orders * p).flatten(1).sum(1)
    orders = np.asarray(orders)
    if not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must be integer shares, got dtype {orders.dtype}")
    if (orders < 0).any():
        raise ValueError("orders must be non-negative")
    bad = np.argwhere((orders != 0) & ~mask)
    if len(bad):
        b, t, s, j = bad[0]
        raise ValueError(f"order at an empty (masked) level: snippet {b}, step {t}, side {s}, level {j}")
    units = (orders.astype(np.int64) * np.where(mask, prices, 0)).reshape(orders.shape[0], -1).sum(1)
    return units / PRICE_SCALE


def mark_prices(batch: SnippetBatch, mark: str = "mid") -> np.ndarray:
    """Per snippet mark price in dollars (B,), NaN where the book gives none.

    ``"mid"``: (best bid + best ask) / 2 at the last snapshot; if a side is empty there, the last snapshot with
    both sides present. ``"swa"``: the size-weighted average price of all real levels of the last snapshot with
    positive total size.
    """
    if mark not in MARKS:
        raise ValueError(f"mark must be one of {MARKS}, got {mark!r}")
    mask = level_mask(batch.prices)
    B, W = batch.prices.shape[:2]
    out = np.full(B, np.nan)
    for b in range(B):
        for t in range(W - 1, -1, -1):
            m = mask[b, t]
            if mark == "mid":
                if m[0, 0] and m[1, 0]:
                    out[b] = (batch.prices[b, t, 0, 0] + batch.prices[b, t, 1, 0]) / (2 * PRICE_SCALE)
                    break
            else:
                size = np.where(m, batch.sizes[b, t], 0)
                total = size.sum()
                if total > 0:
                    out[b] = float((np.where(m, batch.prices[b, t], 0) * size).sum()) / total / PRICE_SCALE
                    break
    return out


def cost(orders: np.ndarray, batch: SnippetBatch, propagation: Propagation, mark: str = "mid") -> np.ndarray:
    """The attacker's loss in dollars (B,): -(change in cash + shares marked to market), start to end of snippet.

    A filled bid order buys q shares at P (cash -P q, position +q); a filled ask order sells (cash +P q,
    position -q, short sales allowed). Unfilled orders are cancelled at the end at no cost; there are no fees.
    The end position is marked at :func:`mark_prices` (``"mid"`` of the last snapshot by default, or ``"swa"``).
    """
    check_orders(orders, batch)
    B = batch.batch_size
    f = propagation.fills
    if len(f) and (f.snippet.max() >= B or f.snippet.min() < 0):
        raise ValueError("fills refer to snippets outside the batch")
    sign = np.where(f.side == 0, 1, -1).astype(np.int64)
    cash_units = np.zeros(B, np.int64)
    position = np.zeros(B, np.int64)
    np.add.at(cash_units, f.snippet, -sign * f.price * f.shares)
    np.add.at(position, f.snippet, sign * f.shares)
    marks = mark_prices(batch, mark)
    need = (position != 0) & np.isnan(marks)
    if need.any():
        raise ValueError(f"snippet {int(np.flatnonzero(need)[0])} holds shares at the end but has no {mark} price")
    value = cash_units / PRICE_SCALE + np.where(position != 0, position * np.nan_to_num(marks), 0.0)
    return -value


def relative_size(
    delta: np.ndarray | torch.Tensor, sizes: np.ndarray, mask: np.ndarray | None = None
) -> np.ndarray | torch.Tensor:
    """Percent (B,): sum of propagated attacker shares / sum of clean visible shares over the snippet x 100.

    The denominator is the clean book only (attacker shares not added). ``mask`` (B, W, 2, L) selects the real
    levels (all when None). NaN where the clean book is empty.
    """
    sizes = np.asarray(sizes)
    if mask is None:
        mask = np.ones(sizes.shape, bool)
    mask = np.asarray(mask)
    if tuple(delta.shape) != sizes.shape or mask.shape != sizes.shape:
        raise ValueError(f"delta {tuple(delta.shape)}, sizes {sizes.shape} and mask {mask.shape} must agree")
    clean = np.where(mask, sizes, 0).reshape(sizes.shape[0], -1).sum(1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if isinstance(delta, torch.Tensor):
            m = torch.as_tensor(mask, device=delta.device)
            num = torch.where(m, delta, torch.zeros_like(delta)).flatten(1).sum(1)
            return 100 * num / torch.as_tensor(clean, device=delta.device, dtype=delta.dtype)
        num = np.where(mask, np.asarray(delta), 0).reshape(sizes.shape[0], -1).sum(1).astype(np.float64)
        return np.where(clean > 0, 100 * num / np.where(clean > 0, clean, 1), np.nan)
