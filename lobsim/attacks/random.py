"""Random-orders baseline (no optimisation): orders drawn at random until a capital budget is used.

Distribution, per snippet and independently of the others: orders are drawn one after another; each picks a
position (t, s, j) uniformly among the snippet's real (unmasked) levels and a size uniform on
{1, ..., max_shares} x ``lot`` shares. Drawing stops at the first order whose price x size would push the
snippet's capital (:func:`lobsim.metrics.capital`) over ``budget``; that order is discarded, so the capital never
exceeds the budget. Several orders may land on the same entry (their sizes add).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lobsim.grid import level_mask
from lobsim.snippets import SnippetBatch

PRICE_SCALE = 10_000


@dataclass
class RandomOrders:
    """Random orders with capital at most ``budget`` dollars per snippet (the thesis' baseline used > $2M)."""

    budget: float = 2_000_000.0
    max_shares: int = 100
    lot: int = 1
    max_orders: int = 10_000_000

    def __post_init__(self) -> None:
        if self.budget < 0 or self.max_shares < 1 or self.lot < 1 or self.max_orders < 0:
            raise ValueError("RandomOrders: budget >= 0, max_shares >= 1, lot >= 1 and max_orders >= 0 required")

    def _budget_units(self) -> int:
        units = math.floor(self.budget * PRICE_SCALE)
        while units > 0 and units / PRICE_SCALE > self.budget:
            units -= 1
        return units

    def __call__(self, batch: SnippetBatch, rng: np.random.Generator) -> np.ndarray:
        """Orders (B, W, 2, L) int64 for ``batch``, drawn from ``rng`` (same seed => same orders)."""
        mask = level_mask(batch.prices)
        B = batch.batch_size
        orders = np.zeros(batch.prices.shape, np.int64)
        limit = self._budget_units()
        for b in range(B):
            flat_prices = batch.prices[b].reshape(-1)
            real = np.flatnonzero(mask[b].reshape(-1))
            if real.size == 0:
                continue
            mean_cost = float(np.abs(flat_prices[real]).mean()) * (self.max_shares + 1) / 2 * self.lot
            out = orders[b].reshape(-1)
            spent = 0
            drawn = 0
            while drawn < self.max_orders:
                n = min(int((limit - spent) / max(mean_cost, 1.0) * 1.2) + 16, self.max_orders - drawn)
                pos = real[rng.integers(0, real.size, n)]
                size = rng.integers(1, self.max_shares + 1, n) * self.lot
                spend = spent + np.cumsum(size * flat_prices[pos])
                stop = int(np.searchsorted(spend, limit, side="right"))  # orders [0, stop) fit
                np.add.at(out, pos[:stop], size[:stop])
                drawn += stop
                if stop < n:
                    break
                spent = int(spend[-1])
            orders[b] = out.reshape(orders[b].shape)
        return orders
