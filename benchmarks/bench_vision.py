"""Vision benchmarks, measured side by side in one run: cost of one training step per defense relative to standard
training, device-side augmentation throughput, and dataset loading times.

    python benchmarks/bench_vision.py                      # CPU: small model on 8x8 digits-sized batches
    python benchmarks/bench_vision.py --device cuda --model preact18 --size 32 --channels 3 --batch 512 --amp bf16

Prints a markdown table; ``--json PATH`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from data_loaders.images import default_data_dir, load_images
from vision.augment import augment
from vision.defenses.fast import FastTraining
from vision.defenses.loop import amp_dtype
from vision.defenses.pgd_training import PGDTraining
from vision.defenses.standard import StandardTraining
from vision.defenses.trades import TradesTraining
from vision.models import build_model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_defense(defense, model, x, y, opt, steps: int, dtype, device: str) -> float:
    """Seconds per training step (attack + forward + backward + optimizer), median of ``steps`` after 2 warm-ups."""
    times = []
    for i in range(steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss, _ = defense(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="mnist_small")
    ap.add_argument("--size", type=int, default=28, help="image side")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per defense")
    ap.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    ap.add_argument("--skip-loaders", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = args.device
    torch.manual_seed(0)
    model = build_model(args.model, 10, args.channels, args.size).to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    dtype = amp_dtype(args.amp, dev)
    eps = 8 / 255
    defenses = {"standard": StandardTraining(), "fast (FGSM-RS)": FastTraining(eps),
                "pgd-7": PGDTraining(eps, 2 / 255, 7), "trades-10": TradesTraining(eps, 2 / 255, 10)}
    rows = {name: time_defense(d, model, x, y, opt, args.steps, dtype, dev) for name, d in defenses.items()}
    base = rows["standard"]

    xu8 = torch.randint(0, 256, (args.batch * 8, 3, 32, 32), dtype=torch.uint8, device=dev)
    augment(xu8, 4, True)
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(5):
        augment(xu8, 4, True)
    _sync(dev)
    aug_rate = 5 * len(xu8) / (time.perf_counter() - t0)

    loaders = {}
    if not args.skip_loaders:
        for label, name, root, split in [
            ("digits (sklearn)", "digits", None, "train"),
            ("MNIST train IDX .gz (60k)", "mnist", default_data_dir() / "mnist", "train"),
            ("CIFAR-10 lossless PNG subset test (1k)", "cifar10", default_data_dir() / "cifar10-convnetjs-png-subset",
             "test"),
            ("CIFAR-10 JPEG tar.gz train (50k)", "cifar10",
             default_data_dir() / "cifar10-jpeg-q75" / "CIFAR-10-images.tar.gz", "train"),
        ]:
            if root is not None and not Path(root).exists():
                continue
            t0 = time.perf_counter()
            n = len(load_images(name, root, split))
            loaders[label] = (n, time.perf_counter() - t0)

    machine = (torch.cuda.get_device_name() if dev.startswith("cuda")
               else f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"machine: {machine}; model {args.model} {args.channels}x{args.size}x{args.size}, batch {args.batch}, "
          f"amp {dtype}")
    print("\n| defense | s / step | x standard |\n| --- | --- | --- |")
    for name, t in rows.items():
        print(f"| {name} | {t:.4f} | {t / base:.2f} |")
    print(f"\naugmentation (crop pad 4 + flip, uint8 3x32x32): {aug_rate:,.0f} images/s")
    if loaders:
        print("\n| loader | images | seconds |\n| --- | --- | --- |")
        for label, (n, t) in loaders.items():
            print(f"| {label} | {n:,} | {t:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "step_seconds": rows,
                                               "augment_images_per_s": aug_rate, "loaders": loaders}, indent=2))


if __name__ == "__main__":
    main()
