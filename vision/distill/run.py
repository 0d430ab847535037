"""One student-training run of the distillation study: a JSON-serialisable config -> a run directory.

The run directory has the layout of ``advsim vision train`` (``config.json`` with ``dataset``/``root``/``eps``,
``metrics.json`` with ``model_name``/``num_classes``/``input_shape``, ``weights.safetensors``), so
``advsim vision evaluate`` attacks a student like any other model. ``metrics.json`` adds the method, the teacher,
parameter counts and multiply-adds of student and teacher, wall-clock per epoch and the PGD-20 result.

Teacher logits: the teacher runs once over the training set before the first epoch and its logits are kept
(``cache_teacher``); with augmentation on, images change every epoch, so the teacher runs on each augmented batch
instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from data_loaders.images import load_images
from data_loaders.rundir import finish_run, make_run_dir, resolve_device, save_weights
from vision.augment import augment as augment_batch
from vision.defenses.loop import amp_dtype, lr_factor, make_optimizer
from vision.evaluate import load_run_model, robust_accuracy
from vision.models import build_model

from .efficiency import Stopwatch, count_madds, count_parameters
from .steps import ARDStep, ATStep, KDStep, ReplayStep, StandardStep

METHODS = ("standard", "kd", "at", "ard", "fast-ard", "free")
TEACHER_METHODS = ("kd", "ard", "fast-ard")

# Named starting points; explicit settings override them. ``cifar10-paper`` is spec-000 4.7 (ARD, MobileNetV2
# student, 200 epochs, SGD 0.9, weight decay 2e-4, lr 0.1 divided by 10 at epochs 100 and 150, t = 30, PGD-10
# 8/255 step 2/255 for training, PGD-20 for evaluation); Fast-ARD runs 200/m epochs.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"dataset": "mnist", "student": "mnist_small", "eps": 0.3, "attack_steps": 10, "temperature": 30.0,
            "epochs": 4, "batch_size": 100, "optimizer": "adam", "lr": 1e-3, "schedule": "cosine",
            "weight_decay": 0.0, "n_train": 10000, "n_test": 1000},
    "cifar10-paper": {"dataset": "cifar10", "student": "mobilenetv2", "eps": 8 / 255, "step_size": 2 / 255,
                      "attack_steps": 10, "temperature": 30.0, "epochs": 200, "batch_size": 128,
                      "optimizer": "sgd", "lr": 0.1, "schedule": "piecewise", "momentum": 0.9,
                      "weight_decay": 2e-4, "augment": True, "n_train": None, "n_test": 1000},
}


@dataclass
class DistillConfig:
    """A student-training run. ``None`` fields are filled by :func:`resolve_distill_config`."""

    method: str = "ard"
    teacher: str | None = None          # run directory of the teacher (advsim vision train, or a distill run)
    dataset: str = "mnist"
    root: str | None = None
    student: str = "mnist_small"
    eps: float = 0.3
    step_size: float | None = None      # training attack step; default eps / 4 (2/255 at 8/255)
    attack_steps: int = 10              # ARD / AT inner PGD steps (Fast-ARD / free: one step per replay)
    attack_loss: str = "ce"             # ce: maximise CE(S(x'), y) (Def. 4.1); kl: the KL to the teacher
    replays: int = 4                    # m of Fast-ARD / free training
    carry: bool = True                  # Fast-ARD / free: keep delta across batches
    temperature: float = 30.0
    alpha: float = 1.0
    epochs: int = 4
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1
    schedule: str = "piecewise"         # piecewise: /10 at 50% and 75% of training (100 and 150 of 200 epochs)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    augment: bool | None = None         # random crop (pad 4) + flip; auto: on for cifar10
    cache_teacher: bool = True
    n_train: int | None = None
    n_test: int = 1000
    eval_steps: int = 20                # PGD-20, step eps / 4, one random start
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"                   # auto: bf16 autocast on CUDA, off on CPU
    normalize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def config_from_preset(preset: str | None, **overrides: Any) -> DistillConfig:
    """A config from ``preset`` (see :data:`PRESETS`) with the non-None ``overrides`` applied on top."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        base.update(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return DistillConfig(**base)


