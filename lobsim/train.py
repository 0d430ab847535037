"""Training valuation models on freshly sampled snippets; saving and loading trained models without pickle.

A run directory holds ``config.json`` (the TrainConfig), ``checkpoint.safetensors`` (model + optimiser + RNG
state + the best weights so far, rewritten atomically every ``ckpt_every`` steps and on Ctrl-C, so an interrupted
run resumes where it stopped), then ``weights.safetensors`` + ``model.json`` (the finished model: config, inputs,
normaliser, tau) and ``train_log.json``; ``metrics.json`` comes from :func:`lobsim.evaluate.evaluate`.

Model selection never looks at the test snippets: with ``val_fraction > 0`` the last part of every training region
(in time, after a gap of window + horizon steps) is a validation split; the validation loss is measured every
``eval_every`` steps, training stops after ``patience`` evaluations without improvement, and the weights with the
lowest validation loss are kept (early stopping).
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
from lobsim.adapters import features_torch, n_channels, parse_inputs, price_like_channels
from lobsim.dataset import FeatureConfig, Market
from lobsim.evaluate import EvalResult, evaluate
from lobsim.features import InputNormalizer, Normalizer
from lobsim.models import ModelConfig, build_model, count_parameters

MODEL_FORMAT = "advsim.valuation-model"
MODEL_FORMAT_VERSION = 2  # 2: model.json records the inputs; version 1 files (no inputs) are SWA-only
READABLE_VERSIONS = (1, 2)
OPTIMIZERS = ("adam", "sgd")

__all__ = ["TrainConfig", "TrainedModel", "train", "load_run", "default_config", "evaluate", "EvalResult"]


@dataclass
class TrainConfig:
    """Everything that determines a training run (same config + same seed => same weights on one machine).

    ``optimizer``: ``adam`` (default: robust to the scale of 6,000 correlated inputs) or ``sgd`` (the thesis'
    choice; uses ``momentum``). ``scale_n``: training windows used to fit the normaliser. ``eval_n``: test
    snippets for the evaluation after training. ``data``: how the market was built (for ``advsim lob
    evaluate``), filled by the CLI. ``inputs``: the feature adapters the model reads (``lobsim.adapters``; SWA
    alone is the thesis input). ``val_fraction``: share of every training region's time held out for early
    stopping (0: none, the final weights are kept); ``eval_every`` steps between validation checks on ``val_n``
    snippets; ``patience``: checks without improvement before stopping.
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
    inputs: list[str] = field(default_factory=lambda: ["swa"])
    val_fraction: float = 0.0
    eval_every: int = 50
    patience: int = 8
    val_n: int = 2000
    defense: dict[str, Any] | None = None  # lobsim.defenses.DefenseConfig as a dict; None: plain training

    def __post_init__(self) -> None:
        if isinstance(self.model, dict):
            self.model = ModelConfig.from_dict(self.model)
        if isinstance(self.features, dict):
            self.features = FeatureConfig.from_dict(self.features)
        self.inputs = list(parse_inputs(self.inputs))
        if not 0.0 <= self.val_fraction < 1.0 or self.eval_every < 1 or self.patience < 1 or self.val_n < 1:
            raise ValueError(f"TrainConfig: need 0 <= val_fraction < 1, eval_every, patience, val_n >= 1 (got "
                             f"{self.val_fraction}, {self.eval_every}, {self.patience}, {self.val_n})")
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
    base: dict[str, Any] = {"steps": 1500, "batch": 256, "lr": lr, "val_fraction": 0.2, "eval_every": 50,
                            "patience": 8}
    if preset == "paper":
        base.update(steps=5000, batch=2000, lr=1e-5 if kind == "mlp" else lr, eval_every=100)
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["inputs"] = list(parse_inputs(base.get("inputs")))
    return TrainConfig(model=ModelConfig(kind=kind, preset=preset, window=features.window), features=features, **base)


