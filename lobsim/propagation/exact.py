"""Exact integer propagation of attacker orders through a batch of book snippets (Numba), plus a plain-Python
reference of the same semantics.

Order of events inside window step t of a snippet:

1. the clean executions of step t (they happened before snapshot t) fill attacker shares resting at their
   (side, price), following the fill model;
2. the orders ``orders[b, t, s, j]`` are placed at (s, prices[b, t, s, j]);
3. ``delta[b, t, s, j]`` is the attacker's resting size at (s, prices[b, t, s, j]).

Fill models:

- ``"touch"`` (default, the thesis' assumption): any clean execution at (s, P) fills all attacker shares resting
  at (s, P).
- ``"queue"`` (FIFO): each order joins the back of the queue at (s, P). The clean shares ahead of it are the
  visible clean size at P when it is placed (never fewer than the clean shares already counted ahead of earlier
  attacker orders there, so FIFO order is kept), plus the earlier attacker shares. Executions at (s, P) consume
  the queue front to back; attacker shares can fill partially. Cancellations of clean orders ahead are not
  tracked: the queue ahead only shrinks by executions, which makes fills later (conservative for the attacker).

Hidden (LOBSTER type 5) executions count by default; ``include_hidden=False`` ignores them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numba
import numpy as np
from numba import njit, prange

from lobsim.grid import level_mask
from lobsim.snippets import SnippetBatch

FILL_MODELS = ("touch", "queue")
SERIAL_BELOW = 200_000  # entries of work under which the Numba kernels run on one thread (no pool wake-up cost)


@contextmanager
def numba_threads_for(work: int) -> Iterator[None]:
    """Run the enclosed Numba kernels on one thread when ``work`` is small, else on all of Numba's threads."""
    if work >= SERIAL_BELOW:
        yield
        return
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(before)


@dataclass
class Fills:
    """Attacker fills as flat arrays: one record per clean execution that filled attacker shares."""

    snippet: np.ndarray  # (F,) int64
    step: np.ndarray  # (F,) int64 window step of the execution
    side: np.ndarray  # (F,) int8 0 bid (attacker bought) / 1 ask (attacker sold)
    price: np.ndarray  # (F,) int64 LOBSTER units
    shares: np.ndarray  # (F,) int64

    def __len__(self) -> int:
        return int(self.shares.shape[0])


@dataclass
class Propagation:
    """Result of :func:`propagate`: resting attacker size per (b, t, s, j) and the fills."""

    delta: np.ndarray  # (B, W, 2, L) int64
    fills: Fills
    fill_model: str = "touch"


def check_orders(orders: np.ndarray, batch: SnippetBatch) -> np.ndarray:
    """Validate integer orders against the batch; returns them as contiguous int64.

    Errors name the first bad entry: negative orders, or orders at an empty (masked) level.
    """
    orders = np.asarray(orders)
    if orders.shape != batch.prices.shape:
        raise ValueError(f"orders have shape {orders.shape}, the batch's prices {batch.prices.shape}")
    if not np.issubdtype(orders.dtype, np.integer):
        raise ValueError(f"orders must be integer shares, got dtype {orders.dtype}")
    orders = np.ascontiguousarray(orders, dtype=np.int64)
    prices = np.ascontiguousarray(batch.prices, dtype=np.int64)
    err = np.full((orders.shape[0], 4), -1, np.int64)
    with numba_threads_for(orders.size):
        _find_bad_orders(orders, prices, err)
    bad = np.flatnonzero(err[:, 0] >= 0)
    if len(bad):
        b = int(bad[0])
        t, s, j, code = (int(v) for v in err[b])
        if code == 1:
            raise ValueError(f"negative order {orders[b, t, s, j]} at snippet {b}, step {t}, side {s}, level {j}")
        raise ValueError(f"order at an empty (masked) level: snippet {b}, step {t}, side {s}, level {j}")
    return orders


@njit(cache=True, parallel=True)
def _find_bad_orders(orders, prices, err):
    """err[b] = (t, s, j, 1 negative / 2 at a masked level) of snippet b's first bad order."""
    B, W, _, L = orders.shape
    for b in prange(B):
        for t in range(W):
            for s in range(2):
                for j in range(L):
                    a = orders[b, t, s, j]
                    if a == 0:
                        continue
                    v = prices[b, t, s, j]
                    code = 1 if a < 0 else (2 if v == 9999999999 or v == -9999999999 else 0)
                    if code > 0 and err[b, 0] < 0:
                        err[b, 0] = t
                        err[b, 1] = s
                        err[b, 2] = j
                        err[b, 3] = code


