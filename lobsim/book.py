"""The Numba book engine: rebuild the top-L book from LOBSTER messages and check it row by row against the
orderbook file; resample a day onto a fixed time grid with the executions of every grid step (CSR).

Rebuild semantics (price granularity): message k is applied to the book after row k-1 on the side given by
its direction (+1 buy -> bid, -1 sell -> ask). Type 1 adds its size at its price (a new level is inserted in
price order), types 2, 3 and 4 subtract it, 5 (hidden execution) and 7 (halt) change nothing. Levels are
kept while their size is positive and the top L are kept. When a level empties on a side that was full
(L real levels), a deeper level LOBSTER never showed before moves into view: such "revealed" levels are taken
from the orderbook row and counted; on a side that had fewer than L real levels (so was fully known) nothing
may appear. Everything else must equal the file exactly, else ``BookMismatchError`` names the row.
Because each checked row equals the file, the state after row k-1 is the file's row k-1, so the kernel
checks every transition in one pass over the arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from data_loaders.lobster import EMPTY_ASK, EMPTY_BID, LobsterDay, format_clock
from lobsim.grid import GridBook

_SIDE_NAME = ("bid", "ask")
_KIND = {
    1: "the level differs from the rebuilt book",
    2: "a level appeared on a side that was fully known (fewer than L levels before)",
    3: "the message cancels or executes at a price that is not in the known book",
    4: "a revealed deeper level is not beyond every known price",
    5: "a level's size went negative",
}


class BookMismatchError(ValueError):
    """The rebuilt book differs from LOBSTER's orderbook file; the message names the 1-based row."""


@dataclass
class RebuildReport:
    """Result of ``rebuild``: every row after the first was checked against the file."""

    rows: int
    rows_checked: int
    levels_revealed: int
    rows_with_revealed: int
    mismatches: int = 0

    def describe(self) -> str:
        return (f"{self.rows_checked:,} of {self.rows:,} rows rebuilt from messages and equal to the orderbook "
                f"file; {self.levels_revealed:,} deeper levels revealed from the file "
                f"(on {self.rows_with_revealed:,} rows); mismatches: {self.mismatches}")


@njit(cache=True)
def _is_real(p: np.int64) -> bool:
    return p != EMPTY_ASK and p != EMPTY_BID


@njit(cache=True)
def _rebuild_kernel(event_type, size, price, direction, bp, bs, exp_p, exp_s):
    """Check rows 1..N-1. Returns (bad_row, side, level, kind, revealed, rows_with_revealed, known_levels).

    bad_row is -1 when every row matches. On a mismatch exp_p/exp_s hold the rebuilt side (known levels).
    """
    N = bp.shape[0]
    L = bp.shape[2]
    cur_p = np.empty(L + 1, np.int64)
    cur_s = np.empty(L + 1, np.int64)
    revealed = 0
    revealed_rows = 0
    for k in range(1, N):
        et = event_type[k]
        msg_side = 0 if direction[k] == 1 else 1
        row_revealed = 0
        for s in range(2):
            n = 0
            for j in range(L):
                p = bp[k - 1, s, j]
                if not _is_real(p):
                    break
                cur_p[j] = p
                cur_s[j] = bs[k - 1, s, j]
                n += 1
            full = n == L
            kind = 0
            if s == msg_side and et >= 1 and et <= 4:
                px = price[k]
                i = -1
                for j in range(n):
                    if cur_p[j] == px:
                        i = j
                        break
                if et == 1:
                    if i >= 0:
                        cur_s[i] += size[k]
                    else:
                        pos = n
                        for j in range(n):
                            if (s == 0 and px > cur_p[j]) or (s == 1 and px < cur_p[j]):
                                pos = j
                                break
                        if pos < n or not full:
                            for j in range(n, pos, -1):
                                cur_p[j] = cur_p[j - 1]
                                cur_s[j] = cur_s[j - 1]
                            cur_p[pos] = px
                            cur_s[pos] = size[k]
                            n = min(n + 1, L)
                else:
                    if i >= 0:
                        cur_s[i] -= size[k]
                        if cur_s[i] == 0:
                            for j in range(i, n - 1):
                                cur_p[j] = cur_p[j + 1]
                                cur_s[j] = cur_s[j + 1]
                            n -= 1
                        elif cur_s[i] < 0:
                            kind = 5
                    else:
                        # absent price: fine only beyond the known levels of a full side (not visible)
                        beyond = full and n > 0 and ((s == 0 and px < cur_p[n - 1]) or (s == 1 and px > cur_p[n - 1]))
                        if not beyond:
                            kind = 3
            bad_level = -1
            if kind == 0:
                for j in range(n):
                    if bp[k, s, j] != cur_p[j] or bs[k, s, j] != cur_s[j]:
                        kind = 1
                        bad_level = j
                        break
            if kind == 0:
                for j in range(n, L):
                    if _is_real(bp[k, s, j]):
                        if not full:
                            kind = 2
                            bad_level = j
                            break
                        if n > 0 and ((s == 0 and bp[k, s, j] >= cur_p[n - 1]) or
                                      (s == 1 and bp[k, s, j] <= cur_p[n - 1])):
                            kind = 4
                            bad_level = j
                            break
                        row_revealed += 1
            if kind != 0:
                for j in range(n):
                    exp_p[j] = cur_p[j]
                    exp_s[j] = cur_s[j]
                return k, s, bad_level, kind, revealed, revealed_rows, n
        revealed += row_revealed
        if row_revealed > 0:
            revealed_rows += 1
    return -1, -1, -1, 0, revealed, revealed_rows, 0