def resolve_distill_config(cfg: DistillConfig) -> DistillConfig:
    """Fill defaults and validate the choices (one-line errors naming the flag)."""
    c = DistillConfig(**asdict(cfg))
    if c.method not in METHODS:
        raise ValueError(f"unknown method {c.method!r}; choose one of {', '.join(METHODS)} (--method)")
    if c.method in TEACHER_METHODS and not c.teacher:
        raise ValueError(f"method {c.method!r} distils from a teacher: pass its run directory with --teacher")
    if c.method not in TEACHER_METHODS and c.teacher:
        raise ValueError(f"method {c.method!r} trains without a teacher; drop --teacher")
    if c.step_size is None:
        c.step_size = c.eps / 4
    if c.augment is None:
        c.augment = c.dataset == "cifar10"
    if c.eps < 0 or c.epochs < 1 or c.batch_size < 2 or c.attack_steps < 0 or c.replays < 1:
        raise ValueError("need --eps >= 0, --epochs >= 1, --batch-size >= 2, --attack-steps >= 0, --replays >= 1")
    if c.temperature <= 0 or not 0.0 <= c.alpha <= 1.0:
        raise ValueError(f"need --temperature > 0 and 0 <= --alpha <= 1, got {c.temperature} and {c.alpha}")
    if c.attack_loss not in ("ce", "kl"):
        raise ValueError(f"--attack-loss must be ce or kl, got {c.attack_loss!r}")
    if c.attack_loss == "kl" and c.method not in ("ard", "fast-ard"):
        raise ValueError("--attack-loss kl needs a teacher method (ard, fast-ard)")
    return c


def make_step(c: DistillConfig):
    """The per-batch step of ``c.method``."""
    if c.method == "standard":
        return StandardStep()
    if c.method == "kd":
        return KDStep(c.temperature, c.alpha)
    if c.method == "at":
        return ATStep(c.eps, c.step_size, c.attack_steps)
    if c.method == "ard":
        return ARDStep(c.eps, c.step_size, c.attack_steps, c.temperature, c.alpha, c.attack_loss)
    return ReplayStep(c.eps, c.step_size, c.replays, c.temperature, c.alpha, c.attack_loss, c.carry,
                      use_teacher=c.method == "fast-ard")


