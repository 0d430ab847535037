"""Benchmark the synthetic market: book events simulated per second (one core), CSV formatting, write_days.

Run: ``python benchmarks/bench_synthetic.py [--hours 6.5] [--repeats 3]``. Prints a markdown table.
``--facts``: instead, the stylized-facts table of docs/synthetic-market.md (the four presets, 5 one-hour days
each, next to the real GOOG level-10 sample when ../shared/data holds it).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from data_loaders import synthetic as syn


def _best_of(fn, repeats: int) -> tuple[float, object]:
    """Fastest wall time of ``repeats`` calls (the simulator is single-threaded: one core)."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


GOOG = Path(__file__).resolve().parents[2] / "shared/data/lobster-goog-l10-2012-06-21"


def _facts(day) -> dict:
    """day_stats plus spread quantiles (ticks of $0.01), depth per level, 10 s SWA volatility and persistence."""
    from data_loaders.lobster_stats import day_stats, swa_dollars

    st = day_stats(day)
    bp, ap = day.book_prices[:, 0, 0], day.book_prices[:, 1, 0]
    w = np.diff(day.time, append=day.time[-1])
    spread = (ap - bp) / 100.0
    order = np.argsort(spread)
    cw = np.cumsum(w[order]) / w.sum()
    q = [float(spread[order][np.searchsorted(cw, x)]) for x in (0.1, 0.5, 0.9)]
    depth = (day.book_sizes * w[:, None, None]).sum(0) / w.sum()  # (2, L) time-weighted
    grid = np.arange(np.ceil(day.time[0]) + 60, day.time[-1], 10.0)
    idx = np.searchsorted(day.time, grid, side="right") - 1
    r = np.diff(np.log(swa_dollars(day.book_prices[idx], day.book_sizes[idx])))
    g1 = np.arange(np.ceil(day.time[0]) + 60, day.time[-1], 1.0)
    i1 = np.searchsorted(day.time, g1, side="right") - 1
    r1 = np.diff(np.log(swa_dollars(day.book_prices[i1], day.book_sizes[i1])))
    both = (day.book_prices[:, 0, 0] > 0) & (day.book_prices[:, 1, 0] < 9_000_000_000)
    mid = (day.book_prices[both, 0, 0] + day.book_prices[both, 1, 0]) / 2
    return dict(
        price=(st["price_min"] + st["price_max"]) / 2,
        spread=q,
        depth_bid=st["mean_depth_bid"],
        depth_ask=st["mean_depth_ask"],
        level1=float(depth[:, 0].mean()),
        level5=float(depth[:, 4].mean()) if depth.shape[1] > 4 else float("nan"),
        level10=float(depth[:, -1].mean()),
        msgs=st["messages_per_hour"],
        execs=st["executions_per_hour"],
        exec_prices=int(np.unique(day.price[(day.event_type == 4) | (day.event_type == 5)]).size),
        vol1=st["swa_vol_1s"],
        vol10=float(r.std() * 1e4),
        ac10=float(np.corrcoef(r[:-1], r[1:])[0, 1]),
        kurt1=float(((r1 - r1.mean()) ** 4).mean() / r1.var() ** 2),
        range=float((mid.max() - mid.min()) / mid.min() * 100),
    )


def facts() -> None:
    from data_loaders.lobster import load_day

    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as d:
        for preset in ("thick", "thick-zi", "thin", "thin-zi"):
            paths = syn.write_days(Path(d) / preset, preset=preset, days=5, hours=1.0, seed=0)
            rows[f"{preset} (5 x 1 h, seed 0)"] = [_facts(load_day(p, use_cache=False)) for p in paths]
    if GOOG.is_dir():
        rows["GOOG 2012-06-21 (real, 6.5 h)"] = [_facts(load_day(next(GOOG.glob("*_message_10.csv")),
                                                                  use_cache=False))]
    print("| statistic | " + " | ".join(rows) + " |")
    print("| --- | " + " | ".join("---:" for _ in rows) + " |")

    def line(name: str, f) -> None:
        print(f"| {name} | " + " | ".join(f(v) for v in rows.values()) + " |")

    def mean(key: str, fmt: str):
        return lambda v: format(float(np.mean([r[key] for r in v])), fmt)

    line("mid price ($)", mean("price", ",.2f"))
    for i, qn in enumerate(("10%", "median", "90%")):
        line(f"spread, {qn} (ticks of $0.01, time-weighted)",
             lambda v, i=i: f"{np.mean([r['spread'][i] for r in v]):.1f}")
    line("depth on 10 levels, bid (shares)", mean("depth_bid", ",.0f"))
    line("depth on 10 levels, ask (shares)", mean("depth_ask", ",.0f"))
    levels = ("level1", "level5", "level10")
    line("depth at level 1 / 5 / 10 (shares per level)",
         lambda v: " / ".join(f"{np.mean([r[k] for r in v]):,.0f}" for k in levels))
    line("messages per hour", mean("msgs", ",.0f"))
    line("executions per hour (types 4 + 5)", mean("execs", ",.0f"))
    line("distinct execution prices per day", mean("exec_prices", ",.0f"))
    line("SWA 1 s change, s.d. ($)", mean("vol1", ".4f"))
    line("SWA 10 s log-return, s.d. (bp)", mean("vol10", ".2f"))
    line("lag-1 autocorrelation of 10 s SWA returns", mean("ac10", "+.3f"))
    line("kurtosis of 1 s SWA log-returns (3 = normal)", mean("kurt1", ".1f"))
    line("mid-price range over the session (%)", mean("range", ".2f"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--hours", type=float, default=6.5, help="session length simulated per run")
    ap.add_argument("--repeats", type=int, default=3, help="runs per row; the fastest is reported")
    ap.add_argument("--facts", action="store_true", help="print the stylized-facts table instead")
    args = ap.parse_args()
    if args.facts:
        facts()
        return

    syn.simulate_raw(syn.PRESETS["thin"], "2019-09-03", 0.01, 0)  # JIT warm-up (cache load)
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print("| preset | mode | book events | messages | seconds | events / s | messages / s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for preset in ("thick", "thin"):
        for all_messages in (False, True):
            cfg = syn.PRESETS[preset]
            sec, (m, b, n_ev) = _best_of(
                lambda cfg=cfg, a=all_messages: syn.simulate_raw(cfg, "2019-09-03", args.hours, 0, 10, a),
                args.repeats,
            )
            mode = "every event" if all_messages else "LOBSTER window"
            print(f"| {preset} | {mode} | {n_ev:,} | {len(m):,} | {sec:.3f} | {n_ev / sec / 1e6:.2f} M | "
                  f"{len(m) / sec / 1e6:.2f} M |")

    m, b, _ = syn.simulate_raw(syn.PRESETS["thick"], "2019-09-03", args.hours, 0)
    sec, (mb, bb) = _best_of(lambda: syn.to_csv_bytes(m, b), args.repeats)
    mbytes = (len(mb) + len(bb)) / 1e6
    print(f"\nCSV formatting (thick, {len(m):,} rows, message + 10-level orderbook): {sec:.3f} s, "
          f"{len(m) / sec / 1e6:.2f} M rows/s, {mbytes / sec:.0f} MB/s")
    with tempfile.TemporaryDirectory() as d:
        sec, _ = _best_of(lambda: syn.write_days(d, preset="thick", days=5, hours=1.0, seed=0), args.repeats)
    print(f"write_days(preset='thick', days=5, hours=1) (the demo's call): {sec:.2f} s")



if __name__ == "__main__":
    main()
