"""Training valuation models on freshly sampled snippets; saving and loading trained models without pickle.

A run directory holds ``config.json`` (the TrainConfig), ``checkpoint.safetensors`` (model + optimiser + RNG
state, rewritten atomically every ``ckpt_every`` steps and on Ctrl-C, so an interrupted run resumes where it
stopped), then ``weights.safetensors`` + ``model.json`` (the finished model: config, normaliser, tau) and
``train_log.json``; ``metrics.json`` comes from :func:`lobsim.evaluate.evaluate`.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data_loaders.rundir import atomic_write_bytes, load_weights, read_json, resolve_device, save_weights, write_json
from lobsim.dataset import FeatureConfig, Market
from lobsim.evaluate import EvalResult, evaluate
from lobsim.features import Normalizer
from lobsim.models import ModelConfig, build_model, count_parameters

MODEL_FORMAT = "advsim.valuation-model"
MODEL_FORMAT_VERSION = 1
OPTIMIZERS = ("adam", "sgd")

__all__ = ["TrainConfig", "TrainedModel", "train", "load_run", "default_config", "evaluate", "EvalResult"]


@dataclass
class TrainConfig:
    """Everything that determines a training run (same config + same seed => same weights on one machine).

    ``optimizer``: ``adam`` (default: robust to the scale of 6,000 correlated inputs) or ``sgd`` (the thesis'
    choice; uses ``momentum``). ``scale_n``: training windows used to fit the normaliser. ``eval_n``: test
    snippets for the evaluation after training. ``data``: how the market was built (for ``advsim lob
    evaluate``), filled by the CLI.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    steps: int = 1500
    batch: int = 256
    seed: int = 0
    device: str = "auto"
    eval_n: int = 10_000
    eval_seed: int = 0
    scale_n: int = 4096
    ckpt_every: int = 200
    grad_clip: float | None = 5.0
    data: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.features, dict):
            self.features = FeatureConfig.from_dict(self.features)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"TrainConfig: optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.steps < 0 or self.batch < 1 or self.lr <= 0:
            raise ValueError(
                f"TrainConfig: need steps >= 0, batch >= 1, lr > 0 (got {self.steps}, {self.batch}, {self.lr})"
            )
        if self.model.window != self.features.window:
            raise ValueError(
                f"TrainConfig: model window {self.model.window} != features window {self.features.window}"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        return cls(**d)


def default_config(kind: str, preset: str, features: FeatureConfig | None = None, **overrides: Any) -> TrainConfig:
    """The documented defaults of a (model, preset): ``small`` trains in minutes on a CPU; ``paper`` needs a GPU."""
    features = features or FeatureConfig()
    # Adam moves every weight by ~lr per step; with W = 6,000 correlated inputs a first-layer output moves by
    # ~lr * W, so layers reading the raw window need a small lr (1e-3 makes the linear model's loss exceed ln 3).
    lr = {"linear": 1e-5, "mlp": 1e-4, "lstm": 1e-3}[kind]
    base: dict[str, Any] = {"steps": 1500, "batch": 256, "lr": lr}
    if preset == "paper":
        base = {"steps": 5000, "batch": 2000, "lr": 1e-5 if kind == "mlp" else lr}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(model=ModelConfig(kind=kind, preset=preset, window=features.window), features=features, **base)


@dataclass
class TrainedModel:
    """A trained model with what it needs to read raw SWA: the normaliser, the label threshold, the config."""

    model: nn.Module
    normalizer: Normalizer
    tau: float
    config: TrainConfig
    device: str = "cpu"
    run_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def logits_from_swa(self, swa: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 3)`` of SWA windows ``(B, W)`` in dollars (any common shift): normaliser + model."""
        dtype = next(self.model.parameters()).dtype
        return self.model(self.normalizer.torch(swa).to(dtype))

    def logits_from_book(self, prices: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 3)`` of books ``(B, W, 2, L)``: prices in dollars (any common shift per snippet), float
        sizes (perturbation included), bool mask of real levels. The interface every attack uses."""
        from lobsim.features import swa_torch

        return self.logits_from_swa(swa_torch(prices, sizes, mask))

    @torch.no_grad()
    def predict(self, market: Market, day: np.ndarray, start: np.ndarray, batch: int = 1024) -> np.ndarray:
        """int64 predicted classes (0 down, 1 flat, 2 up) of the snippets ``(day, start)``."""
        day = np.atleast_1d(np.asarray(day, np.int64))
        start = np.atleast_1d(np.asarray(start, np.int64))
        was_training = self.model.training
        self.model.eval()
        out = np.empty(day.shape[0], np.int64)
        try:
            for i in range(0, day.shape[0], batch):
                x = self.normalizer.numpy(market.swa_windows(day[i : i + batch], start[i : i + batch]))
                out[i : i + batch] = self.model(torch.from_numpy(x).to(self.device)).argmax(1).cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def save(self, run_dir: str | Path) -> Path:
        """Write ``weights.safetensors`` and ``model.json`` (config, normaliser, tau) into ``run_dir``."""
        run_dir = Path(run_dir)
        save_weights(run_dir / "weights.safetensors", self.model.state_dict(), {"format": MODEL_FORMAT})
        meta = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "model": self.config.model.resolved().to_dict(),
            "normalizer": self.normalizer.to_dict(),
            "tau": self.tau,
            "info": self.info,
        }
        write_json(run_dir / "model.json", meta)
        self.run_dir = run_dir
        return run_dir


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a trained model from a run directory (``model.json`` + ``weights.safetensors``); never unpickles."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no such file; {run_dir} is not a trained-model run directory")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path}: not an advsim model file (expected format {MODEL_FORMAT!r})")
    if meta.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{meta_path}: model file version {meta.get('version')} is not supported "
                         f"(this advsim reads version {MODEL_FORMAT_VERSION})")
    try:
        config = TrainConfig.from_dict(meta["config"])
        mcfg = ModelConfig.from_dict(meta["model"])
        normalizer = Normalizer.from_dict(meta["normalizer"])
        tau = float(meta["tau"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{meta_path}: malformed model file: {exc}") from exc
    device = resolve_device(device)
    model = build_model(mcfg)
    state = load_weights(run_dir / "weights.safetensors", device="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        wpath = run_dir / "weights.safetensors"
        raise ValueError(f"{wpath}: weights do not fit the model in model.json: {exc}") from exc
    model.to(device).eval()
    return TrainedModel(model, normalizer, tau, config, device=device, run_dir=run_dir, info=meta.get("info", {}))


# -- training ------------------------------------------------------------------------------------------------


def _make_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """One atomic safetensors file: model tensors, optimiser tensors, torch RNG; the rest as JSON metadata."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, pstate in osd["state"].items():
        for k, v in pstate.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    tensors["rng.torch"] = torch.get_rng_state()
    meta = dict(state, optim_groups=osd["param_groups"], optim_scalars=scalars)
    atomic_write_bytes(path, save(tensors, metadata={"format": "advsim.checkpoint", "state": json.dumps(meta)}))


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            md = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{path}: not an advsim checkpoint (safetensors expected): {exc}") from exc
    if md.get("format") != "advsim.checkpoint":
        raise ValueError(f"{path}: not an advsim checkpoint")
    meta = json.loads(md["state"])
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ostate: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            ostate.setdefault(int(idx), {})[name] = v
    for idx, d in meta["optim_scalars"].items():
        ostate.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": ostate, "param_groups": meta["optim_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta


def train(
    cfg: TrainConfig, market: Market, out_dir: str | Path, progress: bool = True, resume: bool = True
) -> TrainedModel:
    """Train ``cfg.model`` on ``market`` (cross-entropy, one optimiser step per freshly sampled batch).

    Writes the run directory described in the module docstring. With ``resume`` and a checkpoint of the
    same config in ``out_dir``, training continues from it (bit-identical to an uninterrupted run on CPU).
    """
    if market.features.window != cfg.features.window or market.features.horizon != cfg.features.horizon:
        raise ValueError(f"train: market features {market.features} differ from the config's {cfg.features}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.safetensors"
    if (out / "config.json").exists() and ckpt.exists() and resume:
        # Steps may grow (continue a run); where it runs and how it is evaluated do not change the training.
        free = {"steps": cfg.steps, "device": cfg.device, "eval_n": cfg.eval_n, "ckpt_every": cfg.ckpt_every}
        if replace(TrainConfig.from_dict(read_json(out / "config.json")), **free) != cfg:
            raise ValueError(f"{out}: holds a checkpoint of a different config; use another --out or delete it")
    write_json(out / "config.json", cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    opt = _make_optimizer(cfg, model)
    rng = np.random.default_rng(cfg.seed)
    step, log = 0, []
    if resume and ckpt.exists():
        meta = _load_checkpoint(ckpt, model, opt)
        step, log = int(meta["step"]), meta["log"]
        rng.bit_generator.state = meta["numpy_rng"]
        tau, normalizer = float(meta["tau"]), Normalizer.from_dict(meta["normalizer"])
    else:
        tau = market.fit_tau()
        fit_rng = np.random.default_rng([cfg.seed, 1])
        normalizer = Normalizer.fit(market.swa_windows(*market.sample_train(cfg.scale_n, fit_rng)))
    loss_fn = nn.CrossEntropyLoss()

    def checkpoint() -> None:
        _save_checkpoint(ckpt, model, opt, {"step": step, "log": log, "numpy_rng": rng.bit_generator.state,
                                            "tau": tau, "normalizer": normalizer.to_dict()})

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.model.kind}/{cfg.model.preset}", unit="step")
    t0 = time.perf_counter()
    ema_loss = ema_acc = None
    model.train()
    try:
        while step < cfg.steps:
            day, start = market.sample_train(cfg.batch, rng)
            x = torch.from_numpy(normalizer.numpy(market.swa_windows(day, start))).to(device)
            y = torch.from_numpy(market.labels(day, start, tau)).to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            lv, acc = float(loss.detach()), float((logits.detach().argmax(1) == y).float().mean())
            ema_loss = lv if ema_loss is None else 0.95 * ema_loss + 0.05 * lv
            ema_acc = acc if ema_acc is None else 0.95 * ema_acc + 0.05 * acc
            if step % 10 == 0 or step == cfg.steps:
                log.append({"step": step, "loss": round(ema_loss, 5), "train_acc": round(ema_acc, 5)})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{ema_loss:.4f}", acc=f"{ema_acc:.3f}")
            if step % cfg.ckpt_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        if bar is not None:
            bar.close()
    checkpoint()
    model.eval()
    info = {
        "parameters": count_parameters(model),
        "train_seconds_this_session": time.perf_counter() - t0,
        "device": device,
        "market": market.describe(),
    }
    write_json(out / "train_log.json", {"log": log, **info})
    trained = TrainedModel(model, normalizer, tau, cfg, device=device, info=info)
    trained.save(out)
    return trained