@dataclass
class TrainedModel:
    """A trained model with what it needs to read the book: its inputs, the normaliser, the label threshold.

    ``normalizer`` is an :class:`~lobsim.features.InputNormalizer` (an SWA-only
    :class:`~lobsim.features.Normalizer` is converted); ``inputs`` (the adapters' names) come from it.
    """

    model: nn.Module
    normalizer: InputNormalizer
    tau: float
    config: TrainConfig
    device: str = "cpu"
    run_dir: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.normalizer, Normalizer):
            self.normalizer = InputNormalizer.from_swa(self.normalizer)

    @property
    def inputs(self) -> tuple[str, ...]:
        """The feature adapters the model reads, in channel order (``("swa",)`` for the thesis' models)."""
        return tuple(self.normalizer.inputs)

    def logits_from_swa(self, swa: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 3)`` of SWA windows ``(B, W)`` in dollars (any common shift): normaliser + model.

        Only for SWA-only models (``inputs == ("swa",)``): the attacks' fused fast path."""
        if self.inputs != ("swa",):
            raise ValueError(f"logits_from_swa: this model reads {list(self.inputs)}, not SWA alone; use "
                             "logits_from_book")
        dtype = next(self.model.parameters()).dtype
        return self.model(self.normalizer.torch(swa).to(dtype))

    def logits_from_features(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 3)`` of raw (not normalised) input windows ``(B, W, C)`` from the adapters."""
        dtype = next(self.model.parameters()).dtype
        return self.model(self.normalizer.torch(x).to(dtype))

    def logits_from_book(self, prices: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, 3)`` of books ``(B, W, 2, L)``: prices in dollars (any common shift per snippet), float
        sizes (perturbation included), bool mask of real levels. The interface every attack uses."""
        if self.inputs == ("swa",):
            from lobsim.features import swa_torch

            return self.logits_from_swa(swa_torch(prices, sizes, mask))
        return self.logits_from_features(features_torch(self.inputs, prices, sizes, mask))

    @torch.no_grad()
    def predict(self, market: Market, day: np.ndarray, start: np.ndarray, batch: int = 1024) -> np.ndarray:
        """int64 predicted classes (0 down, 1 flat, 2 up) of the snippets ``(day, start)``."""
        return self.predict_logits(market, day, start, batch).argmax(1)

    @torch.no_grad()
    def predict_logits(self, market: Market, day: np.ndarray, start: np.ndarray, batch: int = 1024) -> np.ndarray:
        """float32 ``(B, 3)`` logits of the snippets ``(day, start)`` (eval mode)."""
        day = np.atleast_1d(np.asarray(day, np.int64))
        start = np.atleast_1d(np.asarray(start, np.int64))
        was_training = self.model.training
        self.model.eval()
        out = np.empty((day.shape[0], 3), np.float32)
        try:
            for i in range(0, day.shape[0], batch):
                x = self.normalizer.numpy(market.windows(self.inputs, day[i : i + batch], start[i : i + batch]))
                out[i : i + batch] = self.model(torch.from_numpy(x).to(self.device)).float().cpu().numpy()
        finally:
            self.model.train(was_training)
        return out

    def save(self, run_dir: str | Path) -> Path:
        """Write ``weights.safetensors`` and ``model.json`` (config, inputs, normaliser, tau) into ``run_dir``."""
        run_dir = Path(run_dir)
        save_weights(run_dir / "weights.safetensors", self.model.state_dict(), {"format": MODEL_FORMAT})
        meta = {
            "format": MODEL_FORMAT,
            "version": MODEL_FORMAT_VERSION,
            "config": self.config.to_dict(),
            "model": self.config.model.resolved().to_dict(),
            "inputs": list(self.inputs),
            "normalizer": self.normalizer.to_dict(),
            "tau": self.tau,
            "info": self.info,
        }
        write_json(run_dir / "model.json", meta)
        self.run_dir = run_dir
        return run_dir


def load_run(run_dir: str | Path, device: str = "cpu") -> TrainedModel:
    """Load a trained model from a run directory (``model.json`` + ``weights.safetensors``); never unpickles.

    Model files without recorded inputs (format version 1) are SWA-only models."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "model.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: no such file; {run_dir} is not a trained-model run directory")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ValueError(f"{meta_path}: not an advsim model file (expected format {MODEL_FORMAT!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{meta_path}: model file version {meta.get('version')} is not supported "
                         f"(this advsim reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    from lobsim.runs import check_run_config

    check_run_config(run_dir, meta)  # a missing or corrupt config.json is refused, never ignored
    try:
        config = TrainConfig.from_dict(meta["config"])
        mcfg = ModelConfig.from_dict(meta["model"])
        normalizer = InputNormalizer.from_dict(meta["normalizer"])
        tau = float(meta["tau"])
        inputs = tuple(meta.get("inputs", ["swa"]))
        if inputs != normalizer.inputs or list(inputs) != config.inputs:
            raise ValueError(f"inputs {list(inputs)} disagree with the normaliser's {list(normalizer.inputs)} or "
                             f"the config's {config.inputs}")
        if mcfg.channels != normalizer.channels:
            raise ValueError(f"the model reads {mcfg.channels} channel(s), the normaliser has {normalizer.channels}")
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


def _save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any],
                     best: dict[str, torch.Tensor] | None = None) -> None:
    """One atomic safetensors file: model tensors, optimiser tensors, torch RNG, the best weights so far (early
    stopping); the rest as JSON metadata."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if best is not None:
        tensors.update({f"best.{k}": v.detach().cpu().contiguous() for k, v in best.items()})
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


