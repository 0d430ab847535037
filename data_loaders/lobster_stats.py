"""Summary statistics of a LobsterDay (used by ``advsim data inspect`` and to compare synthetic days with GOOG)."""

from __future__ import annotations

import numpy as np

from data_loaders.lobster import HALT, LobsterDay, format_clock, level_mask


def _time_weights(time: np.ndarray) -> np.ndarray:
    """Seconds each book row is in force (until the next message); the last row gets 0."""
    w = np.zeros(time.shape, np.float64)
    w[:-1] = np.diff(time)
    return w


def _weighted_mean(x: np.ndarray, w: np.ndarray, valid: np.ndarray) -> float:
    ww = w * valid
    total = ww.sum()
    if total > 0:
        return float((x * ww).sum() / total)
    return float(x[valid].mean()) if valid.any() else float("nan")


def swa_dollars(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Size-weighted average price in dollars over both sides and all levels of (..., 2, L) books (NaN if empty)."""
    m = level_mask(prices)
    s = np.where(m, sizes, 0).astype(np.float64)
    num = (np.where(m, prices, 0).astype(np.float64) * s).sum(axis=(-2, -1))
    den = s.sum(axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den / 1e4, np.nan)


def day_stats(day: LobsterDay) -> dict:
    """Plain-JSON statistics of one day.

    Means over time are time-weighted (each book row counts for the seconds until the next message).
    Prices and spreads are in dollars; depth is total shares on the top L levels of one side.
    ``swa_vol_1s`` is the standard deviation (dollars) of the 1-second changes of the size-weighted average
    price over both sides (state sampled at the last message at or before each whole second).
    """
    t = day.time
    n = day.n_rows
    bid_p, ask_p = day.book_prices[:, 0, :], day.book_prices[:, 1, :]
    bid_s, ask_s = day.book_sizes[:, 0, :], day.book_sizes[:, 1, :]
    w = _time_weights(t)
    both = level_mask(bid_p[:, 0]) & level_mask(ask_p[:, 0])
    spread = np.where(both, ask_p[:, 0] - bid_p[:, 0], 0) / 1e4
    depth_bid = np.where(level_mask(bid_p), bid_s, 0).sum(axis=1).astype(np.float64)
    depth_ask = np.where(level_mask(ask_p), ask_s, 0).sum(axis=1).astype(np.float64)
    real = day.book_prices[level_mask(day.book_prices)]
    duration = float(t[-1] - t[0]) if n else 0.0
    hours = duration / 3600.0
    ex = (day.event_type == 4) | (day.event_type == 5)
    halts = np.flatnonzero(day.event_type == HALT)

    swa_vol = float("nan")
    if n and duration >= 2.0:
        grid = np.arange(np.ceil(t[0]), np.floor(t[-1]) + 1.0)
        idx = np.searchsorted(t, grid, side="right") - 1
        swa = swa_dollars(day.book_prices[idx], day.book_sizes[idx])
        d = np.diff(swa)
        d = d[np.isfinite(d)]
        if d.size > 1:
            swa_vol = float(d.std(ddof=1))

    return {
        "ticker": day.ticker,
        "date": day.date,
        "levels": int(day.levels),
        "rows": int(n),
        "start_time": float(t[0]) if n else float("nan"),
        "end_time": float(t[-1]) if n else float("nan"),
        "start_clock": format_clock(t[0]) if n else "",
        "end_clock": format_clock(t[-1]) if n else "",
        "duration_s": duration,
        "halts": int(halts.size),
        "halt_times": [float(t[i]) for i in halts],
        "halt_prices": [int(day.price[i]) for i in halts],
        "price_min": float(real.min() / 1e4) if real.size else float("nan"),
        "price_max": float(real.max() / 1e4) if real.size else float("nan"),
        "mean_spread": _weighted_mean(spread, w, both),
        "mean_depth_bid": _weighted_mean(depth_bid, w, np.ones(n, bool)),
        "mean_depth_ask": _weighted_mean(depth_ask, w, np.ones(n, bool)),
        "mean_level_sizes_bid": [_weighted_mean(np.where(level_mask(bid_p[:, j]), bid_s[:, j], 0).astype(float), w,
                                                np.ones(n, bool)) for j in range(day.levels)],
        "mean_level_sizes_ask": [_weighted_mean(np.where(level_mask(ask_p[:, j]), ask_s[:, j], 0).astype(float), w,
                                                np.ones(n, bool)) for j in range(day.levels)],
        "mean_levels_bid": float(level_mask(bid_p).sum(axis=1).mean()) if n else float("nan"),
        "mean_levels_ask": float(level_mask(ask_p).sum(axis=1).mean()) if n else float("nan"),
        "executions": int(ex.sum()),
        "executions_visible": int((day.event_type == 4).sum()),
        "executions_hidden": int((day.event_type == 5).sum()),
        "executed_volume": int(day.size[ex].sum()),
        "executions_per_hour": float(ex.sum() / hours) if hours > 0 else float("nan"),
        "messages_per_hour": float(n / hours) if hours > 0 else float("nan"),
        "event_counts": {int(k): int(v) for k, v in zip(*np.unique(day.event_type, return_counts=True))},
        "swa_vol_1s": swa_vol,
    }


# ------------------------------------------------------------------------------------- many days: one row each

DAY_COLUMNS = ("ticker", "date", "levels", "rows", "span", "hours", "executions", "exec_per_hour", "volume",
               "mean_spread", "depth_bid", "depth_ask", "price_min", "price_max", "halts")


def day_row(st: dict) -> dict:
    """The one-row summary of a day's :func:`day_stats` (the columns of ``advsim data inspect`` on many days)."""
    return {
        "ticker": st["ticker"], "date": st["date"], "levels": st["levels"], "rows": st["rows"],
        "span": f"{st['start_clock'][:8]}-{st['end_clock'][:8]}", "hours": st["duration_s"] / 3600.0,
        "executions": st["executions"], "exec_per_hour": st["executions_per_hour"],
        "volume": st["executed_volume"], "mean_spread": st["mean_spread"], "depth_bid": st["mean_depth_bid"],
        "depth_ask": st["mean_depth_ask"], "price_min": st["price_min"], "price_max": st["price_max"],
        "halts": st["halts"],
    }


def days_totals(rows: list[dict], failed: int = 0) -> dict:
    """Totals over day rows: days, tickers, dates, rows, hours, executions, volume, halts (and failed days)."""
    return {
        "days": len(rows),
        "tickers": len({r["ticker"] for r in rows}),
        "dates": len({r["date"] for r in rows}),
        "rows": int(sum(r["rows"] for r in rows)),
        "hours": float(sum(r["hours"] for r in rows)),
        "executions": int(sum(r["executions"] for r in rows)),
        "volume": int(sum(r["volume"] for r in rows)),
        "halts": int(sum(r["halts"] for r in rows)),
        "failed": int(failed),
    }


def _cell(v, spec: str) -> str:
    if isinstance(v, float) and not np.isfinite(v):
        return "-"
    return format(v, spec)


def format_days_table(rows: list[dict], totals: dict, errors: list[str] = ()) -> str:
    """A plain-text table: one line per ticker-day, then the totals (and one line per day that failed)."""
    head = ("ticker", "date", "L", "rows", "span", "hours", "execs", "execs/h", "spread $", "depth bid",
            "depth ask", "price $")
    body = [(r["ticker"], r["date"], str(r["levels"]), _cell(r["rows"], ","), r["span"], _cell(r["hours"], ".2f"),
             _cell(r["executions"], ","), _cell(r["exec_per_hour"], ",.0f"), _cell(r["mean_spread"], ".4f"),
             _cell(r["depth_bid"], ",.0f"), _cell(r["depth_ask"], ",.0f"),
             f"{_cell(r['price_min'], ',.2f')}-{_cell(r['price_max'], ',.2f')}") for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(head, widths)))]
    lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(b, widths)))
              for b in body]
    t = totals
    lines.append(f"total: {t['days']} day(s), {t['tickers']} ticker(s), {t['dates']} date(s), {t['rows']:,} rows, "
                 f"{t['hours']:,.2f} hours, {t['executions']:,} executions, volume {t['volume']:,}, "
                 f"{t['halts']} halt(s)" + (f", {t['failed']} day(s) FAILED" if t["failed"] else ""))
    lines += [f"failed: {msg}" for msg in errors]
    return "\n".join(lines)
