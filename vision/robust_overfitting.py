"""Robust overfitting (Rice, Wong & Kolter 2020; spec-003 section 2.9): PGD adversarial training with a piecewise
learning-rate decay, robust error measured after every epoch on held-out data, best vs final checkpoint, and
validation-based early stopping.

One config -> one run directory:

- ``curve.csv`` / ``curve.md``: per epoch, the learning rate, robust and clean error on the test images, on a
  validation split held out from the training set, and on a fixed subset of the training images (all with the
  training PGD: ``eval_steps`` steps of ``alpha`` from a random start).
- ``robust_overfitting.png``: robust train / validation / test error against the epoch, with the decays marked.
- ``metrics.json``: the best test epoch, the final epoch, the epoch the validation set selects and the test error
  there (the early-stopping result), and the gap between final and best.
- ``weights.safetensors`` (the validation-selected epoch: the early-stopping result; ``advsim vision evaluate``
  reads it) and ``weights-final.safetensors``.

Presets: ``cpu`` (a 2,000-image MNIST subset, the small conv net, eps 0.1, 40 epochs, about 10 CPU-minutes) and
``paper`` (CIFAR-10, PreAct ResNet-18, eps 8/255, 10 steps of 2/255, SGD lr 0.1 decayed /10 at epochs 100 and
150 of 200, 1,000 validation images: needs a GPU).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from data_loaders.images import load_images
from data_loaders.rundir import atomic_write_text, finish_run, make_run_dir, resolve_device, save_weights, write_json
from vision.attacks.pgd import PGD
from vision.defenses.loop import lr_factor, make_optimizer, train_epoch
from vision.defenses.pgd_training import PGDTraining
from vision.evaluate import robust_accuracy
from vision.models import build_model

__all__ = ["RobustOverfittingConfig", "PRESETS", "preset_config", "run_robust_overfitting", "summarise_curve"]


@dataclass
class RobustOverfittingConfig:
    """One robust-overfitting experiment. ``alpha`` None: eps / 4 (eps / 4 = 2/255 at 8/255)."""

    dataset: str = "mnist"
    root: str | None = None
    model: str = "mnist_small"
    eps: float = 0.1
    alpha: float | None = None
    attack_steps: int = 10
    epochs: int = 40
    batch_size: int = 128
    optimizer: str = "sgd"
    lr_max: float = 0.05
    schedule: str = "piecewise"         # x1 until 50% of training, x0.1 until 75%, then x0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool = False
    n_train: int | None = 2000          # training images after the validation split (None: all)
    val_size: int = 500
    n_test: int = 1000
    n_train_eval: int = 500             # training images on which the robust training error is tracked
    eval_steps: int = 10
    seed: int = 0
    device: str = "auto"
    normalize: bool = True


PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {},
    "paper": dict(dataset="cifar10", model="preact18", eps=8 / 255, alpha=2 / 255, attack_steps=10, epochs=200,
                  batch_size=128, lr_max=0.1, schedule="piecewise", augment=True, n_train=None, val_size=1000,
                  n_test=10000, n_train_eval=1000, eval_steps=10),
}


def preset_config(preset: str = "cpu", **overrides: Any) -> RobustOverfittingConfig:
    """The preset's config with ``overrides`` (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (--preset)")
    known = {f.name for f in fields(RobustOverfittingConfig)}
    bad = set(overrides) - known
    if bad:
        raise ValueError(f"unknown robust-overfitting settings {sorted(bad)}")
    vals = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    return RobustOverfittingConfig(**vals)


def _check(c: RobustOverfittingConfig) -> None:
    if c.eps < 0 or c.epochs < 1 or c.batch_size < 2 or c.attack_steps < 1 or c.eval_steps < 1:
        raise ValueError("need eps >= 0, epochs >= 1, batch_size >= 2, attack_steps >= 1 and eval_steps >= 1")
    if c.val_size < 1:
        raise ValueError(f"val_size must be >= 1 (the validation split selects the early-stopping epoch), "
                         f"got {c.val_size} (--val-size)")


