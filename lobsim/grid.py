"""The resampled book: a fixed time grid of (T, 2, L) prices and sizes plus per-step executions (CSR)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_loaders.lobster import EMPTY_ASK, EMPTY_BID, level_mask

__all__ = ["ASK", "BID", "EMPTY_ASK", "EMPTY_BID", "GridBook", "level_mask"]

BID, ASK = 0, 1


@dataclass
class GridBook:
    """One day's book on a regular time grid.

    ``prices``/``sizes`` are (T, 2, L) int64 (side 0 bid, 1 ask; level 0 best), the state after the last
    message at or before ``times[t]``. Executions of step t (message time in ``(times[t-1], times[t]]``)
    are ``exec_*[exec_ptr[t]:exec_ptr[t+1]]``: side 0 bid / 1 ask, price (LOBSTER units), volume, hidden.
    """

    ticker: str
    date: str
    dt: float
    times: np.ndarray
    prices: np.ndarray
    sizes: np.ndarray
    exec_ptr: np.ndarray
    exec_side: np.ndarray
    exec_price: np.ndarray
    exec_volume: np.ndarray
    exec_hidden: np.ndarray

    def __post_init__(self) -> None:
        T = self.times.shape[0]
        if self.prices.shape != self.sizes.shape or self.prices.ndim != 3 or self.prices.shape[:2] != (T, 2):
            raise ValueError(f"GridBook: prices {self.prices.shape} / sizes {self.sizes.shape} must be (T, 2, L)")
        if self.exec_ptr.shape != (T + 1,):
            raise ValueError(f"GridBook: exec_ptr must have T+1={T + 1} entries, got {self.exec_ptr.shape}")
        E = int(self.exec_ptr[-1])
        for name in ("exec_side", "exec_price", "exec_volume", "exec_hidden"):
            if getattr(self, name).shape != (E,):
                raise ValueError(f"GridBook: {name} must have {E} entries")

    @property
    def levels(self) -> int:
        return int(self.prices.shape[2])

    @property
    def n_steps(self) -> int:
        return int(self.times.shape[0])

    @property
    def mask(self) -> np.ndarray:
        """(T, 2, L) True where the level holds a real price."""
        return level_mask(self.prices)

    def executions_at(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(side, price, volume, hidden) of the executions in step ``t``."""
        a, b = int(self.exec_ptr[t]), int(self.exec_ptr[t + 1])
        return self.exec_side[a:b], self.exec_price[a:b], self.exec_volume[a:b], self.exec_hidden[a:b]
