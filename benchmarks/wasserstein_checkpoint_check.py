"""Attack a published MNIST checkpoint of the WK17 network with advsim's Wasserstein PGD (thesis settings).

    python benchmarks/wasserstein_checkpoint_check.py CHECKPOINT.pth [--n 500] [--clamp] [--kernel 5] [--p 1]

Checks the attack, not a model of ours: on the network the thesis attacked, the success-vs-radius curve should
match or beat the published one (Fig. 5.3: about 50% at eps 0.5, about 94% at 1.0). The file is read with
``torch.load(weights_only=True)`` (tensors and plain containers only; no code is unpickled). Accepted layouts: a
state dict of the Conv(1,16,4,2,1)-ReLU-Conv(16,32,4,2,1)-ReLU-Flatten-Linear(1568,100)-ReLU-Linear(100,10)
network, or one under ``net`` / ``state_dict[0]``, with or without a ``module.`` prefix. MNIST comes from
``data_loaders.images`` (the Debian dataset-fashion-mnist / mnist packages or --root).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import nn

from data_loaders.images import load_images
from vision.models import mnist_small
from vision.wasserstein.attack import WassersteinPGD, success_curve

GRID = [0.1, 0.3, 0.5, 0.7, 1.0, 1.5]


def wk17_net() -> nn.Sequential:
    """The WK17 MNIST network (advsim's ``mnist_small``, raw pixels): its layer order is the checkpoints' one."""
    return mnist_small()


def load_checkpoint(path: Path) -> nn.Sequential:
    """The network with the checkpoint's weights; a clear error for anything else."""
    try:
        d = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any failure means "not a plain tensor checkpoint"
        raise SystemExit(f"{path}: not a weights-only torch checkpoint ({type(exc).__name__}: {exc})") from None
    sd = d.get("net") if isinstance(d, dict) and "net" in d else d
    if isinstance(sd, dict) and "state_dict" in sd:
        sd = sd["state_dict"][0] if isinstance(sd["state_dict"], (list, tuple)) else sd["state_dict"]
    if not isinstance(sd, dict):
        raise SystemExit(f"{path}: no state dict inside (found {type(sd).__name__})")
    net = wk17_net()
    try:
        net.load_state_dict({k.removeprefix("module."): v for k, v in sd.items()})
    except RuntimeError as exc:
        raise SystemExit(f"{path}: not the WK17 MNIST network: {str(exc).splitlines()[0]}") from None
    return net.eval()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--n", type=int, default=500, help="first N MNIST test images")
    ap.add_argument("--root", default=None)
    ap.add_argument("--kernel", type=int, default=5)
    ap.add_argument("--p", type=float, default=1.0)
    ap.add_argument("--clamp", action="store_true", help="the reference code's clamp after the projection")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    net = load_checkpoint(a.checkpoint)
    data = load_images("mnist", a.root, "test").subset(slice(0, a.n))
    x, y = data.x.float().div(255.0), data.y
    atk = WassersteinPGD(kernel=a.kernel, p=a.p, clamp=a.clamp)
    t0 = time.perf_counter()
    with torch.no_grad():
        acc = float((net(x).argmax(1) == y).float().mean())
    found = torch.cat([atk(net, x[s:s + 100], y[s:s + 100]).eps_found for s in range(0, len(y), 100)])
    print(f"{a.checkpoint.name}: n = {len(y)}, clean accuracy {100 * acc:.1f}%, {time.perf_counter() - t0:.0f} s")
    print("| eps | " + " | ".join(f"{g:g}" for g in GRID) + " |")
    print("|---" * (len(GRID) + 1) + "|")
    print("| success | " + " | ".join(f"{100 * s:.1f}%" for s in success_curve(found, GRID)) + " |")


if __name__ == "__main__":
    sys.exit(main())
