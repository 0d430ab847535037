"""Certified (provably robust) training: the robust loss with an epsilon ramp, optionally as a cascade.

One config -> one run directory, in the layout of ``advsim vision train`` (config.json, metrics.json,
weights.safetensors), so ``advsim vision evaluate`` and ``advsim vision certify`` read it. A cascade (Algorithm 4)
writes one such directory per stage (``stage-1``, ``stage-2``, ...) and a ``cascade.json`` listing them; stage
i + 1 trains only on the training examples that stages 1..i cannot certify.

Presets (spec-003 section 2.7): ``wk17`` is Wong & Kolter 2017 (Adam 1e-3, batch 50, 100 epochs, eps ramped
0.05 -> 0.1 over the first 50 epochs, exact bounds); ``scaled`` is Wong et al. 2018 (60 epochs, eps 0.01 ->
target over 20 epochs, then the learning rate halves every 10 epochs, 50 Cauchy projections).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from data_loaders.images import ImageSet, load_images
from data_loaders.rundir import finish_run, make_run_dir, resolve_device, save_weights, write_json
from vision.defenses.loop import make_optimizer, train_epoch
from vision.models import build_model

from .loss import certify_batch, robust_loss

__all__ = ["CertifiedTrainConfig", "PRESETS", "apply_preset", "RobustLossTraining", "eps_ramp",
           "step_decay", "certify_set", "train_certified_run"]

PRESETS: dict[str, dict[str, Any]] = {
    "wk17": dict(eps_start=0.05, ramp_epochs=50, epochs=100, batch_size=50, optimizer="adam", lr=1e-3, lr_step=0,
                 proj=None),
    "scaled": dict(eps_start=0.01, ramp_epochs=20, epochs=60, batch_size=50, optimizer="adam", lr=1e-3,
                   lr_step=10, lr_gamma=0.5, proj=50),
}


@dataclass
class CertifiedTrainConfig:
    """Everything that defines a certified-training run (``advsim vision certified-train``)."""

    dataset: str = "mnist"
    root: str | None = None
    model: str = "mnist_small"
    norm: str = "linf"                  # linf (l1 dual norm) or l2
    eps: float = 0.1
    eps_start: float = 0.01             # the ramp's first radius
    ramp_epochs: float = 20.0           # linear ramp eps_start -> eps over these epochs (per iteration)
    epochs: int = 60
    batch_size: int = 50
    optimizer: str = "adam"
    lr: float = 1e-3
    lr_step: int = 10                   # after the ramp, multiply the lr by lr_gamma every lr_step epochs (0: never)
    lr_gamma: float = 0.5
    momentum: float = 0.9
    weight_decay: float = 0.0
    grad_clip: float | None = None      # clip the gradient norm (the CIFAR recipe uses 1)
    proj: int | None = 50               # Cauchy/Gaussian projections in training (None: exact bounds)
    clip_input: bool = False            # intersect the ball with the [0, 1] pixel box (tighter; off in the thesis)
    normalize: bool = False             # per-channel normalisation inside the model (off: raw [0, 1] pixels)
    n_train: int | None = None          # first n shuffled training images
    n_test: int = 500                   # exact certificates on this many test images at the end (0: skip)
    cascade: int = 1                    # stages of a cascade (1: a single model)
    seed: int = 0
    device: str = "auto"
    preset: str | None = None


def apply_preset(cfg: CertifiedTrainConfig, preset: str | None, explicit: set[str] | None = None) -> \
        CertifiedTrainConfig:
    """``cfg`` with the preset's values for the fields not in ``explicit`` (flags the user gave)."""
    if preset is None:
        return cfg
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (--preset)")
    d = asdict(cfg)
    for k, v in PRESETS[preset].items():
        if explicit is None or k not in explicit:
            d[k] = v
    d["preset"] = preset
    return CertifiedTrainConfig(**d)


def eps_ramp(eps_start: float, eps: float, ramp_steps: int) -> Callable[[int], float]:
    """Radius at iteration ``step``: linear from ``eps_start`` to ``eps`` over ``ramp_steps`` iterations."""
    def f(step: int) -> float:
        if ramp_steps <= 0 or step >= ramp_steps:
            return eps
        return eps_start + (eps - eps_start) * step / ramp_steps
    return f


def step_decay(steps_per_epoch: int, start_epoch: float, step: int, gamma: float) -> Callable[[int], float]:
    """Learning-rate factor: 1 until ``start_epoch``, then times ``gamma`` every ``step`` epochs."""
    def f(it: int) -> float:
        epoch = it // max(steps_per_epoch, 1)
        if step <= 0 or epoch < start_epoch:
            return 1.0
        return gamma ** math.floor((epoch - math.ceil(start_epoch)) / step)
    return f


