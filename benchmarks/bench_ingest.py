"""Benchmark: ingest + check + resample one LOBSTER day (default: the full GOOG level-10 day), side by side with a
plain pandas read_csv + Python dict reconstruction, and the PyPI package lobster-reconstructor if installed.

    python benchmarks/bench_ingest.py [--data FOLDER_OR_ZIP] [--prefix N] [--repeat 3]

Prints a markdown table: every comparison runs both sides --repeat times, alternated, in this process, and reports
the median (min in brackets) of each side. Numba kernels are compiled (and cached on disk) before timing; the
first-call cost in a fresh process is printed separately.
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

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from data_loaders.lobster import EMPTY_ASK, EMPTY_BID, find_days, load_day  # noqa: E402
from lobsim.book import rebuild, resample  # noqa: E402

DEFAULT = REPO.parent / "shared" / "data" / "lobster-goog-l10-2012-06-21"


def alternate(fns: dict[str, object], repeat: int) -> dict[str, tuple[float, float, object]]:
    """Run every function ``repeat`` times, alternated (a, b, a, b, ...), in this process; per function the
    (median, min, last result) of its wall times. Both sides of a comparison are timed the same way."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    last: dict[str, object] = {}
    for _ in range(repeat):
        for k, fn in fns.items():
            last[k] = None  # free the previous result outside the timed region
            t = time.perf_counter()
            last[k] = fn()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(v), min(v), last[k]) for k, v in times.items()}


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
    pair = find_days(args.data)[0] if Path(args.data).is_dir() else None
    mpath = pair.message if pair else args.data
    opath = pair.orderbook if pair else None
    res = alternate({"advsim": lambda: load_day(args.data, use_cache=False),
                     "pandas": lambda: (pd.read_csv(mpath, header=None), pd.read_csv(opath, header=None))}, R)
    load_med, load_min, day = res["advsim"]
    pd_med, pd_min, (msg, ob) = res["pandas"]
    n = day.n_rows
    nref = n if args.prefix <= 0 else min(args.prefix, n)
    res = alternate({"advsim": lambda: rebuild(day), "python": lambda: python_reference(msg, ob, day.levels, nref)},
                    R)
    reb_med, reb_min, rep = res["advsim"]
    py_med, py_min, bad = res["python"]

    grid_times = resample(day, dt=0.01).times  # both sides resample onto the same grid

    def pandas_resample():
        df = pd.DataFrame(ob.to_numpy(), index=day.time)
        return df[~df.index.duplicated(keep="last")].reindex(grid_times, method="ffill")

    res = alternate({"advsim": lambda: resample(day, dt=0.01), "pandas": pandas_resample}, R)
    res_med, res_min, _ = res["advsim"]
    pres_med, pres_min, _ = res["pandas"]
    del res
    with tempfile.TemporaryDirectory() as cache:
        load_day(args.data, cache_dir=cache)
        cache_med, cache_min, _ = alternate({"cache": lambda: load_day(args.data, cache_dir=cache)}, R)["cache"]

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
    ref_total = pd_med + py_med + pres_med
    print()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, load "
          f"{os.getloadavg()[0]:.1f}; day: {day.ticker} {day.date} L{day.levels}, {n:,} messages, grid "
          f"{len(grid_times):,} steps of 0.01 s; every row: median of {R} runs per side, alternated, [min]")
    print()
    print("| step | advsim | reference | ratio |")
    print("| --- | --- | --- | --- |")
    print(f"| read + validate both CSVs (no cache) | {load_med:.3f} s [{load_min:.3f}] | pandas read_csv (no checks) "
          f"{pd_med:.3f} s [{pd_min:.3f}] | {pd_med / load_med:.1f}x |")
    print(f"| rebuild + check every row | {reb_med * 1e3:.1f} ms [{reb_min * 1e3:.1f}] = "
          f"{n / reb_med / 1e6:.1f} M msg/s | Python dicts: {py_med:.2f} s [{py_min:.2f}] for {nref:,} msgs = "
          f"{nref / py_med / 1e3:.0f} k msg/s ({bad} bad rows) | {py_med / reb_med * n / nref:,.0f}x |")
    print(f"| resample to 0.01 s | {res_med:.3f} s [{res_min:.3f}] | pandas reindex ffill {pres_med:.3f} s "
          f"[{pres_min:.3f}] | {pres_med / res_med:.1f}x |")
    print(f"| total ingest + check + resample | {total:.3f} s | {ref_total:.2f} s | {ref_total / total:.1f}x |")
    print(f"| second load from parquet cache | {cache_med:.3f} s [{cache_min:.3f}] | | |")
    print(f"| lobster-reconstructor 0.1.3 | | {lr} | |")
    print()
    print(f"rebuild report: {rep.describe()}")


if __name__ == "__main__":
    main()
