"""Sweep throughput and per-cell cost: cells/minute at 1 and 2 local Ray workers, memory and data per cell.

Usage: python benchmarks/bench_sweep.py [--days 4] [--hours 0.5] [--n 32] [--max-iter 60] [--repeats 2]
       [--dt 0.1 --window 60 --horizon 10] [--out runs/bench-sweep] [--no-ray]

Writes synthetic thick days and trains a Linear and an MLP model (small preset) once, then runs the same sweep
(days x 2 models x {capital, random} attacks, budgets inside each cell) on fresh sweep folders, alternating
1 and 2 local Ray workers (and the in-process runner) for the same number of runs. Each timed sweep follows a
warm-up sweep on the same Ray session (workers imported advsim and loaded the cached Numba kernels), so
cells/minute is the steady rate; the start-up (``ray.init`` + first cell per worker) is reported separately.
Then, in fresh processes: the memory one capital cell adds (resident set after imports vs peak after the cell)
and the CPU time of its parts (load from the parquet cache, resample, SWA, snippets). Prints markdown
tables and writes OUT/bench.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _config(out: Path, args: argparse.Namespace, days: str, n_days: int | None = None) -> Path:
    data = f'["{days}"]' if n_days is None else json.dumps(sorted(str(p) for p in Path(days).glob("*_message_*"))
                                                             [:n_days])
    text = f"""
name = "bench"
seed = 0
[[markets]]
name = "thick"
data = {data}
[[models]]
name = "linear"
run = "{out / 'runs' / 'linear'}"
[[models]]
name = "mlp"
run = "{out / 'runs' / 'mlp'}"
[[attacks]]
kind = "capital"
budgets = [1e4, 1e5, 1e6]
n = {args.n}
max_iter = {args.max_iter}
step_shares = 3.0
[[attacks]]
kind = "random"
budgets = [1e5, 1e6]
n = {args.n}
[run]
threads_per_cell = 1
gpus_per_cell = 0
"""
    path = out / ("bench.toml" if n_days is None else f"warm{n_days}.toml")
    path.write_text(text)
    return path


def _prepare(out: Path, args: argparse.Namespace) -> None:
    import torch

    from data_loaders.synthetic import write_days
    from lobsim.dataset import FeatureConfig, Market
    from lobsim.train import default_config, train

    torch.set_num_threads(1)
    data = out / "data"
    if not data.is_dir():
        write_days(data, "thick", days=args.days, hours=args.hours, seed=0)
    paths = sorted(str(p) for p in data.glob("*_message_*"))
    f = FeatureConfig(dt=args.dt, window_s=args.window, horizon_s=args.horizon)
    market = Market.from_paths(paths, dt=f.dt, features=f)
    dcfg = {"paths": paths, "dt": f.dt, "start": None, "end": None, "split": "auto", "train_fraction": 0.8}
    for i, kind in enumerate(("linear", "mlp")):
        if not (out / "runs" / kind / "model.json").is_file():
            cfg = default_config(kind, "small", f, steps=args.train_steps, batch=64, seed=i, data=dcfg)
            train(cfg, market, out / "runs" / kind, progress=False, resume=False)


def _sweep(out: Path, args: argparse.Namespace, runner: str, workers: int, tag: str) -> dict:
    """Warm-up sweep (one cell per worker), then the timed sweep on the same runner session."""
    import shutil

    from lobsim.sweep import cell, run_sweep

    cell._market.cache_clear()  # every runner starts without resampled days or models in memory
    cell._cached_model.cache_clear()
    ray = None
    t0 = time.perf_counter()
    if runner == "ray":
        import ray

        ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        warm_dir = out / f"sweep-warm-{tag}"
        shutil.rmtree(warm_dir, ignore_errors=True)
        warm_cfg = _config(out, args, str(out / "data"), n_days=1)
        run_sweep(warm_cfg, warm_dir, runner=runner, progress=False, max_cells=workers)
        startup = time.perf_counter() - t0
        sweep_dir = out / f"sweep-{tag}"
        shutil.rmtree(sweep_dir, ignore_errors=True)
        t = time.perf_counter()
        s = run_sweep(_config(out, args, str(out / "data")), sweep_dir, runner=runner, progress=False)
        wall = time.perf_counter() - t
    finally:
        if ray is not None:
            ray.shutdown()
    assert s.failed == 0, f"{s.failed} cells failed in {sweep_dir}"
    import pandas as pd

    t = pd.read_csv(sweep_dir / "timings.csv")
    return {"runner": runner, "workers": workers, "cells": s.cells, "seconds": wall, "startup_s": startup,
            "cell_wall_s_mean": float(t.seconds.mean()), "cell_cpu_s_mean": float(t.cpu_seconds.mean()),
            "cells_per_min": 60.0 * s.cells / wall, "csv": (sweep_dir / "results.csv").read_bytes().hex()[:64]}


_CHILD = r"""
import json, os, sys, threading, time
sys.path.insert(0, {repo!r})
os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
import torch
from lobsim.sweep import cell as C
from lobsim.sweep.cell import _rss_mb
torch.set_num_threads(1)
warm, cell = json.loads({warm!r}), json.loads({cell!r})
assert C.execute(warm)["ok"]  # imports, cached Numba kernels, first torch calls: not part of a cell's cost
C._market.cache_clear()
C._cached_model.cache_clear()
parts = {{}}
from data_loaders.lobster import load_day
from lobsim.book import resample
from lobsim.dataset import session_window, Market
t = time.process_time(); day = load_day(cell["day"]["path"]); parts["load_cached_day_s"] = time.process_time() - t
model = C._model(cell["run_dir"], "cpu")
d = model.config.data
t = time.process_time(); s, e = session_window(day.time, d.get("start"), d.get("end"))
book = resample(day, dt=model.config.features.dt, start=s, end=e); parts["resample_s"] = time.process_time() - t
t = time.process_time(); m = Market([book], model.config.features, split="time")
parts["market_swa_s"] = time.process_time() - t
t = time.process_time(); batch = m.batch(*m.test_refs(cell["attack"]["n"], seed=1), model.tau)
parts["snippets_s"] = time.process_time() - t
del day, book, m, batch
C._market.cache_clear()
C._cached_model.cache_clear()
import gc; gc.collect()
base = _rss_mb()
peak = [base]
stop = threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], _rss_mb())
        time.sleep(0.002)