def _load_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer
                     ) -> tuple[dict[str, Any], dict[str, torch.Tensor] | None]:
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
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")} or None
    ostate: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, idx, name = k.split(".", 2)
            ostate.setdefault(int(idx), {})[name] = v
    for idx, d in meta["optim_scalars"].items():
        ostate.setdefault(int(idx), {}).update(d)
    opt.load_state_dict({"state": ostate, "param_groups": meta["optim_groups"]})
    torch.set_rng_state(tensors["rng.torch"])
    return meta, best


def fit_normalizer(market: Market, inputs: tuple[str, ...], regions: list, n: int, seed: int) -> InputNormalizer:
    """The input normaliser fitted on ``n`` seeded training windows of ``regions``."""
    refs = Market.sample_regions(regions, n, np.random.default_rng([seed, 1]))
    return InputNormalizer.fit(market.windows(inputs, *refs), price_like_channels(inputs, market.books[0].levels),
                               inputs)


@torch.no_grad()
def loss_and_accuracy(trained: TrainedModel, market: Market, refs: tuple[np.ndarray, np.ndarray]
                      ) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``trained`` on the snippets ``refs`` (eval mode)."""
    logits = torch.from_numpy(trained.predict_logits(market, *refs))
    y = torch.from_numpy(market.labels(*refs, trained.tau))
    return float(nn.functional.cross_entropy(logits, y)), float((logits.argmax(1) == y).float().mean())


def train(
    cfg: TrainConfig, market: Market, out_dir: str | Path, progress: bool = True, resume: bool = True,
    hook: Any = None,
) -> TrainedModel:
    """Train ``cfg.model`` on ``market`` (cross-entropy, one optimiser step per freshly sampled batch).

    Writes the run directory described in the module docstring. With ``resume`` and a checkpoint of the
    same config in ``out_dir``, training continues from it (bit-identical to an uninterrupted run on CPU).
    The model's channel count is set from ``cfg.inputs`` and the market's levels. ``hook``: the defense of
    ``cfg.defense`` (``lobsim.defenses.make_hook``; ``lobsim.defenses.train_defended`` passes it): it replaces the
    loss of every step, the validation loss, and may stop training (catastrophic-overfitting guard).
    """
    if cfg.defense and hook is None:
        raise ValueError("train: the config has a defense; train it with lobsim.defenses.train_defended")
    if market.features.window != cfg.features.window or market.features.horizon != cfg.features.horizon:
        raise ValueError(f"train: market features {market.features} differ from the config's {cfg.features}")
    inputs = tuple(cfg.inputs)
    cfg = replace(cfg, model=replace(cfg.model, channels=n_channels(inputs, market.books[0].levels)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.safetensors"
    if (out / "config.json").exists() and ckpt.exists() and resume:
        # Steps may grow (continue a run); where it runs and how it is evaluated do not change the training.
        free = {"steps": cfg.steps, "device": cfg.device, "eval_n": cfg.eval_n, "ckpt_every": cfg.ckpt_every}
        if replace(TrainConfig.from_dict(read_json(out / "config.json")), **free) != cfg:
            raise ValueError(f"{out}: holds a checkpoint of a different config; use another --out, or --fresh "
                             "to start over there")
    write_json(out / "config.json", cfg)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    opt = _make_optimizer(cfg, model)
    rng = np.random.default_rng(cfg.seed)
    if cfg.val_fraction > 0:
        fit_regions, val_regions = market.validation_split(cfg.val_fraction)
        val_refs = Market.refs_in(val_regions, cfg.val_n, seed=cfg.seed)
    else:
        fit_regions, val_refs = list(market.train_regions), None
    step, log = 0, []
    best: dict[str, torch.Tensor] | None = None
    es = {"best_loss": None, "best_step": 0, "bad": 0, "stopped_early": False}
    if resume and ckpt.exists():
        meta, best = _load_checkpoint(ckpt, model, opt)
        step, log = int(meta["step"]), meta["log"]
        rng.bit_generator.state = meta["numpy_rng"]
        tau, normalizer = float(meta["tau"]), InputNormalizer.from_dict(meta["normalizer"])
        es.update(meta.get("early_stopping", {}))
        if progress:
            import sys

            print(f"{out}: resuming from step {step} of {cfg.steps} ({ckpt.name}; --fresh starts over)",
                  file=sys.stderr, flush=True)
    else:
        tau = market.fit_tau()
        normalizer = fit_normalizer(market, inputs, fit_regions, cfg.scale_n, cfg.seed)
    trained = TrainedModel(model, normalizer, tau, cfg, device=device)
    loss_fn = nn.CrossEntropyLoss()
    if hook is not None:
        hook.start(trained, market, fit_regions, cfg.steps, cfg.seed)
        if resume and ckpt.exists():
            hook.load_state_dict(meta.get("defense"))

    def checkpoint() -> None:
        _save_checkpoint(ckpt, model, opt, {"step": step, "log": log, "numpy_rng": rng.bit_generator.state,
                                            "tau": tau, "normalizer": normalizer.to_dict(), "early_stopping": es,
                                            **({"defense": hook.state_dict()} if hook is not None else {})},
                         best)

    def validate() -> bool:
        """Check the validation loss; keep the best weights; True when training should stop."""
        nonlocal best
        vl, va = (hook.validate(trained, market, val_refs) if hook is not None
                  else loss_and_accuracy(trained, market, val_refs))
        model.train()
        log.append({"step": step, "val_loss": round(vl, 5), "val_acc": round(va, 5)})
        if es["best_loss"] is None or vl < es["best_loss"] - 1e-4:
            es.update(best_loss=vl, best_val_acc=va, best_step=step, bad=0)
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            es["bad"] += 1
        return es["bad"] >= cfg.patience

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=f"train {cfg.model.kind}/{cfg.model.preset}", unit="step")
    t0 = time.perf_counter()
    ema_loss = ema_acc = None
    model.train()
    try:
        while step < cfg.steps and not es["stopped_early"]:
            day, start = market.sample_regions(fit_regions, cfg.batch, rng)
            x = torch.from_numpy(normalizer.numpy(market.windows(inputs, day, start))).to(device)
            y = torch.from_numpy(market.labels(day, start, tau)).to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if hook is not None:
                loss = hook.loss(step, day, start, y, loss)
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
            if val_refs is not None and (step % cfg.eval_every == 0 or step == cfg.steps):
                es["stopped_early"] = validate() and step < cfg.steps
            if hook is not None and hook.after_step(step):
                es["stopped_early"] = True  # the defense's guard restored earlier weights
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{ema_loss:.4f}", acc=f"{ema_acc:.3f}",
                                **({"val": f"{es.get('best_val_acc', 0):.3f}"} if val_refs is not None else {}))
            if step % cfg.ckpt_every == 0:
                checkpoint()
    except KeyboardInterrupt:
        checkpoint()
        raise
    finally:
        if bar is not None:
            bar.close()
    checkpoint()
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    train_refs = Market.refs_in(fit_regions, cfg.val_n, seed=cfg.seed + 1)
    train_loss, train_acc = loss_and_accuracy(trained, market, train_refs)
    info = {
        "parameters": count_parameters(model),
        "inputs": list(inputs),
        "train_seconds_this_session": time.perf_counter() - t0,
        "device": device,
        "steps_done": step,
        "train_accuracy": train_acc,
        "train_loss": train_loss,
        "train_accuracy_n": int(train_refs[0].shape[0]),
        "early_stopping": ({"val_fraction": cfg.val_fraction, "best_step": es["best_step"],
                            "val_loss": es["best_loss"], "val_accuracy": es.get("best_val_acc"),
                            "val_n": int(val_refs[0].shape[0]), "stopped_early": bool(es["stopped_early"])}
                           if val_refs is not None else None),
        "market": market.describe(),
        **({"defense": hook.summary()} if hook is not None else {}),
    }
    write_json(out / "train_log.json", {"log": log, **info})
    trained.info = info
    trained.save(out)
    return trained