def check_prices(batch: SnippetBatch) -> None:
    """Real prices within one side of one snapshot must be distinct: a ValueError names the first duplicate.

    (Two levels at one price would share the attacker's resting shares and count them twice in the book.)
    """
    prices = np.ascontiguousarray(batch.prices, dtype=np.int64)
    out = np.full((prices.shape[0], 4), -1, np.int64)
    with numba_threads_for(prices.size):
        _find_duplicate_prices(prices, out)
    bad = np.flatnonzero(out[:, 0] >= 0)
    if len(bad):
        b = int(bad[0])
        t, s, i, j = (int(v) for v in out[b])
        raise ValueError(f"duplicate price {prices[b, t, s, j]} on side {s} at snippet {b}, step {t} (levels {i} and "
                         f"{j}): prices within one side of a snapshot must be distinct")


@njit(cache=True, parallel=True)
def _find_duplicate_prices(prices, out):
    """out[b] = (t, s, i, j) of snippet b's first pair of levels i < j with one real price, else -1."""
    B, W, _, L = prices.shape
    for b in prange(B):
        for t in range(W):
            for s in range(2):
                if t > 0:  # the same ladder as the step before was checked there
                    same = True
                    for j in range(L):
                        if prices[b, t, s, j] != prices[b, t - 1, s, j]:
                            same = False
                            break
                    if same:
                        continue
                for j in range(1, L):
                    v = prices[b, t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        continue
                    for i in range(j):
                        if prices[b, t, s, i] == v and out[b, 0] < 0:
                            out[b, 0] = t
                            out[b, 1] = s
                            out[b, 2] = i
                            out[b, 3] = j
                if out[b, 0] >= 0:
                    break
            if out[b, 0] >= 0:
                break


def check_executions(batch: SnippetBatch) -> None:
    """Executions must have side 0/1 and a CSR pointer that is non-decreasing."""
    bad = np.flatnonzero((batch.exec_side != 0) & (batch.exec_side != 1))
    if len(bad):
        raise ValueError(f"execution {bad[0]} has side {batch.exec_side[bad[0]]}; expected 0 (bid) or 1 (ask)")
    if batch.exec_ptr.size and np.any(np.diff(batch.exec_ptr, axis=1) < 0):
        b = int(np.argwhere(np.diff(batch.exec_ptr, axis=1) < 0)[0, 0])
        raise ValueError(f"exec_ptr of snippet {b} decreases")


# ---------------------------------------------------------------------------------------------------------------
# Numba kernels
# ---------------------------------------------------------------------------------------------------------------


@njit(cache=True)
def _side_keys(p: np.ndarray, s: int) -> np.ndarray:
    """Sorted unique real prices on side s of one snippet's (W, 2, L) price array."""
    W, _, L = p.shape
    cand = np.empty(W * L, np.int64)
    n = 0
    for t in range(W):
        for j in range(L):
            v = p[t, s, j]
            if v == 9999999999 or v == -9999999999:
                continue
            if t > 0 and v == p[t - 1, s, j]:
                continue
            seen = False
            if t > 0:  # a level shift reuses the previous snapshot's prices: keep only new ones
                for i in range(L):
                    if p[t - 1, s, i] == v:
                        seen = True
                        break
            if not seen:
                cand[n] = v
                n += 1
    c = np.sort(cand[:n])
    m = 0
    for i in range(n):
        if i == 0 or c[i] != c[i - 1]:
            c[m] = c[i]
            m += 1
    return c[:m].copy()


@njit(cache=True)
def _lookup(keys: np.ndarray, v: np.int64) -> int:
    """Index of v in sorted keys, or -1."""
    i = np.searchsorted(keys, v)
    if i < keys.shape[0] and keys[i] == v:
        return i
    return -1


@njit(cache=True)
def _side_key(keys0: np.ndarray, keys1: np.ndarray, side: int, price: np.int64) -> int:
    """Key of (side, price) in one snippet: bids index keys0, asks follow after them; -1 when unknown."""
    if side == 0:
        return _lookup(keys0, price)
    k = _lookup(keys1, price)
    return k + keys0.shape[0] if k >= 0 else -1


@njit(cache=True, parallel=True)
def _touch_kernel(orders, prices, exec_ptr, exec_side, exec_price, exec_hidden, include_hidden, delta, fill_snippet,
                  fill_step, fill_shares):  # fmt: skip
    B, W, _, L = prices.shape
    for b in prange(B):
        p = prices[b]
        keys0 = _side_keys(p, 0)
        keys1 = _side_keys(p, 1)
        k0 = keys0.shape[0]
        resting = np.zeros(k0 + keys1.shape[0], np.int64)
        cur_price = np.full((2, L), -1, np.int64)
        cur_key = np.full((2, L), -1, np.int64)
        for t in range(W):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if exec_hidden[e] and not include_hidden:
                    continue
                k = _side_key(keys0, keys1, exec_side[e], exec_price[e])
                if k >= 0 and resting[k] > 0:
                    fill_snippet[e] = b
                    fill_step[e] = t
                    fill_shares[e] = resting[k]
                    resting[k] = 0
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        continue
                    if v != cur_price[s, j]:
                        cur_price[s, j] = v
                        cur_key[s, j] = _side_key(keys0, keys1, s, v)
                    a = orders[b, t, s, j]
                    if a != 0:
                        resting[cur_key[s, j]] += a
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        delta[b, t, s, j] = 0
                        continue
                    delta[b, t, s, j] = resting[cur_key[s, j]]


@njit(cache=True, parallel=True)
def _queue_kernel(orders, prices, sizes, exec_ptr, exec_side, exec_price, exec_volume, exec_hidden, include_hidden,
                  delta, fill_snippet, fill_step, fill_shares):  # fmt: skip
    B, W, _, L = prices.shape
    for b in prange(B):
        p = prices[b]
        keys0 = _side_keys(p, 0)
        keys1 = _side_keys(p, 1)
        k0 = keys0.shape[0]
        K = k0 + keys1.shape[0]
        n_chunks = 0
        for t in range(W):
            for s in range(2):
                for j in range(L):
                    if orders[b, t, s, j] > 0:
                        n_chunks += 1
        gap = np.zeros(n_chunks, np.int64)  # clean shares between this chunk and the one ahead
        qty = np.zeros(n_chunks, np.int64)  # attacker shares of the chunk still resting
        nxt = np.full(n_chunks, -1, np.int64)
        head = np.full(K, -1, np.int64)
        tail = np.full(K, -1, np.int64)
        clean = np.zeros(K, np.int64)  # clean shares counted ahead of the live chunks
        resting = np.zeros(K, np.int64)
        used = 0
        cur_price = np.full((2, L), -1, np.int64)
        cur_key = np.full((2, L), -1, np.int64)
        for t in range(W):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if exec_hidden[e] and not include_hidden:
                    continue
                k = _side_key(keys0, keys1, exec_side[e], exec_price[e])
                if k < 0:
                    continue
                v = exec_volume[e]
                filled = 0
                while v > 0 and head[k] >= 0:
                    c = head[k]
                    g = min(gap[c], v)
                    gap[c] -= g
                    clean[k] -= g
                    v -= g
                    if v == 0:
                        break
                    f = min(qty[c], v)
                    qty[c] -= f
                    v -= f
                    filled += f
                    if qty[c] == 0:
                        head[k] = nxt[c]
                        if head[k] < 0:
                            tail[k] = -1
                if filled > 0:
                    resting[k] -= filled
                    fill_snippet[e] = b
                    fill_step[e] = t
                    fill_shares[e] = filled
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        continue
                    if v != cur_price[s, j]:
                        cur_price[s, j] = v
                        cur_key[s, j] = _side_key(keys0, keys1, s, v)
                    a = orders[b, t, s, j]
                    if a > 0:
                        k = cur_key[s, j]
                        c = used
                        used += 1
                        g = max(sizes[b, t, s, j] - clean[k], 0)
                        gap[c] = g
                        qty[c] = a
                        clean[k] += g
                        resting[k] += a
                        if tail[k] >= 0:
                            nxt[tail[k]] = c
                        else:
                            head[k] = c
                        tail[k] = c
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        delta[b, t, s, j] = 0
                        continue
                    delta[b, t, s, j] = resting[cur_key[s, j]]


def propagate(
    orders: np.ndarray, batch: SnippetBatch, fill_model: str = "touch", include_hidden: bool = True
) -> Propagation:
    """Propagate integer orders (B, W, 2, L) through ``batch``; see the module docstring for the semantics."""
    if fill_model not in FILL_MODELS:
        raise ValueError(f"fill_model must be one of {FILL_MODELS}, got {fill_model!r}")
    orders = check_orders(orders, batch)
    check_executions(batch)
    check_prices(batch)
    prices = np.ascontiguousarray(batch.prices, dtype=np.int64)
    exec_ptr = np.ascontiguousarray(batch.exec_ptr, dtype=np.int64)
    side = np.ascontiguousarray(batch.exec_side, dtype=np.int8)
    price = np.ascontiguousarray(batch.exec_price, dtype=np.int64)
    hidden = np.ascontiguousarray(batch.exec_hidden, dtype=np.bool_)
    E = side.shape[0]
    delta = np.empty(prices.shape, np.int64)
    fill_snippet = np.zeros(E, np.int64)
    fill_step = np.zeros(E, np.int64)
    fill_shares = np.zeros(E, np.int64)
    with numba_threads_for(orders.size):
        _run_kernel(fill_model, orders, prices, exec_ptr, side, price, hidden, include_hidden, batch, delta,
                    (fill_snippet, fill_step, fill_shares))  # fmt: skip
    idx = np.flatnonzero(fill_shares)
    order = np.lexsort((idx, fill_snippet[idx]))  # by snippet, then execution order
    idx = idx[order]
    fills = Fills(snippet=fill_snippet[idx], step=fill_step[idx], side=side[idx].copy(), price=price[idx].copy(),
                  shares=fill_shares[idx])  # fmt: skip
    return Propagation(delta=delta, fills=fills, fill_model=fill_model)


def _run_kernel(fill_model, orders, prices, exec_ptr, side, price, hidden, include_hidden, batch, delta,
                out) -> None:  # fmt: skip
    if fill_model == "touch":
        _touch_kernel(orders, prices, exec_ptr, side, price, hidden, bool(include_hidden), delta, *out)
    else:
        sizes = np.ascontiguousarray(batch.sizes, dtype=np.int64)
        volume = np.ascontiguousarray(batch.exec_volume, dtype=np.int64)
        _queue_kernel(orders, prices, sizes, exec_ptr, side, price, volume, hidden, bool(include_hidden), delta,
                      *out)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Plain-Python reference (slow, obviously correct; used by tests and the benchmark)
# ---------------------------------------------------------------------------------------------------------------


def propagate_reference(
    orders: np.ndarray, batch: SnippetBatch, fill_model: str = "touch", include_hidden: bool = True
) -> Propagation:
    """The same semantics as :func:`propagate`, one dict per (side, price), in plain Python."""
    if fill_model not in FILL_MODELS:
        raise ValueError(f"fill_model must be one of {FILL_MODELS}, got {fill_model!r}")
    orders = check_orders(orders, batch)
    check_prices(batch)
    B, W, _, L = batch.prices.shape
    mask = level_mask(batch.prices)
    delta = np.zeros(orders.shape, np.int64)
    recs: list[tuple[int, int, int, int, int]] = []
    for b in range(B):
        prices = batch.prices[b].tolist()
        sizes = batch.sizes[b].tolist()
        a = orders[b].tolist()
        m = mask[b].tolist()
        resting: dict[tuple[int, int], int] = {}
        queues: dict[tuple[int, int], list[list[int]]] = {}  # FIFO of [clean gap ahead, attacker shares]
        for t in range(W):
            for e in range(int(batch.exec_ptr[b, t]), int(batch.exec_ptr[b, t + 1])):
                if batch.exec_hidden[e] and not include_hidden:
                    continue
                key = (int(batch.exec_side[e]), int(batch.exec_price[e]))
                if fill_model == "touch":
                    q = resting.get(key, 0)
                    if q > 0:
                        recs.append((b, t, key[0], key[1], q))
                        resting[key] = 0
                else:
                    vol = int(batch.exec_volume[e])
                    queue = queues.get(key, [])
                    filled = 0
                    while vol > 0 and queue:
                        chunk = queue[0]
                        take = min(chunk[0], vol)
                        chunk[0] -= take
                        vol -= take
                        take = min(chunk[1], vol)
                        chunk[1] -= take
                        vol -= take
                        filled += take
                        if chunk[1] == 0 and chunk[0] == 0:
                            queue.pop(0)
                    if filled:
                        recs.append((b, t, key[0], key[1], filled))
                        resting[key] -= filled
            for s in range(2):
                for j in range(L):
                    if not m[t][s][j] or a[t][s][j] == 0:
                        continue
                    key = (s, prices[t][s][j])
                    resting[key] = resting.get(key, 0) + a[t][s][j]
                    if fill_model == "queue":
                        queue = queues.setdefault(key, [])
                        ahead = sum(c[0] for c in queue)
                        queue.append([max(sizes[t][s][j] - ahead, 0), a[t][s][j]])
            for s in range(2):
                for j in range(L):
                    if m[t][s][j]:
                        delta[b, t, s, j] = resting.get((s, prices[t][s][j]), 0)
    arr = np.array(recs, dtype=np.int64).reshape(-1, 5)
    fills = Fills(snippet=arr[:, 0].copy(), step=arr[:, 1].copy(), side=arr[:, 2].astype(np.int8),
                  price=arr[:, 3].copy(), shares=arr[:, 4].copy())  # fmt: skip
    return Propagation(delta=delta, fills=fills, fill_model=fill_model)