class RobustLossTraining:
    """Per-batch robust loss for :func:`vision.defenses.loop.train_epoch`, with the radius ramped per call.

    Also counts the (estimated) robust training error since the last :meth:`take_stats`.
    """

    name = "certified"

    def __init__(self, eps_at: Callable[[int], float], norm: str = "linf", proj: int | None = None,
                 clip: tuple[float, float] | None = None, generator: torch.Generator | None = None) -> None:
        self.eps_at, self.norm, self.proj, self.clip, self.generator = eps_at, norm, proj, clip, generator
        self.step = 0
        self._err = 0
        self._seen = 0

    @property
    def eps(self) -> float:
        return self.eps_at(self.step)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        eps = self.eps_at(self.step)
        self.step += 1
        loss, not_cert = robust_loss(model, x, y, eps, self.norm, self.proj, self.clip, self.generator)
        with torch.no_grad():
            logits = model(x)
        self._err += int(not_cert.sum())
        self._seen += int(y.shape[0])
        return loss, logits

    def take_stats(self) -> float:
        """Robust training error (bound estimate) since the last call."""
        err = self._err / max(self._seen, 1)
        self._err = self._seen = 0
        return err


def certify_set(model: nn.Module, x: Tensor, y: Tensor, eps: float, norm: str = "linf",
                clip: tuple[float, float] | None = None, batch_size: int = 50,
                progress: bool = False, desc: str = "certify") -> dict[str, Tensor]:
    """Exact certificates of a whole set (x uint8 or float in [0, 1]): pred, certified, detected, margin."""
    out: dict[str, list[Tensor]] = {"pred": [], "certified": [], "detected": [], "margin": []}
    for s in tqdm(range(0, x.shape[0], batch_size), desc=desc, disable=not progress, leave=False, unit="batch"):
        xb = x[s: s + batch_size]
        xb = xb.float().div(255.0) if xb.dtype == torch.uint8 else xb
        cert = certify_batch(model, xb, y[s: s + batch_size], eps, norm, clip)
        for k in out:
            out[k].append(getattr(cert, k))
    return {k: torch.cat(v) if v else torch.empty(0) for k, v in out.items()}


def _build(c: CertifiedTrainConfig, data: ImageSet, device: str) -> nn.Module:
    in_ch, h, _ = data.shape
    stats = {} if c.normalize else {"mean": (0.0,) * in_ch, "std": (1.0,) * in_ch}
    return build_model(c.model, len(data.classes), in_ch, h, **stats).to(device)


def _validate(c: CertifiedTrainConfig) -> None:
    if c.norm not in ("linf", "l2"):
        raise ValueError(f"--norm must be linf or l2 for certified training, got {c.norm!r}")
    if c.eps <= 0 or c.eps_start < 0 or c.epochs < 1 or c.batch_size < 2 or c.cascade < 1:
        raise ValueError("need eps > 0, eps_start >= 0, epochs >= 1, batch_size >= 2 and cascade >= 1")
    if c.proj is not None and c.proj < 1:
        raise ValueError(f"--proj must be >= 1 (or omitted for exact bounds), got {c.proj}")
    if c.clip_input and c.norm != "linf":
        raise ValueError("--clip-input works with --norm linf only")


def _train_stage(c: CertifiedTrainConfig, model: nn.Module, train: ImageSet, device: str, stage: int,
                 progress: bool, checkpoint: Path | None = None) -> list[dict[str, Any]]:
    torch.manual_seed(c.seed + 1000 * stage)
    steps = len([s for s in range(0, len(train), c.batch_size) if min(c.batch_size, len(train) - s) > 1])
    opt = make_optimizer(model, c.optimizer, c.lr, c.momentum, c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, step_decay(steps, c.ramp_epochs, c.lr_step, c.lr_gamma))
    gen = torch.Generator(device=device).manual_seed(c.seed + 1000 * stage + 1)
    clip = (0.0, 1.0) if c.clip_input else None
    defense = RobustLossTraining(eps_ramp(c.eps_start, c.eps, int(round(c.ramp_epochs * steps))), c.norm, c.proj,
                                 clip, gen)
    if c.grad_clip is not None:
        _clip_gradients(opt, model, c.grad_clip)
    history = []
    for epoch in tqdm(range(c.epochs), desc=f"certified stage {stage}", disable=not progress, unit="epoch"):
        eps_start = defense.eps
        stats = train_epoch(model, defense, train.x, train.y, opt, sched, c.batch_size, generator=gen,
                            progress=progress, desc=f"epoch {epoch + 1}/{c.epochs}")
        history.append({"epoch": epoch + 1, "eps_first": eps_start, "eps_last": defense.eps_at(defense.step - 1),
                        "lr": opt.param_groups[0]["lr"], "robust_loss": stats["loss"], "clean_acc": stats["acc"],
                        "robust_err_estimate": defense.take_stats(), "seconds": stats["seconds"]})
        if checkpoint is not None:   # an interrupted run keeps its finished epochs
            save_weights(checkpoint, model.state_dict(), {"model": c.model, "epoch": str(epoch + 1)})
    return history


