"""One image-training experiment: a JSON-serialisable config -> a run directory.

The run directory holds ``config.json``, ``metrics.json`` (clean and quick-PGD accuracy on the test set, timing,
per-epoch history), ``weights.safetensors`` (the selected weights) and ``weights-last.safetensors`` (written after
every epoch, so an interrupted run keeps its finished epochs). Same config + same seed => same numbers on a CPU.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from data_loaders.images import ImageSet, load_images
from data_loaders.rundir import finish_run, make_run_dir, resolve_device, save_weights
from vision.defenses.early_stopping import CatastrophicOverfittingGuard, RobustEarlyStopping
from vision.defenses.fast import INITS as FAST_INITS
from vision.defenses.fast import FastTraining
from vision.defenses.loop import amp_dtype, lr_factor, make_optimizer, train_epoch
from vision.defenses.pgd_training import PGDTraining
from vision.defenses.standard import StandardTraining
from vision.defenses.trades import TradesTraining
from vision.evaluate import robust_accuracy
from vision.models import build_model

DEFENSES = ("standard", "pgd", "fast", "trades")


@dataclass
class VisionTrainConfig:
    """Everything that defines a training run. ``None`` fields are filled by :func:`resolve_config`."""

    dataset: str = "digits"
    root: str | None = None
    model: str = "auto"                 # auto: mnist_small for 1-channel data, preact18 for colour
    defense: str = "standard"
    eps: float = 8 / 255
    alpha: float | None = None          # fast: 1.25 eps; pgd/trades: eps / 4
    attack_steps: int = 7               # PGD-training / TRADES inner steps
    norm: str = "linf"                  # PGD-training threat model
    trades_beta: float = 6.0
    fast_init: str = "uniform"          # fast: random start uniform, hypercube or zero (R+FGSM ablation)
    fast_init_radius: float | None = None  # fast: radius of the random start (default eps)
    fast_clip_init: bool = False        # fast: clip x + start to [0, 1] before the gradient (CIFAR reference code)
    epochs: int = 10
    batch_size: int = 128
    optimizer: str = "sgd"
    lr_max: float = 0.2
    schedule: str = "cyclic"
    lr_peak: float = 0.5                # cyclic: fraction of training at the peak
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: bool | None = None         # random crop (pad 4) + flip; auto: on for cifar10
    amp: str = "auto"                   # auto: bf16 autocast on CUDA, off on CPU
    guard: bool | None = None           # catastrophic-overfitting guard; auto: on for fast
    guard_drop: float = 0.2
    val_size: int = 0                   # > 0: hold out this many training images for robust early stopping
    val_steps: int = 10
    n_train: int | None = None          # use only the first n training images (after the seeded shuffle)
    n_test: int = 1000                  # test images for the quick evaluation at the end
    eval_steps: int = 10                # quick PGD steps at the end (full evaluation: advsim vision evaluate)
    seed: int = 0
    device: str = "auto"
    channels_last: bool | None = None   # auto: on for CUDA
    normalize: bool = True              # False: identity normalisation (mean 0, std 1), as in the MNIST fast-AT recipe
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_config(cfg: VisionTrainConfig, data: ImageSet) -> VisionTrainConfig:
    """Fill the ``auto``/``None`` fields from the data and the defense, and validate the choices."""
    if cfg.defense not in DEFENSES:
        raise ValueError(f"unknown defense {cfg.defense!r}; choose one of {', '.join(DEFENSES)}")
    c = VisionTrainConfig(**asdict(cfg))
    if c.model == "auto":
        c.model = "mnist_small" if data.shape[0] == 1 else "preact18"
    if c.alpha is None:
        c.alpha = 1.25 * c.eps if c.defense == "fast" else c.eps / 4
    if c.augment is None:
        c.augment = c.dataset == "cifar10"
    if c.guard is None:
        c.guard = c.defense == "fast"
    if c.fast_init not in FAST_INITS:
        raise ValueError(f"unknown fast init {c.fast_init!r}; choose one of {', '.join(FAST_INITS)} (--fast-init)")
    if c.eps < 0 or c.epochs < 1 or c.batch_size < 2:
        raise ValueError("need eps >= 0, epochs >= 1 and batch_size >= 2")
    return c


def make_defense(c: VisionTrainConfig):
    """The per-batch loss of ``c.defense``."""
    if c.defense == "standard":
        return StandardTraining()
    if c.defense == "pgd":
        return PGDTraining(c.eps, c.alpha, c.attack_steps, c.norm)
    if c.defense == "fast":
        return FastTraining(c.eps, c.alpha, init=c.fast_init, init_radius=c.fast_init_radius,
                            clip_init=c.fast_clip_init)
    return TradesTraining(c.eps, c.alpha, c.attack_steps, c.trades_beta)


def _pgd(eps: float, steps: int, seed: int):
    from vision.attacks.pgd import PGD

    return PGD(eps, eps / 4, steps, norm="linf", restarts=1, random_start=True, seed=seed)


def train_run(cfg: VisionTrainConfig, out: str | Path, *, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Train as ``cfg`` says, write the run directory ``out`` and return the metrics."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    t_load = time.perf_counter()
    train_all = load_images(cfg.dataset, cfg.root, "train")
    test = load_images(cfg.dataset, cfg.root, "test") if cfg.n_test > 0 else None
    load_seconds = time.perf_counter() - t_load
    c = resolve_config(cfg, train_all)
    in_ch, h, w = train_all.shape
    num_classes = len(train_all.classes)
    norm_stats = {} if c.normalize else {"mean": (0.0,) * in_ch, "std": (1.0,) * in_ch}
    model = build_model(c.model, num_classes, in_ch, h, **norm_stats).to(device)  # fails before any file is written
    out = make_run_dir(out, c, overwrite=overwrite)

    gen = torch.Generator().manual_seed(c.seed)
    perm = torch.randperm(len(train_all), generator=gen)
    val = train_all.subset(perm[: c.val_size]) if c.val_size > 0 else None
    train = train_all.subset(perm[c.val_size:])
    if c.n_train is not None:
        train = train.subset(slice(0, c.n_train))
    train, val = train.to(device), (val.to(device) if val is not None else None)

    channels_last = c.channels_last if c.channels_last is not None else device.startswith("cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = len(range(0, len(train), c.batch_size))
    opt = make_optimizer(model, c.optimizer, c.lr_max, c.momentum, c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(c.schedule, c.epochs * steps_per_epoch, c.lr_peak))
    dtype = amp_dtype(c.amp, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    defense = make_defense(c)
    dev_gen = torch.Generator(device=device).manual_seed(c.seed + 1)

    guard = None
    if c.guard:
        gx = train.x[: c.batch_size]
        guard = CatastrophicOverfittingGuard(gx, train.y[: c.batch_size], _pgd(c.eps, 5, c.seed), c.guard_drop)
    stopper = RobustEarlyStopping(val.x, val.y, _pgd(c.eps, c.val_steps, c.seed)) if val is not None else None

    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    stopped = None
    for epoch in tqdm(range(c.epochs), desc=f"{c.defense} {c.model}", disable=not progress, unit="epoch"):
        stats = train_epoch(model, defense, train.x, train.y, opt, sched, c.batch_size,
                            pad=4 if c.augment else 0, flip=bool(c.augment), dtype=dtype, scaler=scaler,
                            generator=dev_gen, channels_last=channels_last, progress=progress,
                            desc=f"epoch {epoch + 1}/{c.epochs}")
        train_seconds += stats["seconds"]
        row = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], **stats}
        if guard is not None and guard.check(model, epoch):
            row["guard_robust_acc"] = guard.history[-1]
            history.append(row)
            stopped = f"catastrophic overfitting after epoch {epoch + 1}: kept epoch {epoch}'s weights"
            break
        if guard is not None:
            row["guard_robust_acc"] = guard.history[-1]
        if stopper is not None:
            row["val_robust_acc"] = stopper.update(model, epoch)
        history.append(row)
        save_weights(out / "weights-last.safetensors", model.state_dict())
    if stopper is not None:
        stopper.restore(model)

    test_metrics: dict[str, Any] = {}
    if test is not None:
        tsub = test.subset(slice(0, c.n_test)).to(device)
        test_metrics = robust_accuracy(model, _pgd(c.eps, c.eval_steps, c.seed), tsub.x, tsub.y, 256)
    metrics = {
        "model_name": c.model, "num_classes": num_classes, "input_shape": [in_ch, h, w],
        "defense": c.defense, "eps": c.eps, "device": device, "amp": str(dtype).replace("torch.", "") if dtype else
        "off", "n_train": len(train), "n_val": len(val) if val is not None else 0,
        "epochs_run": len(history), "stopped_early": stopped,
        "best_val_epoch": stopper.best_epoch + 1 if stopper is not None else None,
        "best_val_robust_acc": stopper.best_acc if stopper is not None else None,
        "load_seconds": load_seconds, "train_seconds": train_seconds,
        "seconds_per_epoch": train_seconds / max(len(history), 1),
        "test_clean_acc": test_metrics.get("clean_acc"), "test_pgd_acc": test_metrics.get("robust_acc"),
        "test_pgd": f"PGD-{c.eval_steps} linf eps={c.eps:.4g} alpha=eps/4, 1 restart, n={test_metrics.get('n')}",
        "history": history,
    }
    save_weights(out / "weights.safetensors", model.state_dict(), {"model": c.model, "defense": c.defense})
    finish_run(out, metrics)  # metrics.json, then the INCOMPLETE marker goes: an interrupted run stays marked
    return metrics
