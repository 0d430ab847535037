"""A batch of book snippets (windows of W grid steps), with their executions, cut from GridBooks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lobsim.grid import GridBook, level_mask


@dataclass
class SnippetBatch:
    """B snippets of W steps: prices/sizes (B, W, 2, L) int64 and per-step executions in CSR form.

    Executions of snippet b at window step w are ``exec_*[exec_ptr[b, w]:exec_ptr[b, w + 1]]``
    (they happened in ``(times[w-1], times[w]]`` of the day's grid). ``labels`` is -1 when unknown.
    """

    day: np.ndarray
    start: np.ndarray
    prices: np.ndarray
    sizes: np.ndarray
    exec_ptr: np.ndarray
    exec_side: np.ndarray
    exec_price: np.ndarray
    exec_volume: np.ndarray
    exec_hidden: np.ndarray
    labels: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.prices.shape[0])

    @property
    def window(self) -> int:
        return int(self.prices.shape[1])

    @property
    def levels(self) -> int:
        return int(self.prices.shape[3])

    @property
    def mask(self) -> np.ndarray:
        return level_mask(self.prices)

    def select(self, index: np.ndarray | Sequence[int]) -> SnippetBatch:
        """A new batch holding the snippets ``index`` (executions re-packed)."""
        index = np.asarray(index, dtype=np.int64)
        W = self.window
        ptrs, sides, prices, vols, hidden = [], [], [], [], []
        offset = 0
        for b in index:
            a, e = int(self.exec_ptr[b, 0]), int(self.exec_ptr[b, W])
            ptrs.append(self.exec_ptr[b] - a + offset)
            sides.append(self.exec_side[a:e])
            prices.append(self.exec_price[a:e])
            vols.append(self.exec_volume[a:e])
            hidden.append(self.exec_hidden[a:e])
            offset += e - a
        return SnippetBatch(
            day=self.day[index],
            start=self.start[index],
            prices=self.prices[index],
            sizes=self.sizes[index],
            exec_ptr=np.stack(ptrs).astype(np.int64) if ptrs else np.zeros((0, W + 1), np.int64),
            exec_side=_cat(sides, np.int8),
            exec_price=_cat(prices, np.int64),
            exec_volume=_cat(vols, np.int64),
            exec_hidden=_cat(hidden, np.bool_),
            labels=self.labels[index],
        )


def _cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)


def cut_snippets(
    books: Sequence[GridBook],
    day: np.ndarray,
    start: np.ndarray,
    window: int,
    labels: np.ndarray | None = None,
) -> SnippetBatch:
    """Cut snippets ``books[day[b]][start[b] : start[b] + window]`` into one SnippetBatch."""
    day = np.asarray(day, dtype=np.int64)
    start = np.asarray(start, dtype=np.int64)
    if day.shape != start.shape or day.ndim != 1:
        raise ValueError("cut_snippets: day and start must be 1-D arrays of equal length")
    B = day.shape[0]
    if B == 0:
        raise ValueError("cut_snippets: empty batch")
    L = books[0].levels
    prices = np.empty((B, window, 2, L), np.int64)
    sizes = np.empty((B, window, 2, L), np.int64)
    ptrs, sides, eprices, vols, hidden = [], [], [], [], []
    offset = 0
    for b in range(B):
        bk = books[int(day[b])]
        s = int(start[b])
        if bk.levels != L:
            raise ValueError(f"cut_snippets: day {int(day[b])} has {bk.levels} levels, expected {L}")
        if s < 0 or s + window > bk.n_steps:
            raise ValueError(f"cut_snippets: snippet [{s}, {s + window}) outside day {int(day[b])} (T={bk.n_steps})")
        prices[b] = bk.prices[s : s + window]
        sizes[b] = bk.sizes[s : s + window]
        lo, hi = int(bk.exec_ptr[s]), int(bk.exec_ptr[s + window])
        ptrs.append(bk.exec_ptr[s : s + window + 1] - lo + offset)
        sides.append(bk.exec_side[lo:hi])
        eprices.append(bk.exec_price[lo:hi])
        vols.append(bk.exec_volume[lo:hi])
        hidden.append(bk.exec_hidden[lo:hi])
        offset += hi - lo
    return SnippetBatch(
        day=day,
        start=start,
        prices=prices,
        sizes=sizes,
        exec_ptr=np.stack(ptrs).astype(np.int64),
        exec_side=_cat(sides, np.int8),
        exec_price=_cat(eprices, np.int64),
        exec_volume=_cat(vols, np.int64),
        exec_hidden=_cat(hidden, np.bool_),
        labels=np.full(B, -1, np.int64) if labels is None else np.asarray(labels, np.int64),
    )