@torch.no_grad()
def teacher_logits(teacher: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Teacher logits (float32) of uint8 or [0, 1] images, in eval mode, in batches."""
    teacher.eval()
    out = []
    for s in range(0, x.shape[0], batch_size):
        xb = x[s: s + batch_size]
        xb = xb.float().div(255.0) if xb.dtype == torch.uint8 else xb
        out.append(teacher(xb).float())
    return torch.cat(out) if out else torch.zeros(0)


def _pgd_eval(eps: float, steps: int, seed: int):
    from vision.attacks.pgd import PGD

    return PGD(eps, eps / 4, steps, norm="linf", restarts=1, random_start=True, seed=seed)


def distill_run(cfg: DistillConfig, out: str | Path, *, overwrite: bool = False,
                progress: bool = True) -> dict[str, Any]:
    """Train a student as ``cfg`` says, write the run directory ``out`` and return the metrics."""
    c = resolve_distill_config(cfg)
    device = resolve_device(c.device)
    torch.manual_seed(c.seed)
    train_all = load_images(c.dataset, c.root, "train")
    test = load_images(c.dataset, c.root, "test") if c.n_test > 0 else None
    in_ch, h, w = train_all.shape
    num_classes = len(train_all.classes)
    teacher, teacher_info = None, {}
    if c.teacher:
        teacher, _ = load_run_model(c.teacher, device)
        for p in teacher.parameters():
            p.requires_grad_(False)
        probe = teacher(torch.zeros(1, in_ch, h, w, device=device))
        if probe.shape[1] != num_classes:
            raise ValueError(f"{c.teacher}: teacher has {probe.shape[1]} outputs but {c.dataset} has "
                             f"{num_classes} classes (--teacher)")
        teacher_info = {"teacher_params": count_parameters(teacher),
                        "teacher_madds": count_madds(teacher, (in_ch, h, w))}
    norm_stats = {} if c.normalize else {"mean": (0.0,) * in_ch, "std": (1.0,) * in_ch}
    student = build_model(c.student, num_classes, in_ch, h, **norm_stats).to(device)
    out = make_run_dir(out, c, overwrite=overwrite)

    gen = torch.Generator().manual_seed(c.seed)
    train = train_all.subset(torch.randperm(len(train_all), generator=gen))
    if c.n_train is not None:
        train = train.subset(slice(0, c.n_train))
    train = train.to(device)
    cache = None
    if teacher is not None and c.cache_teacher and not c.augment:
        cache = teacher_logits(teacher, train.x)

    replay = c.method in ("fast-ard", "free")
    starts = [s for s in range(0, len(train), c.batch_size) if min(c.batch_size, len(train) - s) > 1]
    total_updates = c.epochs * len(starts) * (c.replays if replay else 1)
    opt = make_optimizer(student, c.optimizer, c.lr, c.momentum, c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(c.schedule, total_updates))
    dtype = amp_dtype(c.amp, device)
    step = make_step(c)
    dev_gen = torch.Generator(device=device).manual_seed(c.seed + 1)

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()

    history: list[dict[str, Any]] = []
    watch = Stopwatch()
    for epoch in tqdm(range(c.epochs), desc=f"{c.method} {c.student}", disable=not progress, unit="epoch"):
        student.train()
        epoch_watch = Stopwatch()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        with watch, epoch_watch:
            perm = torch.randperm(len(train), device=device, generator=dev_gen)
            for s in tqdm(starts, desc=f"epoch {epoch + 1}/{c.epochs}", leave=False, disable=not progress):
                idx = perm[s: s + c.batch_size]
                xb = train.x[idx]
                if c.augment:
                    xb = augment_batch(xb, 4, True, dev_gen)
                xb = xb.float().div_(255.0)
                yb = train.y[idx]
                tb = None
                if teacher is not None:
                    tb = cache[idx] if cache is not None else teacher_logits(teacher, xb)
                with torch.autocast(device_type=torch.device(device).type, dtype=dtype or torch.float32,
                                    enabled=dtype is not None):
                    loss, logits = step(student, xb, yb, tb, update)
                tot_loss += float(loss) * len(idx)
                tot_correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
        history.append({"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": tot_loss / max(seen, 1),
                        "acc": tot_correct / max(seen, 1), "seconds": epoch_watch.seconds})
        save_weights(out / "weights-last.safetensors", student.state_dict())

    test_metrics: dict[str, Any] = {}
    if test is not None:
        tsub = test.subset(slice(0, c.n_test)).to(device)
        test_metrics = robust_accuracy(student, _pgd_eval(c.eps, c.eval_steps, c.seed), tsub.x, tsub.y, 256)
    metrics = {
        "model_name": c.student, "num_classes": num_classes, "input_shape": [in_ch, h, w], "method": c.method,
        "teacher": c.teacher, "eps": c.eps, "device": device, "n_train": len(train), "epochs_run": len(history),
        "updates": total_updates, "params": count_parameters(student), "madds": count_madds(student, (in_ch, h, w)),
        **teacher_info, "teacher_logits_cached": cache is not None, "train_seconds": watch.seconds,
        "seconds_per_epoch": watch.seconds / max(len(history), 1),
        "test_clean_acc": test_metrics.get("clean_acc"), "test_pgd_acc": test_metrics.get("robust_acc"),
        "test_pgd": f"PGD-{c.eval_steps} linf eps={c.eps:.4g} step eps/4, 1 random start, n={test_metrics.get('n')}",
        "history": history,
    }
    save_weights(out / "weights.safetensors", student.state_dict(), {"model": c.student, "method": c.method})
    finish_run(out, metrics)
    return metrics