def _clip_gradients(opt: torch.optim.Optimizer, model: nn.Module, max_norm: float) -> None:
    """Clip the gradient norm before every optimizer step (a step pre-hook)."""
    def hook(*_args, **_kw) -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.register_step_pre_hook(hook)


def _stage_metrics(c: CertifiedTrainConfig, model_name: str, data: ImageSet, n_train: int,
                   history: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model_name": model_name, "num_classes": len(data.classes), "input_shape": list(data.shape),
            "defense": "certified", "eps": c.eps, "norm": c.norm, "n_train": n_train, "epochs_run": len(history),
            "train_seconds": sum(h["seconds"] for h in history),
            "seconds_per_epoch": sum(h["seconds"] for h in history) / max(len(history), 1), "history": history}


def train_certified_run(cfg: CertifiedTrainConfig, out: str | Path, *, overwrite: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Train as ``cfg`` says (one model or a cascade), write the run directory and return the metrics."""
    _validate(cfg)
    c = cfg
    device = resolve_device(c.device)
    torch.manual_seed(c.seed)
    train_all = load_images(c.dataset, c.root, "train")
    test = load_images(c.dataset, c.root, "test") if c.n_test > 0 else None
    model = _build(c, train_all, device)   # fails on a bad model name before anything is written
    out = make_run_dir(out, c, overwrite=overwrite)
    perm = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(c.seed))
    train = train_all.subset(perm)
    if c.n_train is not None:
        train = train.subset(slice(0, c.n_train))
    train = train.to(device)
    clip = (0.0, 1.0) if c.clip_input else None
    t0 = time.perf_counter()
    stages: list[dict[str, Any]] = []
    remaining = train
    for stage in range(1, c.cascade + 1):
        if stage > 1:
            model = _build(c, train_all, device)
        sdir = out if c.cascade == 1 else out / f"stage-{stage}"
        sdir.mkdir(parents=True, exist_ok=True)
        history = _train_stage(c, model, remaining, device, stage, progress, sdir / "weights-last.safetensors")
        info = _stage_metrics(c, c.model, train_all, len(remaining), history)
        if c.cascade > 1:
            write_json(sdir / "config.json", {**asdict(c), "cascade_stage": stage})
            if stage < c.cascade:
                cert = certify_set(model, remaining.x, remaining.y, c.eps, c.norm, clip, progress=progress,
                                   desc=f"filter stage {stage}")
                keep = ~cert["certified"]
                info["train_certified"] = int(cert["certified"].sum())
                remaining = remaining.subset(keep.nonzero().squeeze(1))
            save_weights(sdir / "weights.safetensors", model.state_dict(), {"model": c.model, "defense": "certified"})
            write_json(sdir / "metrics.json", info)
        stages.append({"stage": stage, "n_train": info["n_train"], "train_certified": info.get("train_certified")})
        if len(remaining) < 2:
            break
    metrics: dict[str, Any] = {**_stage_metrics(c, c.model, train_all, len(train), history), "device": device,
                               "total_seconds": time.perf_counter() - t0}
    if c.cascade > 1:
        metrics["cascade"] = stages
        write_json(out / "cascade.json", {"stages": [f"stage-{s['stage']}" for s in stages]})
    else:
        save_weights(out / "weights.safetensors", model.state_dict(), {"model": c.model, "defense": "certified"})
    if test is not None and c.cascade == 1:
        tsub = test.subset(slice(0, c.n_test)).to(device)
        cert = certify_set(model, tsub.x, tsub.y, c.eps, c.norm, clip, progress=progress)
        ok = cert["pred"] == tsub.y
        metrics.update({"test_n": len(tsub), "test_clean_err": 1 - int(ok.sum()) / len(tsub),
                        "test_certified_err": 1 - int(cert["certified"].sum()) / len(tsub)})
    finish_run(out, metrics)
    return metrics
