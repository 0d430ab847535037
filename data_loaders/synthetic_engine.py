"""Numba kernels of the synthetic market: the order-level event loop and a fast LOBSTER CSV writer.

The event loop keeps a real order book (order ids, FIFO queue per price, per side) on a fixed tick grid and
draws events in continuous time (Gillespie): limit orders, market orders, cancellations (thinning), hidden
executions and switches of a hidden order-flow regime. See ``data_loaders.synthetic`` for the model.

Output of :func:`simulate_events`: ``msgs`` (N, 6) int64 with columns (time in integer nanoseconds after
midnight, type, order id, size, price, direction) and ``book`` (N, 4L) int64 in LOBSTER column order.
"""

from __future__ import annotations

import numpy as np
from numba import njit

EMPTY_ASK = 9999999999
EMPTY_BID = -9999999999

# indices into the float parameter vector ``fp``
F_LIMIT_RATE = 0  # limit orders per second per side
F_MARKET_RATE = 1  # market orders per second (both sides)
F_THETA_MAX = 2  # max of the cancellation table (thinning bound)
F_HIDDEN_RATE = 3  # hidden executions per second
F_REGIME_RATE = 4  # regime switches per second
F_FLOW_BIAS = 5  # P(buy market order) = 0.5 + 0.5 * bias * regime
F_ODD_LOT = 6  # probability that a limit order is an odd lot (1..lot-1 shares)
F_PARTIAL = 7  # probability that a cancellation is partial (type 2) when possible
F_ANCHOR_PULL = 8  # P(buy) is lowered by pull * (mid / opening price - 1): mild mean reversion to the open
F_LIMIT_BIAS = 9  # P(a limit order is a bid) = 0.5 + 0.5 * limit_bias * regime (informed liquidity)
N_FP = 10

# indices into the int parameter vector ``ip``
I_START_NS = 0
I_END_NS = 1
I_WARMUP_NS = 2
I_INIT_TICK = 3  # initial price in ticks (absolute)
I_TICK_UNITS = 4  # one tick in LOBSTER price units (dollars x 10,000)
I_LEVELS = 5
I_EMIT_ALL = 6  # 1: emit every event, 0: only events touching the top-L window (LOBSTER)
I_LOT = 7
I_SPAN = 8  # half-width of the tick grid
I_FIRST_ID = 9
I_OUT_CAP = 10  # initial capacity of the output arrays (they grow by doubling when it is too small)
N_IP = 11


@njit(cache=True)
def _draw(cum: np.ndarray) -> int:
    """Index i with probability (cum[i] - cum[i-1]) / cum[-1] (binary search)."""
    u = np.random.random() * cum[cum.shape[0] - 1]
    lo, hi = 0, cum.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid] > u:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _scan_next(qty: np.ndarray, s: int, start: int, n: int) -> int:
    """First occupied index at or worse than ``start`` on side ``s`` (-1 if none)."""
    step = -1 if s == 0 else 1
    i = start
    while 0 <= i < n:
        if qty[s, i] > 0:
            return i
        i += step
    return -1


@njit(cache=True)
def _in_window(qty: np.ndarray, best: np.ndarray, s: int, p: int, levels: int) -> bool:
    """True when fewer than ``levels`` occupied prices on side ``s`` are strictly better than ``p``."""
    b = best[s]
    if b < 0:
        return True
    step = -1 if s == 0 else 1
    count = 0
    i = b
    while (i - p) * step < 0:  # i strictly better than p
        if qty[s, i] > 0:
            count += 1
            if count >= levels:
                return False
        i += step
    return True


@njit(cache=True)
def _write_row(book: np.ndarray, row: int, qty: np.ndarray, best: np.ndarray, levels: int, lo: int, tick: int) -> None:
    """Top-``levels`` book into ``book[row]`` (AskP, AskS, BidP, BidS per level, dummies for empty levels)."""
    n = qty.shape[1]
    for s in range(2):
        col = 0 if s == 1 else 2
        step = -1 if s == 0 else 1
        i = best[s]
        k = 0
        if i >= 0:
            while k < levels and 0 <= i < n:
                if qty[s, i] > 0:
                    book[row, 4 * k + col] = (i + lo) * tick
                    book[row, 4 * k + col + 1] = qty[s, i]
                    k += 1
                i += step
        while k < levels:
            book[row, 4 * k + col] = EMPTY_ASK if s == 1 else EMPTY_BID
            book[row, 4 * k + col + 1] = 0
            k += 1