def summarise_curve(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Best test epoch, final epoch and the validation-selected epoch (ties: the earliest) from the curve rows."""
    if not rows:
        raise ValueError("empty robust-overfitting curve")
    best = min(rows, key=lambda r: (r["test_robust_err"], r["epoch"]))
    val = min(rows, key=lambda r: (r["val_robust_err"], r["epoch"]))
    final = rows[-1]
    return {
        "best_test_epoch": best["epoch"], "best_test_robust_err": best["test_robust_err"],
        "best_test_clean_err": best["test_clean_err"],
        "final_epoch": final["epoch"], "final_test_robust_err": final["test_robust_err"],
        "final_test_clean_err": final["test_clean_err"],
        "val_selected_epoch": val["epoch"], "val_selected_test_robust_err": val["test_robust_err"],
        "val_selected_test_clean_err": val["test_clean_err"],
        "final_minus_best": final["test_robust_err"] - best["test_robust_err"],
        "val_selected_minus_best": val["test_robust_err"] - best["test_robust_err"],
    }


def _table(rows: list[dict[str, Any]]) -> tuple[str, str]:
    cols = ["epoch", "lr", "train_robust_err", "val_robust_err", "test_robust_err", "test_clean_err", "seconds"]
    csv = ",".join(cols) + "\n" + "".join(",".join(f"{r[c]:.6g}" for c in cols) + "\n" for r in rows)
    md = "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols) + "\n"
    for r in rows:
        md += "| " + " | ".join(str(r[c]) if c == "epoch" else f"{r[c]:.4g}" for c in cols) + " |\n"
    return csv, md


def plot_curve(rows: list[dict[str, Any]], path: Path, title: str, decays: list[float]) -> None:
    """Robust train / validation / test error and clean test error against the epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(ep, [r["train_robust_err"] for r in rows], label="robust train error")
    ax.plot(ep, [r["val_robust_err"] for r in rows], label="robust validation error")
    ax.plot(ep, [r["test_robust_err"] for r in rows], label="robust test error", lw=2)
    ax.plot(ep, [r["test_clean_err"] for r in rows], label="clean test error", ls=":")
    for d in decays:
        ax.axvline(d, color="grey", lw=0.8, ls="--")
    s = summarise_curve(rows)
    ax.scatter([s["best_test_epoch"]], [s["best_test_robust_err"]], marker="o", color="k", zorder=5,
               label=f"best test ({s['best_test_robust_err']:.3f})")
    ax.scatter([s["val_selected_epoch"]], [s["val_selected_test_robust_err"]], marker="x", color="r", zorder=5,
               label=f"validation-selected ({s['val_selected_test_robust_err']:.3f})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("error")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def run_robust_overfitting(cfg: RobustOverfittingConfig, out: str | Path, *, overwrite: bool = False,
                           progress: bool = True) -> dict[str, Any]:
    """Train with PGD as ``cfg`` says, measuring robust error after every epoch; writes the run directory."""
    _check(cfg)
    c = RobustOverfittingConfig(**asdict(cfg))
    if c.alpha is None:
        c.alpha = c.eps / 4
    device = resolve_device(c.device)
    torch.manual_seed(c.seed)
    train_all = load_images(c.dataset, c.root, "train")
    test = load_images(c.dataset, c.root, "test")
    if c.val_size >= len(train_all):
        raise ValueError(f"val_size {c.val_size} leaves no training images ({len(train_all)} in total; --val-size)")
    in_ch, h, _ = train_all.shape
    stats = {} if c.normalize else {"mean": (0.0,) * in_ch, "std": (1.0,) * in_ch}
    model = build_model(c.model, len(train_all.classes), in_ch, h, **stats).to(device)
    out = make_run_dir(out, c, overwrite=overwrite)

    gen = torch.Generator().manual_seed(c.seed)
    perm = torch.randperm(len(train_all), generator=gen)
    val = train_all.subset(perm[: c.val_size]).to(device)
    train = train_all.subset(perm[c.val_size:])
    if c.n_train is not None:
        train = train.subset(slice(0, c.n_train))
    train = train.to(device)
    tsub = test.subset(slice(0, c.n_test)).to(device)
    trsub_x, trsub_y = train.x[: c.n_train_eval], train.y[: c.n_train_eval]

    steps_per_epoch = len([s for s in range(0, len(train), c.batch_size) if min(c.batch_size, len(train) - s) > 1])
    total = c.epochs * steps_per_epoch
    opt = make_optimizer(model, c.optimizer, c.lr_max, c.momentum, c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(c.schedule, total))
    defense = PGDTraining(c.eps, c.alpha, c.attack_steps)
    dev_gen = torch.Generator(device=device).manual_seed(c.seed + 1)
    ev = PGD(c.eps, c.alpha, c.eval_steps, restarts=1, random_start=True, seed=c.seed)

    rows: list[dict[str, Any]] = []
    best_val, best_state = float("inf"), None
    t0 = time.perf_counter()
    for epoch in tqdm(range(c.epochs), desc="robust overfitting", disable=not progress, unit="epoch"):
        lr = opt.param_groups[0]["lr"]
        st = train_epoch(model, defense, train.x, train.y, opt, sched, c.batch_size, pad=4 if c.augment else 0,
                         flip=c.augment, generator=dev_gen, progress=False)
        te = robust_accuracy(model, ev, tsub.x, tsub.y, 256)
        va = robust_accuracy(model, ev, val.x, val.y, 256)
        tr = robust_accuracy(model, ev, trsub_x, trsub_y, 256)
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": st["loss"], "train_robust_err": 1 - tr["robust_acc"],
               "val_robust_err": 1 - va["robust_acc"], "test_robust_err": 1 - te["robust_acc"],
               "test_clean_err": 1 - te["clean_acc"], "seconds": st["seconds"]}
        rows.append(row)
        if row["val_robust_err"] < best_val:
            best_val = row["val_robust_err"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        write_json(out / "curve.json", rows)  # an interrupted run keeps its finished epochs
    save_weights(out / "weights-final.safetensors", model.state_dict())
    if best_state is not None:
        save_weights(out / "weights.safetensors", best_state)

    csv, md = _table(rows)
    atomic_write_text(out / "curve.csv", csv)
    atomic_write_text(out / "curve.md", md)
    decays = [0.5 * c.epochs, 0.75 * c.epochs] if c.schedule == "piecewise" else []
    title = (f"PGD-{c.attack_steps} training, {c.dataset} ({len(train)} images), {c.model}, eps={c.eps:.4g}; "
             f"robust error under PGD-{c.eval_steps}")
    plot_curve(rows, out / "robust_overfitting.png", title, decays)
    summary = summarise_curve(rows)
    metrics = {"model_name": c.model, "num_classes": len(train_all.classes), "input_shape": [in_ch, h, h],
               "n_train": len(train), "n_val": len(val), "n_test": len(tsub), "device": device,
               "eval_attack": repr(ev), "seconds": time.perf_counter() - t0, **summary, "curve": rows}
    finish_run(out, metrics)
    return metrics
