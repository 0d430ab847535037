"""Training throughput: batch sampling (SWA windows + labels) vs model step, per model and preset.

Usage: python benchmarks/bench_training.py [--preset small] [--batch 256] [--steps 30] [--device auto]
Simulates two short synthetic days (thick preset), then times, side by side in one run, per model:
sampling a batch (day, start -> SWA windows -> normalised float32 + labels) and one optimiser step
(forward, backward, Adam). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def _time(fn, n: int, sync) -> float:
    fn()  # warm-up
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync()
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small", choices=["small", "paper"])
    ap.add_argument("--batch", type=int, default=None, help="default: 256 small, 2000 paper")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args()

    from data_loaders.rundir import resolve_device
    from data_loaders.synthetic import write_days
    from lobsim.dataset import FeatureConfig, Market
    from lobsim.features import Normalizer
    from lobsim.models import ModelConfig, build_model, count_parameters

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    batch = args.batch or (256 if args.preset == "small" else 2000)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_days(tmp, "thick", days=2, hours=0.25, seed=0)
        market = Market.from_paths(paths)
    feats: FeatureConfig = market.features
    rng = np.random.default_rng(0)
    tau = market.fit_tau()
    norm = Normalizer.fit(market.swa_windows(*market.sample_train(1024, rng)))

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        d, s = market.sample_train(batch, rng)
        x = torch.from_numpy(norm.numpy(market.swa_windows(d, s))).to(device)
        y = torch.from_numpy(market.labels(d, s, tau)).to(device)
        return x, y

    t_sample = _time(sample, args.steps, sync)
    x, y = sample()
    print(f"device {device}, torch threads {torch.get_num_threads()}, batch {batch}, window {feats.window}")
    print("| model | preset | parameters | sample batch (ms) | optimiser step (ms) | steps/s |")
    print("|---|---|---|---|---|---|")
    for kind in ("linear", "mlp", "lstm"):
        torch.manual_seed(0)
        model = build_model(ModelConfig(kind=kind, preset=args.preset, window=feats.window)).to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)

        def step(model: torch.nn.Module = model, opt: torch.optim.Optimizer = opt) -> None:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        t_step = _time(step, args.steps, sync)
        print(f"| {kind} | {args.preset} | {count_parameters(model):,} | {1e3 * t_sample:.1f} | {1e3 * t_step:.1f} | "
              f"{1 / (t_sample + t_step):.1f} |")


if __name__ == "__main__":
    main()