@njit(cache=True)
def _update_row(
    book: np.ndarray, row: int, qty: np.ndarray, best: np.ndarray, levels: int, lo: int, tick: int, s: int, p: int
) -> None:
    """``book[row]`` after an event at grid index ``p`` on side ``s`` (``s < 0``: nothing visible changed).

    The previous row is the top-L book just before the event (events outside the window never change it), so
    the row is copied and only side ``s`` is touched: a size update in place, or a rescan of that side when a
    level appeared or vanished.
    """
    if row == 0:
        _write_row(book, row, qty, best, levels, lo, tick)
        return
    book[row, :] = book[row - 1, :]
    if s < 0:
        return
    col = 0 if s == 1 else 2
    price = (p + lo) * tick
    if qty[s, p] > 0:
        for j in range(levels):
            if book[row, 4 * j + col] == price:
                book[row, 4 * j + col + 1] = qty[s, p]
                return
    n = qty.shape[1]
    step = -1 if s == 0 else 1
    i = best[s]
    k = 0
    if i >= 0:
        while k < levels and 0 <= i < n:
            if qty[s, i] > 0:
                book[row, 4 * k + col] = (i + lo) * tick
                book[row, 4 * k + col + 1] = qty[s, i]
                k += 1
            i += step
    while k < levels:
        book[row, 4 * k + col] = EMPTY_ASK if s == 1 else EMPTY_BID
        book[row, 4 * k + col + 1] = 0
        k += 1


