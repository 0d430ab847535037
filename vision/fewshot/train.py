"""Meta-training of a few-shot learner on base-class episodes: natural, adversarial querying (AQ) and
meta-TRADES, as one config -> one run directory.

Per batch of episodes (spec-000 Alg. 3 and Alg. 5): embed the support set and fit the head (clean support, never
attacked); AQ attacks the query images with PGD (``attack_steps`` signed steps of ``step_size`` from a random start
in the Linf ball, the model in train mode, the fitted head frozen during the attack) and minimises the query
cross-entropy at the attacked queries, backpropagating through the head into the embedding. Meta-TRADES
minimises ``CE(clean queries) + trades_coef * KL(p_clean || p_adv)`` (``trades_coef`` = 1/lambda in the thesis)
with the same attacked queries.

The run directory holds ``config.json``, ``metrics.json`` (history, timing, data summary),
``weights.safetensors`` (backbone and head) and ``weights-last.safetensors`` (after every epoch).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from data_loaders.rundir import finish_run, make_run_dir, resolve_device, save_weights
from vision.attacks.pgd import PGD
from vision.defenses.loop import lr_factor

from .attacks import EpisodeClassifier
from .backbones import BACKBONES
from .datasets import FEWSHOT_DATASETS, load_fewshot
from .episodes import EpisodeSampler
from .heads import HEADS
from .model import as_float, build_fewshot_model

TRAININGS = ("natural", "aq", "trades")
SCHEDULES = ("cosine", "constant", "metaoptnet")

# cifar-fs-paper: the adversarial-querying code's defaults (spec-000 3.2): R2-D2 embedding and head, 5-way 15-shot
# 6-query training episodes, 8 per batch, 1000 batches x 60 epochs, SGD (Nesterov, momentum 0.9, weight decay
# 5e-4) at lr 0.1 with multipliers 1 / 0.06 / 0.012 / 0.0024 from epochs 0 / 20 / 40 / 50, PGD-7 at 8/255, step 2/255.
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {"dataset": "mnist-fashion", "backbone": "conv4", "width": 32, "way": 5, "shot": 5, "query": 6,
            "episodes_per_batch": 4, "batches": 100, "epochs": 4, "eps": 0.2, "attack_steps": 7,
            "optimizer": "adam", "lr": 1e-3, "schedule": "cosine", "weight_decay": 0.0},
    "cifar-fs-paper": {"dataset": "cifar-fs", "backbone": "r2d2", "head": "ridge", "training": "aq", "way": 5,
                       "shot": 15, "query": 6, "episodes_per_batch": 8, "batches": 1000, "epochs": 60,
                       "eps": 8 / 255, "step_size": 2 / 255, "attack_steps": 7, "optimizer": "sgd", "lr": 0.1,
                       "schedule": "metaoptnet", "weight_decay": 5e-4, "per_class": None},
}


@dataclass
class FewShotConfig:
    """A meta-training run. ``None`` fields are filled by :func:`resolve_fewshot_config`."""

    dataset: str = "mnist-fashion"
    root: str | None = None
    per_class: int | None = 600         # images kept per class (seeded), None = all
    backbone: str = "conv4"
    width: int = 32                     # conv4 channels
    head: str = "ridge"
    training: str = "natural"
    way: int = 5
    shot: int = 5                       # training shots (evaluation chooses its own)
    query: int = 6                      # training queries per class
    episodes_per_batch: int = 4
    batches: int = 100                  # batches per epoch
    epochs: int = 4
    eps: float = 0.2
    step_size: float | None = None      # default eps / 4 (2/255 at 8/255)
    attack_steps: int = 7
    trades_coef: float = 1.0            # meta-TRADES: 1 / lambda
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    ridge_lambda: float = 50.0
    svm_cost: float = 0.1
    svm_ridge: float = 1.0
    maml_steps: int = 10
    maml_lr: float = 0.01
    head_scale: float = 1.0             # initial learnable logit scale
    seed: int = 0
    device: str = "auto"


def config_from_preset(preset: str | None, **overrides: Any) -> FewShotConfig:
    """A config from ``preset`` (see :data:`PRESETS`) with the non-None ``overrides`` on top."""
    base: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} (--preset)")
        base.update(PRESETS[preset])
    base.update({k: v for k, v in overrides.items() if v is not None})
    return FewShotConfig(**base)


def resolve_fewshot_config(cfg: FewShotConfig) -> FewShotConfig:
    """Fill defaults and validate (one-line errors naming the flag)."""
    c = FewShotConfig(**asdict(cfg))
    for value, allowed, flag in ((c.dataset, FEWSHOT_DATASETS, "--dataset"), (c.backbone, BACKBONES, "--backbone"),
                                 (c.head, HEADS, "--head"), (c.training, TRAININGS, "--training"),
                                 (c.schedule, SCHEDULES, "--schedule"), (c.optimizer, ("sgd", "adam"), "--optimizer")):
        if value not in allowed:
            raise ValueError(f"unknown {flag[2:]} {value!r}; choose one of {', '.join(allowed)} ({flag})")
    if c.step_size is None:
        c.step_size = c.eps / 4
    if c.eps < 0 or c.attack_steps < 0 or c.epochs < 1 or c.batches < 1 or c.episodes_per_batch < 1:
        raise ValueError("need --eps >= 0, --attack-steps >= 0, --epochs >= 1, --batches >= 1, "
                         "--episodes-per-batch >= 1")
    if c.training != "natural" and (c.eps == 0 or c.attack_steps == 0):
        raise ValueError(f"training {c.training!r} attacks the queries: needs --eps > 0 and --attack-steps > 0")
    return c


def _schedule(name: str, epochs: int, batches: int):
    if name == "metaoptnet":
        def f(step: int) -> float:
            e = step // batches
            return 1.0 if e < 20 else (0.06 if e < 40 else (0.012 if e < 50 else 0.0024))
        return f
    return lr_factor(name, epochs * batches)


def query_loss(model, fitted, query_x, query_y, c: FewShotConfig, attack: PGD | None) -> tuple[torch.Tensor,
                                                                                              torch.Tensor]:
    """The meta-training loss of one batch of episodes and the logits it was computed from (flattened)."""
    b, q = query_x.shape[:2]
    yq = query_y.reshape(-1)
    if attack is None:
        logits = model.logits(fitted, query_x).reshape(b * q, -1)
        return F.cross_entropy(logits, yq), logits
    wrapper = EpisodeClassifier(model.backbone, fitted.detach(), b)
    x_adv = attack(wrapper, query_x.reshape(b * q, *query_x.shape[2:]), yq).x_adv.view_as(query_x)
    logits_adv = model.logits(fitted, x_adv).reshape(b * q, -1)
    if c.training == "aq":
        return F.cross_entropy(logits_adv, yq), logits_adv
    logits = model.logits(fitted, query_x).reshape(b * q, -1)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.log_softmax(logits, 1), reduction="batchmean", log_target=True)
    return F.cross_entropy(logits, yq) + c.trades_coef * kl, logits_adv


def fewshot_train_run(cfg: FewShotConfig, out: str | Path, *, overwrite: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Meta-train as ``cfg`` says, write the run directory ``out`` and return the metrics."""
    c = resolve_fewshot_config(cfg)
    device = resolve_device(c.device)
    torch.manual_seed(c.seed)
    data = load_fewshot(c.dataset, c.root, c.per_class, c.seed)
    sampler = EpisodeSampler(data, "base", c.way, c.shot, c.query, c.seed)
    model = build_fewshot_model(c, data.shape).to(device)
    out = make_run_dir(out, c, overwrite=overwrite)
    data = data.to(device)
    sampler.data = data

    if c.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay,
                              nesterov=c.momentum > 0)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _schedule(c.schedule, c.epochs, c.batches))
    attack = None
    if c.training != "natural":
        attack = PGD(c.eps, c.step_size, c.attack_steps, norm="linf", restarts=1, random_start=True, select="last",
                     use_eval_mode=False)

    history: list[dict[str, Any]] = []
    train_seconds = 0.0
    for epoch in tqdm(range(c.epochs), desc=f"{c.training} {c.head}", disable=not progress, unit="epoch"):
        model.train()
        t0 = time.perf_counter()
        tot_loss, tot_correct, seen = 0.0, 0, 0
        for _ in tqdm(range(c.batches), desc=f"epoch {epoch + 1}/{c.epochs}", leave=False, disable=not progress):
            ep = sampler.sample(c.episodes_per_batch)
            sx, qx = as_float(ep.support_x), as_float(ep.query_x)
            fitted = model.fit(sx, ep.support_y, c.way)
            loss, logits = query_loss(model, fitted, qx, ep.query_y, c, attack)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot_loss += float(loss.detach()) * logits.shape[0]
            tot_correct += int((logits.argmax(1) == ep.query_y.reshape(-1)).sum())
            seen += logits.shape[0]
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        history.append({"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"], "loss": tot_loss / seen,
                        "query_acc": tot_correct / seen, "seconds": seconds})
        save_weights(out / "weights-last.safetensors", model.state_dict())

    metrics = {"input_shape": list(data.shape), "data": data.summary(), "device": device,
               "params": sum(p.numel() for p in model.parameters()), "train_seconds": train_seconds,
               "seconds_per_epoch": train_seconds / len(history), "epochs_run": len(history), "history": history}
    save_weights(out / "weights.safetensors", model.state_dict(), {"head": c.head, "training": c.training})
    finish_run(out, metrics)
    return metrics