def _fmt_side(prices: np.ndarray, sizes: np.ndarray) -> str:
    parts = [f"{int(p)}x{int(s)}" if p not in (EMPTY_ASK, EMPTY_BID) else "empty" for p, s in zip(prices, sizes)]
    return "[" + ", ".join(parts[:12]) + (", ..." if len(parts) > 12 else "") + "]"


def rebuild(day: LobsterDay) -> RebuildReport:
    """Rebuild the top-L book from the messages and compare every row with the orderbook file.

    Raises ``BookMismatchError`` naming the first row (1-based line of both files) that differs.
    """
    L = day.levels
    exp_p = np.zeros(L + 1, np.int64)
    exp_s = np.zeros(L + 1, np.int64)
    bad, side, level, kind, revealed, revealed_rows, n_known = _rebuild_kernel(
        np.ascontiguousarray(day.event_type, np.int8), np.ascontiguousarray(day.size, np.int64),
        np.ascontiguousarray(day.price, np.int64), np.ascontiguousarray(day.direction, np.int8),
        np.ascontiguousarray(day.book_prices, np.int64), np.ascontiguousarray(day.book_sizes, np.int64),
        exp_p, exp_s)
    if bad >= 0:
        k = int(bad)
        where = f" at level {level + 1}" if level >= 0 else ""
        msg = (f"{day.source}: row {k + 1}: rebuilt {_SIDE_NAME[side]} side differs from the orderbook file{where}: "
               f"{_KIND[int(kind)]}. Message: time {day.time[k]!r} ({format_clock(day.time[k])}), type "
               f"{int(day.event_type[k])}, order {int(day.order_id[k])}, size {int(day.size[k])}, price "
               f"{int(day.price[k])}, direction {int(day.direction[k])}. Rebuilt (known levels): "
               f"{_fmt_side(exp_p[:n_known], exp_s[:n_known])}; file row {k + 1}: "
               f"{_fmt_side(day.book_prices[k, side], day.book_sizes[k, side])}; file row {k}: "
               f"{_fmt_side(day.book_prices[k - 1, side], day.book_sizes[k - 1, side])}")
        raise BookMismatchError(msg)
    n = day.n_rows
    return RebuildReport(rows=n, rows_checked=max(n - 1, 0), levels_revealed=int(revealed),
                         rows_with_revealed=int(revealed_rows))


SESSION_OPEN = 34200.0  # 09:30:00 in seconds after midnight: every default grid is 09:30 + k dt


def grid_window(day: LobsterDay, dt: float, start: float | None, end: float | None) -> np.ndarray:
    """The grid times ``start + i*dt`` of a window, validated against the day's messages."""
    if not (dt > 0 and math.isfinite(dt)):
        raise ValueError(f"resample: dt must be a positive number of seconds, got {dt!r}")
    if day.n_rows == 0:
        raise ValueError(f"{day.source}: no messages to resample")
    t0, t1 = float(day.time[0]), float(day.time[-1])
    k0 = None
    if start is None:  # the first point of the session grid 09:30 + k dt at or after the first message
        k0 = math.ceil((t0 - SESSION_OPEN) / dt - 1e-9)
        if SESSION_OPEN + k0 * dt < t0:
            k0 += 1
        start = SESSION_OPEN + k0 * dt
    if start < t0:
        raise ValueError(f"{day.source}: window start {start!r} ({format_clock(start)}) is before the first message "
                         f"at {t0!r} ({format_clock(t0)}): there is no book state there; start at or after it")
    end = t1 if end is None else float(end)
    if end < start:
        raise ValueError(f"{day.source}: window end {end!r} is before its start {start!r}")
    T = int(math.floor((end - start) / dt + 1e-9)) + 1
    if k0 is not None:  # computed from the session open, so every load of the day has bit-identical grid times
        return SESSION_OPEN + (k0 + np.arange(T, dtype=np.float64)) * dt
    return start + np.arange(T, dtype=np.float64) * dt


def resample(day: LobsterDay, dt: float = 0.01, start: float | None = None, end: float | None = None) -> GridBook:
    """The book at grid times ``start + i*dt`` (state after the last message at or before each time) and the
    executions (types 4 and 5) of each step t, those with time in ``(times[t-1], times[t]]`` (step 0: in
    ``(times[0] - dt, times[0]]``). Default window: from the first point of the session grid 09:30 + k dt (k whole
    steps, possibly negative) at or after the first message, to the last message; so two loads of one day share
    one grid.
    """
    times = grid_window(day, dt, start, end)
    T = times.shape[0]
    idx = np.searchsorted(day.time, times, side="right") - 1
    prices = np.take(day.book_prices, idx, axis=0)
    sizes = np.take(day.book_sizes, idx, axis=0)

    is_exec = (day.event_type == 4) | (day.event_type == 5)
    ex = np.flatnonzero(is_exec & (day.time > times[0] - dt) & (day.time <= times[-1]))
    step = np.searchsorted(times, day.time[ex], side="left")
    counts = np.bincount(step, minlength=T)
    exec_ptr = np.zeros(T + 1, np.int64)
    np.cumsum(counts, out=exec_ptr[1:])
    return GridBook(
        ticker=day.ticker, date=day.date, dt=float(dt), times=times, prices=prices, sizes=sizes,
        exec_ptr=exec_ptr,
        exec_side=np.where(day.direction[ex] == -1, 1, 0).astype(np.int8),
        exec_price=day.price[ex].astype(np.int64),
        exec_volume=day.size[ex].astype(np.int64),
        exec_hidden=(day.event_type[ex] == 5),
    )