th = threading.Thread(target=sample); th.start()
res = C.execute(cell)
stop.set(); th.join()
assert res["ok"], res.get("error")
print(json.dumps({{"rss_before_mb": base, "peak_rss_mb": max(peak[0], _rss_mb()),
                  "cell_seconds": res["resources"]["seconds"], "cell_cpu_seconds": res["resources"]["cpu_seconds"],
                  "info": res["info"], "parts": parts}}))
"""


def _one_cell(out: Path, args: argparse.Namespace, kind: str) -> dict:
    """Time and memory of one cell of ``kind`` in a fresh process, after a warm-up cell on another day."""
    from lobsim.sweep import load_config, plan_sweep

    _, _, cells = plan_sweep(load_config(_config(out, args, str(out / "data"))), out / "sweep-plan")
    mine = [c for c in cells if c.attack["kind"] == kind and c.model == "mlp"]
    warm, cell = mine[0].to_dict(), mine[-1].to_dict()
    code = _CHILD.format(repo=str(REPO), warm=json.dumps(warm), cell=json.dumps(cell))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=4)
    ap.add_argument("--hours", type=float, default=0.5)
    ap.add_argument("--dt", type=float, default=0.1)
    ap.add_argument("--window", type=float, default=60.0)
    ap.add_argument("--horizon", type=float, default=10.0)
    ap.add_argument("--n", type=int, default=32, help="test snippets per cell")
    ap.add_argument("--max-iter", type=int, default=60)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="runs/bench-sweep")
    ap.add_argument("--no-ray", action="store_true", help="only the in-process runner")
    ap.add_argument("--cells-only", action="store_true", help="skip the sweeps; only the per-cell measurements")
    args = ap.parse_args()
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[k] = "1"  # inherited by the Ray workers started below
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    _prepare(out, args)
    try:
        import ray  # noqa: F401

        has_ray = not args.no_ray
    except ImportError:
        has_ray = False
    plan = [("local", 1)] + ([("ray", 1), ("ray", 2)] if has_ray else [])
    runs = []
    for rep in range(0 if args.cells_only else args.repeats):
        for runner, w in plan:
            r = _sweep(out, args, runner, w, f"{runner}{w}-{rep}")
            runs.append(r)
            print(f"repeat {rep}: {runner} x{w}: {r['cells']} cells in {r['seconds']:.1f} s = "
                  f"{r['cells_per_min']:.1f} cells/min (start-up {r['startup_s']:.1f} s)", flush=True)
    same = len({r["csv"] for r in runs}) == 1 if runs else None
    cells = {kind: _one_cell(out, args, kind) for kind in ("capital", "random")}
    load = os.getloadavg()
    result = {"args": vars(args), "runs": runs, "same_table": same, "cells": cells, "loadavg": load,
              "cpus": os.cpu_count()}
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    print(f"\nmachine: {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1/5/15 min)")
    print(f"grid dt={args.dt} s, window {args.window:g} s, {args.days} days x {args.hours:g} h, n={args.n}, "
          f"max_iter={args.max_iter}; identical results table in every run: {same}\n")
    if runs:
        print("| runner | workers | cells | median s | cells/min (median) | start-up s (median) | wall s per cell "
              "| CPU s per cell |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    import statistics

    for runner, w in plan if runs else []:
        rs = [r for r in runs if (r["runner"], r["workers"]) == (runner, w)]
        med = statistics.median(r["seconds"] for r in rs)
        print(f"| {runner} | {w} | {rs[0]['cells']} | {med:.1f} | {60 * rs[0]['cells'] / med:.1f} | "
              f"{statistics.median(r['startup_s'] for r in rs):.1f} | "
              f"{statistics.median(r['cell_wall_s_mean'] for r in rs):.2f} | "
              f"{statistics.median(r['cell_cpu_s_mean'] for r in rs):.2f} |")
    print("\n| cell | wall s | CPU s | worker RSS before MiB | peak during the cell MiB | added MiB | source MB "
          "| grid MB | snippets MB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, c in cells.items():
        i, before, peak = c["info"], c["rss_before_mb"], c["peak_rss_mb"]
        print(f"| {kind} (mlp) | {c['cell_seconds']:.2f} | {c['cell_cpu_seconds']:.2f} | {before:.0f} | {peak:.0f} | "
              f"{peak - before:.0f} | {i['source_bytes'] / 1e6:.1f} | {i['grid_bytes'] / 1e6:.1f} | "
              f"{i['batch_bytes'] / 1e6:.2f} |")
    p = cells["capital"]["parts"]
    print("\nparts of a capital cell (CPU s): " + ", ".join(f"{k} {v:.3f}" for k, v in p.items()))


if __name__ == "__main__":
    main()
