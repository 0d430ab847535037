"""Benchmark: ingest + check + resample one LOBSTER day (default: the full GOOG level-10 day), side by side with a
plain pandas read_csv + Python dict reconstruction, and the PyPI package lobster-reconstructor if installed.

    python benchmarks/bench_ingest.py [--data FOLDER_OR_ZIP] [--prefix N] [--repeat 3]

Prints a markdown table (medians over --repeat runs; min in brackets). Numba kernels are compiled (and cached
on disk) before timing; the first-call cost in a fresh process is printed separately.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_loaders.lobster import EMPTY_ASK, EMPTY_BID, find_days, load_day  # noqa: E402
from lobsim.book import rebuild, resample  # noqa: E402

DEFAULT = REPO.parent / "shared" / "data" / "lobster-goog-l10-2012-06-21"


def timed(fn, repeat: int) -> tuple[float, float, object]:
    ts, out = [], None
    for _ in range(repeat):
        out = None  # free the previous result outside the timed region
        t = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts), min(ts), out


def python_reference(msg: pd.DataFrame, ob: pd.DataFrame, L: int, n: int) -> int:
    """Straightforward sequential rebuild with one dict price->size per side; returns the number of bad rows."""
    rows = ob.to_numpy()[:n].tolist()
    m = msg.to_numpy()[:n].tolist()

    def side_of(row: list, s: int) -> dict:
        off = 2 if s == 0 else 0
        empty = EMPTY_BID if s == 0 else EMPTY_ASK
        return {int(row[4 * j + off]): int(row[4 * j + off + 1]) for j in range(L) if row[4 * j + off] != empty}

    book = [side_of(rows[0], 0), side_of(rows[0], 1)]
    bad = 0
    for k in range(1, n):
        _, et, _, size, price, direction = m[k]
        s = 0 if direction == 1 else 1
        was_full = [len(book[0]) == L, len(book[1]) == L]
        d = book[s]
        if et == 1:
            d[price] = d.get(price, 0) + size
        elif et in (2, 3, 4) and price in d:
            d[price] -= size
            if d[price] == 0:
                del d[price]
        for side in (0, 1):
            levels = sorted(book[side].items(), reverse=(side == 0))[:L]
            file_side = sorted(side_of(rows[k], side).items(), reverse=(side == 0))
            known = len(levels)
            if file_side[:known] != levels or (len(file_side) > known and not was_full[side]):
                bad += 1
            book[side] = dict(file_side[:known] + (file_side[known:] if was_full[side] else []))
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT), help="LOBSTER folder/zip/message csv (default: GOOG L10 day)")
    ap.add_argument("--prefix", type=int, default=0, help="Python/lobster-reconstructor references on the first N "
                    "messages only (0 = whole day)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (median reported)")
    args = ap.parse_args()

    t = time.perf_counter()
    small = load_day(REPO.parent / "shared" / "data" / "lobster-aapl-l10-2012-06-21-first999", use_cache=False) \
        if (REPO.parent / "shared" / "data" / "lobster-aapl-l10-2012-06-21-first999").exists() else None
    if small is not None:
        rebuild(small)
        resample(small)
    print(f"first call (imports + Numba cache load): {time.perf_counter() - t:.2f} s")

    R = args.repeat
    load_med, load_min, day = timed(lambda: load_day(args.data, use_cache=False), R)
    n = day.n_rows
    reb_med, reb_min, rep = timed(lambda: rebuild(day), max(R, 5))
    res_med, res_min, g = timed(lambda: resample(day, dt=0.01), R)
    del g
    with tempfile.TemporaryDirectory() as cache:
        load_day(args.data, cache_dir=cache)
        cache_med, cache_min, _ = timed(lambda: load_day(args.data, cache_dir=cache), R)

    # reference: pandas read_csv + Python dict rebuild (+ pandas ffill resample)
    pair = find_days(args.data)[0] if Path(args.data).is_dir() else None
    mpath = pair.message if pair else args.data
    opath = pair.orderbook if pair else None
    pd_med, pd_min, (msg, ob) = timed(lambda: (pd.read_csv(mpath, header=None), pd.read_csv(opath, header=None)), R)
    nref = n if args.prefix <= 0 else min(args.prefix, n)
    t = time.perf_counter()
    bad = python_reference(msg, ob, day.levels, nref)
    py_s = time.perf_counter() - t

    def pandas_resample():
        times = day.time
        df = pd.DataFrame(ob.to_numpy(), index=times)
        df = df[~df.index.duplicated(keep="last")]
        start = np.ceil(times[0] / 0.01) * 0.01
        grid = start + np.arange(int((times[-1] - start) / 0.01 + 1e-9) + 1) * 0.01
        return df.reindex(grid, method="ffill")

    pres_med, pres_min, _ = timed(pandas_resample, 1)

    lr = "not installed"
    try:
        from lobster_reconstructor import LobsterSim, Orderbook

        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            sim = LobsterSim(Orderbook(nlevels=day.levels, ticker=day.ticker, tick_size=0.01), mpath, opath)
            t_load = time.perf_counter() - t
            t = time.perf_counter()
            sim.simulate_until(float(day.time[nref - 1]))
        t_sim = time.perf_counter() - t
        lr = (f"read {t_load:.2f} s; replay of {sim._last_idx:,} messages {t_sim:.2f} s = "
              f"{sim._last_idx / t_sim:,.0f} msg/s (starts from an empty book; no row-by-row check)")
    except ImportError:
        pass

    total = load_med + reb_med + res_med
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs; day: "
          f"{day.ticker} {day.date} L{day.levels}, {n:,} messages, grid {int((day.time[-1] - day.time[0]) / 0.01):,}"
          " steps of 0.01 s")
    print()
    print("| step | advsim | reference |")
    print("| --- | --- | --- |")
    print(f"| read + validate both CSVs (no cache) | {load_med:.3f} s [{load_min:.3f}] | pandas read_csv (no checks) "
          f"{pd_med:.3f} s [{pd_min:.3f}] |")
    print(f"| rebuild + check every row | {reb_med * 1e3:.1f} ms [{reb_min * 1e3:.1f}] = "
          f"{n / reb_med / 1e6:.1f} M msg/s | Python dicts: {py_s:.2f} s for {nref:,} msgs = "
          f"{nref / py_s / 1e3:.0f} k msg/s ({bad} bad rows) |")
    print(f"| resample to 0.01 s | {res_med:.3f} s [{res_min:.3f}] | pandas reindex ffill {pres_med:.3f} s |")
    print(f"| total ingest + check + resample | {total:.3f} s | |")
    print(f"| second load from parquet cache | {cache_med:.3f} s [{cache_min:.3f}] | |")
    print(f"| lobster-reconstructor 0.1.3 | | {lr} |")
    print()
    print(f"rebuild report: {rep.describe()}")


if __name__ == "__main__":
    main()