@njit(cache=True)
def _grow(msgs: np.ndarray, book: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output buffers of twice the rows, holding the old rows first."""
    n = msgs.shape[0]
    m2 = np.empty((2 * n, msgs.shape[1]), np.int64)
    b2 = np.empty((2 * n, book.shape[1]), np.int64)
    m2[:n] = msgs
    b2[:n] = book
    return m2, b2


@njit(cache=True)
def simulate_events(
    seed: int,
    ip: np.ndarray,
    fp: np.ndarray,
    lam_cum: np.ndarray,
    theta: np.ndarray,
    size_cum: np.ndarray,
    mo_size_cum: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Run the event loop; return (msgs (N, 6) int64, book (N, 4L) int64, number of book events, regime log).

    The arrays returned are the first N rows of the output buffers (``ip[I_OUT_CAP]`` rows to start with).
    The regime log (R + 1,) int64 holds the regime at the start of the warm-up (+-1) followed by the times (integer
    ns after midnight) of the R regime switches.

    Book events are accepted limit orders, market orders, cancellations and hidden executions, warm-up and
    unseen deep events included (rejected thinning candidates and regime switches are not counted).

    ``lam_cum``: cumulative limit-order rate profile over distances 1..K ticks from the opposite best quote;
    ``theta``: cancellation rate per order for distance d = 0..len-1 (the last entry also holds for farther
    orders); ``size_cum`` / ``mo_size_cum``: cumulative lot-count distributions (index k means k+1 lots).
    """
    np.random.seed(seed)
    start_ns, end_ns, warmup_ns = ip[I_START_NS], ip[I_END_NS], ip[I_WARMUP_NS]
    init_tick, tick, levels, emit_all = ip[I_INIT_TICK], ip[I_TICK_UNITS], ip[I_LEVELS], ip[I_EMIT_ALL]
    lot, span, next_id = ip[I_LOT], ip[I_SPAN], ip[I_FIRST_ID]
    limit_rate, market_rate, theta_max = fp[F_LIMIT_RATE], fp[F_MARKET_RATE], fp[F_THETA_MAX]
    hidden_rate, regime_rate, flow_bias = fp[F_HIDDEN_RATE], fp[F_REGIME_RATE], fp[F_FLOW_BIAS]
    odd_lot, partial, anchor_pull = fp[F_ODD_LOT], fp[F_PARTIAL], fp[F_ANCHOR_PULL]
    limit_bias = fp[F_LIMIT_BIAS]
    n_theta = theta.shape[0]

    lo = max(1, init_tick - span)  # absolute tick of grid index 0 (prices stay > 0)
    n = init_tick + span - lo + 1
    qty = np.zeros((2, n), np.int64)
    head = np.full((2, n), -1, np.int64)
    tail = np.full((2, n), -1, np.int64)
    best = np.full(2, -1, np.int64)
    last_best = np.empty(2, np.int64)
    last_best[0] = init_tick - lo
    last_best[1] = init_tick - lo + 1

    cap = 1 << 14
    o_id = np.zeros(cap, np.int64)
    o_size = np.zeros(cap, np.int64)
    o_side = np.zeros(cap, np.int64)
    o_px = np.zeros(cap, np.int64)
    o_next = np.zeros(cap, np.int64)
    o_prev = np.zeros(cap, np.int64)
    o_live = np.zeros(cap, np.int64)  # position in the live list
    live = np.zeros(cap, np.int64)
    free = np.arange(cap - 1, -1, -1).astype(np.int64)
    n_free = cap
    n_live = 0

    out_cap = max(1024, ip[I_OUT_CAP])
    msgs = np.empty((out_cap, 6), np.int64)
    book = np.empty((out_cap, 4 * levels), np.int64)
    n_out = 0
    n_events = 0

    regime = 1 if np.random.random() < 0.5 else -1
    reg_log = np.empty(64, np.int64)
    reg_log[0] = regime
    n_reg = 1
    t = start_ns - warmup_ns
    base_rate = 2.0 * limit_rate + market_rate + hidden_rate + regime_rate
    while True:
        rate = base_rate + theta_max * n_live
        t += np.int64(-np.log(1.0 - np.random.random()) / rate * 1e9)
        if t > end_ns:
            break
        emitting = t >= start_ns
        u = np.random.random() * rate
        if u < 2.0 * limit_rate:
            # ---------------- limit order
            # side: a bid with probability 0.5 + 0.5 * limit_bias * regime (exactly u < limit_rate when unbiased)
            s = 0 if u < 2.0 * limit_rate * (0.5 + 0.5 * limit_bias * regime) else 1
            o = 1 - s
            ref = best[o] if best[o] >= 0 else last_best[o]
            d = _draw(lam_cum) + 1
            p = ref - d if s == 0 else ref + d
            if p < 1 or p >= n - 1:
                continue
            n_events += 1
            if odd_lot > 0.0 and np.random.random() < odd_lot:
                size = 1 + np.int64(np.random.random() * (lot - 1))
            else:
                size = lot * (_draw(size_cum) + 1)
            show = emitting and (emit_all == 1 or _in_window(qty, best, s, p, levels))
            if n_free == 0:
                new_cap = 2 * cap
                o_id = np.concatenate((o_id, np.zeros(cap, np.int64)))
                o_size = np.concatenate((o_size, np.zeros(cap, np.int64)))
                o_side = np.concatenate((o_side, np.zeros(cap, np.int64)))
                o_px = np.concatenate((o_px, np.zeros(cap, np.int64)))
                o_next = np.concatenate((o_next, np.zeros(cap, np.int64)))
                o_prev = np.concatenate((o_prev, np.zeros(cap, np.int64)))
                o_live = np.concatenate((o_live, np.zeros(cap, np.int64)))
                live = np.concatenate((live, np.zeros(cap, np.int64)))
                free = np.concatenate((np.arange(new_cap - 1, cap - 1, -1).astype(np.int64), free))
                n_free = cap
                cap = new_cap
            n_free -= 1
            k = free[n_free]
            o_id[k] = next_id
            next_id += 1
            o_size[k] = size
            o_side[k] = s
            o_px[k] = p
            o_next[k] = -1
            o_prev[k] = tail[s, p]
            if tail[s, p] >= 0:
                o_next[tail[s, p]] = k
            else:
                head[s, p] = k
            tail[s, p] = k
            o_live[k] = n_live
            live[n_live] = k
            n_live += 1
            qty[s, p] += size
            if best[s] < 0 or (s == 0 and p > best[s]) or (s == 1 and p < best[s]):
                best[s] = p
                last_best[s] = p
            if show:
                if n_out >= out_cap:
                    msgs, book = _grow(msgs, book)
                    out_cap *= 2
                msgs[n_out, 0] = t
                msgs[n_out, 1] = 1
                msgs[n_out, 2] = o_id[k]
                msgs[n_out, 3] = size
                msgs[n_out, 4] = (p + lo) * tick
                msgs[n_out, 5] = 1 if s == 0 else -1
                _update_row(book, n_out, qty, best, levels, lo, tick, s, p)
                n_out += 1
            continue
        u -= 2.0 * limit_rate
        if u < market_rate:
            # ---------------- market order: walks the opposite side, one type-4 message per resting order hit
            mid = 0.5 * (last_best[0] + last_best[1]) + lo
            p_buy = 0.5 + 0.5 * flow_bias * regime - anchor_pull * (mid / init_tick - 1.0)
            buy = np.random.random() < min(0.98, max(0.02, p_buy))
            s = 1 if buy else 0  # the side that is hit
            remaining = lot * (_draw(mo_size_cum) + 1)
            n_events += 1
            while remaining > 0 and best[s] >= 0:
                p = best[s]
                k = head[s, p]
                x = min(remaining, o_size[k])
                remaining -= x
                o_size[k] -= x
                qty[s, p] -= x
                if emitting:
                    if n_out >= out_cap:
                        msgs, book = _grow(msgs, book)
                        out_cap *= 2
                    msgs[n_out, 0] = t
                    msgs[n_out, 1] = 4
                    msgs[n_out, 2] = o_id[k]
                    msgs[n_out, 3] = x
                    msgs[n_out, 4] = (p + lo) * tick
                    msgs[n_out, 5] = 1 if s == 0 else -1
                if o_size[k] == 0:
                    # unlink the head order
                    nx = o_next[k]
                    head[s, p] = nx
                    if nx >= 0:
                        o_prev[nx] = -1
                    else:
                        tail[s, p] = -1
                    j = o_live[k]
                    n_live -= 1
                    last = live[n_live]
                    live[j] = last
                    o_live[last] = j
                    free[n_free] = k
                    n_free += 1
                    if qty[s, p] == 0:
                        best[s] = _scan_next(qty, s, p, n)
                        if best[s] >= 0:
                            last_best[s] = best[s]
                if emitting:
                    _update_row(book, n_out, qty, best, levels, lo, tick, s, p)
                    n_out += 1
            continue
        u -= market_rate
        if u < hidden_rate:
            # ---------------- execution against hidden liquidity: a type-5 message, the visible book is unchanged
            if not emitting or best[0] < 0 or best[1] < 0:
                continue
            n_events += 1
            buy = np.random.random() < 0.5 + 0.5 * flow_bias * regime
            gap = best[1] - best[0]
            if gap > 1:
                p = best[0] + 1 + np.int64(np.random.random() * (gap - 1))
            else:
                p = best[1] if buy else best[0]
            if n_out >= out_cap:
                msgs, book = _grow(msgs, book)
                out_cap *= 2
            msgs[n_out, 0] = t
            msgs[n_out, 1] = 5
            msgs[n_out, 2] = 0
            msgs[n_out, 3] = lot * (_draw(size_cum) + 1)
            msgs[n_out, 4] = (p + lo) * tick
            msgs[n_out, 5] = -1 if buy else 1  # the hidden resting order's direction
            _update_row(book, n_out, qty, best, levels, lo, tick, -1, 0)
            n_out += 1
            continue
        u -= hidden_rate
        if u < regime_rate:
            regime = -regime
            if n_reg >= reg_log.shape[0]:
                grown = np.empty(2 * reg_log.shape[0], np.int64)
                grown[:n_reg] = reg_log[:n_reg]
                reg_log = grown
            reg_log[n_reg] = t
            n_reg += 1
            continue
        # ---------------- cancellation candidate (thinning: accept with theta(d) / theta_max)
        if n_live == 0:
            continue
        k = live[min(n_live - 1, np.int64(np.random.random() * n_live))]
        s = o_side[k]
        p = o_px[k]
        o = 1 - s
        ref = best[o] if best[o] >= 0 else last_best[o]
        d = ref - p if s == 0 else p - ref
        if d < 0:
            d = 0
        if d >= n_theta:
            d = n_theta - 1
        if np.random.random() * theta_max >= theta[d]:
            continue
        n_events += 1
        show = emitting and (emit_all == 1 or _in_window(qty, best, s, p, levels))
        m = (o_size[k] - 1) // lot
        if m >= 1 and np.random.random() < partial:
            x = lot * (1 + np.int64(np.random.random() * m))
            typ = 2
        else:
            x = o_size[k]
            typ = 3
        o_size[k] -= x
        qty[s, p] -= x
        oid = o_id[k]
        if typ == 3:
            pv, nx = o_prev[k], o_next[k]
            if pv >= 0:
                o_next[pv] = nx
            else:
                head[s, p] = nx
            if nx >= 0:
                o_prev[nx] = pv
            else:
                tail[s, p] = pv
            j = o_live[k]
            n_live -= 1
            last = live[n_live]
            live[j] = last
            o_live[last] = j
            free[n_free] = k
            n_free += 1
            if qty[s, p] == 0 and p == best[s]:
                best[s] = _scan_next(qty, s, p, n)
                if best[s] >= 0:
                    last_best[s] = best[s]
        if show:
            if n_out >= out_cap:
                msgs, book = _grow(msgs, book)
                out_cap *= 2
            msgs[n_out, 0] = t
            msgs[n_out, 1] = typ
            msgs[n_out, 2] = oid
            msgs[n_out, 3] = x
            msgs[n_out, 4] = (p + lo) * tick
            msgs[n_out, 5] = 1 if s == 0 else -1
            _update_row(book, n_out, qty, best, levels, lo, tick, s, p)
            n_out += 1
    return msgs[:n_out], book[:n_out], n_events, reg_log[:n_reg]


@njit(cache=True)
def _ndigits(v: int) -> int:
    """Characters of ``v`` written in decimal (with the sign)."""
    c = 1
    if v < 0:
        c += 1
        v = -v
    while v >= 10:
        v //= 10
        c += 1
    return c


@njit(cache=True)
def _put_int(buf: np.ndarray, pos: int, v: int, width: int) -> int:
    """Write ``v`` at ``buf[pos:]`` (zero-padded to ``width`` digits when width > 0); return the new position."""
    if v < 0:
        buf[pos] = 45  # '-'
        pos += 1
        v = -v
    nd = _ndigits(v)
    if width > nd:
        nd = width
    for i in range(nd - 1, -1, -1):
        buf[pos + i] = 48 + v % 10
        v //= 10
    return pos + nd


@njit(cache=True)
def format_csv(values: np.ndarray, time_first: bool) -> np.ndarray:
    """Headerless CSV bytes (LF) of an int64 matrix; with ``time_first`` column 0 (ns) is written as s.nnnnnnnnn."""
    rows, cols = values.shape
    total = 0
    for r in range(rows):
        for c in range(cols):
            v = values[r, c]
            if c == 0 and time_first:
                total += _ndigits(v // 1000000000) + 10
            else:
                total += _ndigits(v)
        total += cols  # separators and newline
    buf = np.empty(total, np.uint8)
    pos = 0
    for r in range(rows):
        for c in range(cols):
            v = values[r, c]
            if c == 0 and time_first:
                pos = _put_int(buf, pos, v // 1000000000, 0)
                buf[pos] = 46  # '.'
                pos = _put_int(buf, pos + 1, v % 1000000000, 9)
            else:
                pos = _put_int(buf, pos, v, 0)
            buf[pos] = 44 if c < cols - 1 else 10
            pos += 1
    return buf
