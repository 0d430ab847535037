"""Run-directory level Wasserstein experiments: the success-vs-radius curve of a trained model, and Wasserstein
adversarial training (adaptive radius inside the training loop)."""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_loaders.images import load_images
from data_loaders.rundir import (
    atomic_write_bytes,
    atomic_write_text,
    finish_run,
    make_run_dir,
    resolve_device,
    save_weights,
    write_json,
)
from vision.defenses.loop import make_optimizer, train_epoch
from vision.evaluate import load_run_model
from vision.models import build_model

from .attack import WassersteinPGD, success_curve

__all__ = ["attack_run", "WassersteinTrainConfig", "WassersteinTraining", "train_wasserstein_run"]

GRID = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.25, 1.5, 1.75, 2.0]


def attack_run(run_dir: str | Path, *, n: int = 500, eps: float = 0.3, alpha: float = 0.1, steps: int = 200,
               eps_factor: float = 1.1, eps_every: int = 10, kernel: int = 5, lam: float = 1000.0, p: float = 1.0,
               sinkhorn_iters: int = 50, clamp: bool = False, batch_size: int = 100, dataset: str | None = None,
               root: str | None = None, device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Attack the run's first ``n`` test images; write ``wasserstein-*.json/.md/.png`` (curve, table, figure)."""
    run = Path(run_dir)
    dev = resolve_device(device)
    model, cfg = load_run_model(run, dev)
    ds = dataset or cfg["dataset"]
    ds_root = root if (root is not None or dataset is not None) else cfg.get("root")
    data = load_images(ds, ds_root, "test").subset(slice(0, int(n))).to(dev)
    atk = WassersteinPGD(eps, alpha, steps, eps_factor, eps_every, kernel, lam, p, sinkhorn_iters, clamp=clamp)
    found, costs, clean = [], [], 0
    t0 = time.perf_counter()
    for s in tqdm(range(0, len(data), batch_size), desc="wasserstein", disable=not progress, unit="batch"):
        xb = data.x[s: s + batch_size].float().div(255.0)
        yb = data.y[s: s + batch_size]
        res = atk(model, xb, yb)
        found.append(res.eps_found)
        costs.append(res.cost)
        with torch.no_grad():
            clean += int((model(xb).argmax(1) == yb).sum())
    eps_found = torch.cat(found).cpu()
    grid = [r for r in GRID if r <= atk.max_eps + 1e-9]
    curve = success_curve(eps_found, grid)
    fooled = eps_found[torch.isfinite(eps_found)]
    record = {"attack": repr(atk), "max_eps": atk.max_eps, "dataset": ds, "n": len(data), "device": dev,
              "clean_acc": clean / max(len(data), 1), "success_rate": float(torch.isfinite(eps_found).float().mean()),
              "median_eps_found": float(fooled.median()) if fooled.numel() else None,
              "curve": [{"eps": r, "success": s_, "adv_acc": 1 - s_} for r, s_ in zip(grid, curve)],
              "eps_found": [None if not torch.isfinite(v) else float(v) for v in eps_found],
              "seconds": time.perf_counter() - t0}
    tag = f"wasserstein-k{kernel}-lam{lam:g}" + ("-clamp" if clamp else "")
    write_json(run / f"{tag}.json", record)
    lines = [f"{record['attack']}", "",
             f"n = {record['n']} test images, clean accuracy {100 * record['clean_acc']:.2f}%", "",
             "| radius eps | attack success (incl. clean errors) | adversarial accuracy |", "|---|---|---|"]
    for row in record["curve"]:
        lines.append(f"| {row['eps']:g} | {100 * row['success']:.1f}% | {100 * row['adv_acc']:.1f}% |")
    atomic_write_text(run / f"{tag}.md", "\n".join(lines) + "\n")
    _curve_figure(record, run / f"{tag}.png")
    return record


def _curve_figure(record: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r["eps"] for r in record["curve"]]
    ys = [100 * r["adv_acc"] for r in record["curve"]]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(xs, ys, "o-")
    ax.set_xlabel("Wasserstein radius eps")
    ax.set_ylabel("adversarial accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"Wasserstein PGD, n = {record['n']}")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


class WassersteinTraining:
    """Per-batch loss for :func:`vision.defenses.loop.train_epoch`: CE at the Wasserstein adversarial example.

    The attack grows the radius from ``eps`` by ``eps_factor`` every ``eps_every`` iterations and stops per
    example at the first adversarial example (the thesis' training attack); examples never fooled are trained
    on at their last iterate.
    """

    name = "wasserstein"

    def __init__(self, attack: WassersteinPGD) -> None:
        self.attack = attack
        self.attack.use_eval_mode = False

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        x_adv = self.attack(model, x, y).x_adv
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


@dataclass
class WassersteinTrainConfig:
    """Wasserstein adversarial training (defaults: the thesis' MNIST recipe, fewer epochs for a CPU)."""

    dataset: str = "mnist"
    root: str | None = None
    model: str = "mnist_small"
    eps: float = 0.1
    eps_factor: float = 1.4
    eps_every: int = 5
    attack_steps: int = 50
    alpha: float = 0.1
    kernel: int = 5
    lam: float = 1000.0
    sinkhorn_iters: int = 50
    epochs: int = 20
    lr: float = 0.1
    lr_drop_epoch: int = 10            # lr x 0.1 from this epoch on
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    normalize: bool = False
    init: str | None = None            # start from this run's weights (e.g. a standard model), or from scratch
    n_train: int | None = None
    seed: int = 0
    device: str = "auto"


def train_wasserstein_run(cfg: WassersteinTrainConfig, out: str | Path, *, overwrite: bool = False,
                          progress: bool = True) -> dict[str, Any]:
    """Train with Wasserstein adversarial examples; write a run directory that ``vision evaluate`` and
    ``vision wasserstein attack`` read."""
    c = cfg
    device = resolve_device(c.device)
    torch.manual_seed(c.seed)
    train = load_images(c.dataset, c.root, "train")
    in_ch, h, _ = train.shape
    stats = {} if c.normalize else {"mean": (0.0,) * in_ch, "std": (1.0,) * in_ch}
    if c.init is not None:
        model, _ = load_run_model(c.init, device)
    else:
        model = build_model(c.model, len(train.classes), in_ch, h, **stats).to(device)
    out = make_run_dir(out, asdict(c), overwrite=overwrite)
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(c.seed))
    train = train.subset(perm)
    if c.n_train is not None:
        train = train.subset(slice(0, c.n_train))
    train = train.to(device)
    steps = len([s for s in range(0, len(train), c.batch_size) if min(c.batch_size, len(train) - s) > 1])
    opt = make_optimizer(model, "sgd", c.lr, c.momentum, c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: 1.0 if it // steps < c.lr_drop_epoch else 0.1)
    atk = WassersteinPGD(c.eps, c.alpha, c.attack_steps, c.eps_factor, c.eps_every, c.kernel, c.lam,
                         sinkhorn_iters=c.sinkhorn_iters)
    defense = WassersteinTraining(atk)
    gen = torch.Generator(device=device).manual_seed(c.seed + 1)
    history = []
    for epoch in tqdm(range(c.epochs), desc="wasserstein AT", disable=not progress, unit="epoch"):
        stats_ = train_epoch(model, defense, train.x, train.y, opt, sched, c.batch_size, generator=gen,
                             progress=progress, desc=f"epoch {epoch + 1}/{c.epochs}")
        history.append({"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **stats_})
        save_weights(out / "weights-last.safetensors", model.state_dict())
    metrics = {"model_name": c.model if c.init is None else _init_name(c.init), "num_classes": len(train.classes),
               "input_shape": [in_ch, h, h], "defense": "wasserstein", "eps": c.eps, "device": device,
               "n_train": len(train), "epochs_run": len(history),
               "train_seconds": sum(r["seconds"] for r in history), "history": history}
    save_weights(out / "weights.safetensors", model.state_dict(), {"model": metrics["model_name"],
                                                                    "defense": "wasserstein"})
    finish_run(out, metrics)
    return metrics


def _init_name(run: str | Path) -> str:
    from data_loaders.rundir import read_json

    return read_json(Path(run) / "metrics.json")["model_name"]
