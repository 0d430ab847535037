"""Training step time of the README's LSTM with advsim's automatic thread count vs torch's default thread count.

Usage: python benchmarks/bench_threads.py [--rounds 3] [--steps 4] [--burn 0]
(run it WITHOUT OMP_NUM_THREADS / MKL_NUM_THREADS set, or torch's default is what they say).

The README's `advsim lob train --data data/thick --model lstm --preset small`: 0.01 s grid, 60 s window (6,000
steps), batch 256, the small LSTM, Adam. One process alternates the two settings round by round (same number of
steps each): "auto" = data_loaders.runtime.set_threads(0), re-chosen at the start of every round as a command
would (cores minus the 1-minute load average, at least 1); "torch default" = the thread count torch chose at
start-up. A step = sample a batch (SWA windows + labels) + forward + backward + Adam. ``--burn N`` starts N
busy-looping processes for the duration, to load an idle machine. Prints one markdown row per round and the
means, with the load average.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time

import numpy as np
import torch

TORCH_DEFAULT = torch.get_num_threads()


def _burn(stop) -> None:  # noqa: ANN001 - an Event
    x = 0
    while not stop.is_set():
        x = (x * 1103515245 + 12345) % 2**31


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="timed training steps per setting and round")
    ap.add_argument("--burn", type=int, default=0, help="busy processes to start for the duration")
    args = ap.parse_args()

    from data_loaders.runtime import available_cores, set_threads
    from data_loaders.synthetic import write_days
    from lobsim.dataset import FeatureConfig, Market
    from lobsim.features import Normalizer
    from lobsim.models import build_model
    from lobsim.train import default_config

    feats = FeatureConfig()  # the README's: dt 0.01 s, window 60 s, horizon 10 s
    cfg = default_config("lstm", "small", feats)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_days(tmp, "thick", days=2, hours=0.3, seed=0)
        market = Market.from_paths(paths, dt=feats.dt, features=feats)
    rng = np.random.default_rng(0)
    tau = market.fit_tau()
    norm = Normalizer.fit(market.swa_windows(*market.sample_train(1024, rng)))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def step() -> None:
        d, s = market.sample_train(cfg.batch, rng)
        x = torch.from_numpy(norm.numpy(market.swa_windows(d, s)))
        y = torch.from_numpy(market.labels(d, s, tau))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    stop = mp.Event()
    burners = [mp.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.burn)]
    for p in burners:
        p.start()
    try:
        step()  # warm-up (JIT, allocator)
        rows: dict[str, list[float]] = {"auto": [], "torch default": []}
        print(f"cores available {available_cores()}, torch default threads {TORCH_DEFAULT}, burners {args.burn}, "
              f"batch {cfg.batch}, window {feats.window}")
        print("| round | setting | threads | load (1 min) | s / step |")
        print("|---|---|---|---|---|")
        for r in range(args.rounds):
            for name in ("auto", "torch default") if r % 2 == 0 else ("torch default", "auto"):
                n = set_threads(0) if name == "auto" else set_threads(TORCH_DEFAULT)
                load = os.getloadavg()[0]
                t = time.perf_counter()
                for _ in range(args.steps):
                    step()
                dt = (time.perf_counter() - t) / args.steps
                rows[name].append(dt)
                print(f"| {r + 1} | {name} | {n} | {load:.1f} | {dt:.2f} |", flush=True)
        for name, ts in rows.items():
            print(f"mean {name}: {np.mean(ts):.2f} s / step (min {np.min(ts):.2f}, max {np.max(ts):.2f})")
    finally:
        stop.set()
        for p in burners:
            p.join(timeout=5)


if __name__ == "__main__":
    main()
