"""Model alignment for transferability (spec-002 chapter 6).

The attacker owns a source (surrogate) model and one or more *witness* models trained independently on the same
distribution. Alignment fine-tunes the source so that its outputs match the witnesses' on unlabeled images
(eq. 6.1, output space, KL divergence), the witnesses frozen:

    l_a(x) = T^2 KL( softmax(f_w(x) / T) || softmax(f_s(x) / T) ),  T = 4 (the authors' code), averaged over witnesses,

for one epoch (SGD momentum 0.9, cosine schedule). Labels are never read. Any attack then runs on the aligned
source; transfer is measured on separately trained target models that neither the alignment nor the attack
touched (the thesis' black-box threat model: no queries to the target). Giving a target's own weights as the
witness turns it into the query-access variant (aligning to the target's outputs); the study keeps them apart.

:func:`run_alignment_study` trains, per architecture, a source, a witness and a target (different seeds), aligns
every source with every witness, and reports transfer error rates of PGD-20 before and after alignment (Table 6.3),
the similarity metrics of Table 6.1 (KL, prediction agreement, input-gradient cosine) and the input-gradient norm
of Table 6.2.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.images import ImageSet
from data_loaders.rundir import finish_run, load_weights, make_run_dir, resolve_device, save_weights
from vision.attacks import PGD
from vision.defenses.standard import StandardTraining
from vision.models import build_model
from vision.studies.common import (
    adversarial_examples,
    bar_plot,
    config_matches,
    fit,
    input_gradients,
    load_subset,
    make_optimizer,
    predict,
    write_table,
)


def alignment_kl(source_logits: Tensor, witness_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """T^2 KL(softmax(witness / T) || softmax(source / T)), mean over the batch (Hinton's distillation form)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    log_s = F.log_softmax(source_logits.float() / t, dim=1)
    log_w = F.log_softmax(witness_logits.float() / t, dim=1)
    return F.kl_div(log_s, log_w, reduction="batchmean", log_target=True) * t * t


class AlignmentLoss:
    """A training 'defense' for :func:`vision.studies.common.fit`: the alignment loss to frozen witnesses.

    The labels passed in are ignored (alignment uses unlabeled data); the witnesses run in eval mode without
    gradients.
    """

    name = "alignment"

    def __init__(self, witnesses: list[nn.Module], temperature: float = 4.0) -> None:
        if not witnesses:
            raise ValueError("alignment needs at least one witness model")
        self.witnesses = [w.eval() for w in witnesses]
        for w in self.witnesses:
            w.requires_grad_(False)
        self.temperature = float(temperature)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        with torch.no_grad():
            targets = [w(x) for w in self.witnesses]
        loss = torch.stack([alignment_kl(logits, t, self.temperature) for t in targets]).mean()
        return loss, logits


def align(source: nn.Module, witnesses: list[nn.Module], images: Tensor, *, epochs: int = 1, lr: float = 0.01,
          temperature: float = 4.0, batch_size: int = 128, momentum: float = 0.9, weight_decay: float = 1e-4,
          seed: int = 0, progress: bool = False) -> tuple[nn.Module, list[dict[str, Any]]]:
    """A copy of ``source`` aligned to ``witnesses`` on ``images`` (uint8, no labels); the source is not changed."""
    aligned = copy.deepcopy(source)
    aligned.requires_grad_(True)
    data = ImageSet(images, torch.zeros(images.shape[0], dtype=torch.long, device=images.device), ["-"], "align")
    opt = make_optimizer(aligned, "sgd", lr, momentum, weight_decay)
    hist = fit(aligned, AlignmentLoss(witnesses, temperature), data, epochs=epochs, batch_size=batch_size,
               optimizer=opt, schedule="cosine", seed=seed, progress=progress, desc="align")
    return aligned.eval(), hist


@torch.no_grad()
def divergence(source: nn.Module, witness: nn.Module, x: Tensor, temperature: float = 1.0) -> float:
    """Mean T^2 KL(witness || source) on images ``x`` (the quantity alignment minimises, at ``temperature``)."""
    return float(alignment_kl(predict(source, x), predict(witness, x), temperature))


def similarity(source: nn.Module, witness: nn.Module, x: Tensor, y: Tensor) -> dict[str, float]:
    """Table 6.1: KL (T = 1), prediction agreement, cosine of the input gradients of the CE; plus Table 6.2's
    mean input-gradient L2 norm of the source."""
    ps, pw = predict(source, x), predict(witness, x)
    gs, gw = input_gradients(source, x, y).flatten(1), input_gradients(witness, x, y).flatten(1)
    return {"kl": float(alignment_kl(ps, pw, 1.0)),
            "agreement": float((ps.argmax(1) == pw.argmax(1)).float().mean()),
            "grad_cos": float(F.cosine_similarity(gs, gw, dim=1).mean()),
            "grad_norm": float(gs.norm(dim=1).mean())}


def transfer_error(x_adv: Tensor, target: nn.Module, y: Tensor) -> float:
    """Error rate of ``target`` on adversarial images crafted elsewhere."""
    return float((predict(target, x_adv).argmax(1) != y).float().mean())


# ---------------------------------------------------------------------------------------------------------------------
# the study


@dataclass
class AlignmentStudyConfig:
    """Sources x witnesses x targets over small architectures; transfer of PGD-20 before and after alignment."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    archs: tuple[str, ...] = ("mnist_small", "mnist_large", "mlp")
    witnesses: tuple[str, ...] = ()       # default: the same architectures
    n_train: int | None = 5000            # labelled images every model is trained on
    n_align: int = 5000                   # further training images used without labels for alignment
    n_eval: int = 500                     # test images attacked (those all models involved classify right)
    epochs: int = 6
    optimizer: str = "adam"               # for training the models (sgd: momentum 0.9, weight decay 5e-4)
    lr: float = 1e-3
    batch_size: int = 128
    align_epochs: int = 1
    align_lr: float = 0.01
    temperature: float = 4.0
    eps: float = 0.1
    attack_steps: int = 20
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def _train(arch: str, role: str, seed: int, train: ImageSet, cfg: AlignmentStudyConfig, out: Path, reuse: bool,
           device: str, progress: bool) -> tuple[nn.Module, Any]:
    c, n, _ = train.shape
    torch.manual_seed(seed)
    model = build_model(arch, len(train.classes), c, n).to(device)
    path = out / f"{role}-{arch}.safetensors"
    if reuse and path.is_file():
        model.load_state_dict(load_weights(path, device))
        return model.eval(), "reused"
    opt = (make_optimizer(model, "sgd", cfg.lr, 0.9, 5e-4) if cfg.optimizer == "sgd"
           else make_optimizer(model, cfg.optimizer, cfg.lr))
    hist = fit(model, StandardTraining(), train, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
               schedule="piecewise", seed=seed, progress=progress, desc=f"{role} {arch}",
               augment=cfg.dataset == "cifar10")
    save_weights(path, model.state_dict(), {"model": arch, "role": role})
    return model.eval(), hist


def run_alignment_study(cfg: AlignmentStudyConfig, out: str | Path, *, overwrite: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Train sources, witnesses and targets, align every source with every witness, measure transfer."""
    if not cfg.archs:
        raise ValueError("need at least one architecture (--archs)")
    if cfg.n_align < 1 or cfg.n_eval < 1 or cfg.align_epochs < 1:
        raise ValueError("need n_align >= 1, n_eval >= 1 and align_epochs >= 1")
    device = resolve_device(cfg.device)
    out = Path(out)
    reuse = config_matches(out, cfg)
    n_train = cfg.n_train if cfg.n_train is not None else 10 ** 9
    pool = load_subset(cfg.dataset, cfg.root, "train", None, cfg.seed, device)
    if cfg.n_train is not None and cfg.n_train + cfg.n_align > len(pool):
        raise ValueError(f"n_train + n_align = {cfg.n_train + cfg.n_align} exceeds the {len(pool)} training images")
    train = pool.subset(slice(0, min(n_train, len(pool) - cfg.n_align)))
    align_x = pool.x[len(train): len(train) + cfg.n_align]     # disjoint from the models' training images
    test = load_subset(cfg.dataset, cfg.root, "test", None, None, device)
    witness_archs = cfg.witnesses or cfg.archs
    c, n, _ = train.shape
    for a in set(cfg.archs) | set(witness_archs):
        build_model(a, len(train.classes), c, n)
    out = make_run_dir(out, cfg, overwrite=overwrite)

    hist: dict[str, Any] = {}
    sources, witnesses, targets = {}, {}, {}
    for a in cfg.archs:
        sources[a], hist[f"source-{a}"] = _train(a, "source", cfg.seed, train, cfg, out, reuse, device, progress)
        targets[a], hist[f"target-{a}"] = _train(a, "target", cfg.seed + 2, train, cfg, out, reuse, device,
                                                 progress)
    for a in witness_archs:
        witnesses[a], hist[f"witness-{a}"] = _train(a, "witness", cfg.seed + 1, train, cfg, out, reuse, device,
                                                    progress)

    aligned: dict[tuple[str, str], nn.Module] = {}
    align_rows = []
    for s in cfg.archs:
        for w in witness_archs:
            path = out / f"aligned-{s}-with-{w}.safetensors"
            t0 = time.perf_counter()
            if reuse and path.is_file():
                model = copy.deepcopy(sources[s])
                model.load_state_dict(load_weights(path, device))
                h: Any = "reused"
            else:
                model, h = align(sources[s], [witnesses[w]], align_x, epochs=cfg.align_epochs, lr=cfg.align_lr,
                                 temperature=cfg.temperature, batch_size=cfg.batch_size, seed=cfg.seed,
                                 progress=progress)
                save_weights(path, model.state_dict(), {"model": s, "witness": w})
            aligned[(s, w)] = model.eval()
            hist[f"align-{s}-{w}"] = h
            align_rows.append({"source": s, "witness": w,
                               f"KL_T{cfg.temperature:g} before (align data)": divergence(
                                   sources[s], witnesses[w], align_x[:1000], cfg.temperature),
                               f"KL_T{cfg.temperature:g} after (align data)": divergence(
                                   model, witnesses[w], align_x[:1000], cfg.temperature),
                               "seconds": round(time.perf_counter() - t0, 1)})

    # evaluation pool: test images every model classifies correctly (originals, aligned sources and targets)
    every = {**{f"source {a}": m for a, m in sources.items()}, **{f"target {a}": m for a, m in targets.items()},
             **{f"witness {a}": m for a, m in witnesses.items()},
             **{f"aligned {s} with {w}": m for (s, w), m in aligned.items()}}
    ok = torch.ones(len(test), dtype=torch.bool, device=device)
    model_rows = []
    for name, m in every.items():
        right = predict(m, test.x).argmax(1) == test.y
        model_rows.append({"model": name, "test accuracy %": round(100 * float(right.float().mean()), 2)})
        if not name.startswith("witness"):
            ok &= right
    idx = ok.nonzero().squeeze(1)[: cfg.n_eval]
    xe, ye = test.x[idx], test.y[idx]
    xs, ys = test.x[: cfg.n_eval], test.y[: cfg.n_eval]  # similarity: the first test images, unfiltered (Sec. 6.4)
    attack = PGD(cfg.eps, cfg.eps / 4, cfg.attack_steps, seed=cfg.seed)
    err_rows, gain_rows, sim_rows = [], [], []
    tnames = list(cfg.archs)
    for s in cfg.archs:
        adv = adversarial_examples(sources[s], attack, xe, ye)
        base = {t: 100 * transfer_error(adv, targets[t], ye) for t in tnames}
        white = 100 * transfer_error(adv, sources[s], ye)
        err_rows.append({"source": s, "witness": "n/a", "white-box %": round(white, 2),
                         **{f"-> {t} %": round(base[t], 2) for t in tnames}})
        gain_rows.append({"source": s, "witness": "n/a", **{f"-> {t}": round(base[t], 2) for t in tnames}})
        for w in witness_archs:
            m = aligned[(s, w)]
            adv_a = adversarial_examples(m, attack, xe, ye)
            after = {t: 100 * transfer_error(adv_a, targets[t], ye) for t in tnames}
            err_rows.append({"source": s, "witness": w, "white-box %": round(100 * transfer_error(adv_a, m, ye), 2),
                             **{f"-> {t} %": round(after[t], 2) for t in tnames}})
            gain_rows.append({"source": s, "witness": w,
                              **{f"-> {t}": f"{after[t] - base[t]:+.2f}" for t in tnames},
                              "mean change": f"{np.mean([after[t] - base[t] for t in tnames]):+.2f}"})
            before_sim = similarity(sources[s], witnesses[w], xs, ys)
            after_sim = similarity(m, witnesses[w], xs, ys)
            sim_rows.append({"source / witness": f"{s} / {w}",
                             "KL before": round(before_sim["kl"], 4), "KL after": round(after_sim["kl"], 4),
                             "agreement before %": round(100 * before_sim["agreement"], 2),
                             "agreement after %": round(100 * after_sim["agreement"], 2),
                             "grad cos before": round(before_sim["grad_cos"], 4),
                             "grad cos after": round(after_sim["grad_cos"], 4),
                             "||grad|| before": round(before_sim["grad_norm"], 4),
                             "||grad|| after": round(after_sim["grad_norm"], 4)})
    title = (f"{cfg.dataset}: transfer error (%) of PGD-{cfg.attack_steps} (Linf {cfg.eps:g}, step {cfg.eps / 4:g}) "
             f"on {len(idx)} test images all models classify correctly")
    write_table(out, "transfer_error", err_rows, title)
    write_table(out, "transfer_change", gain_rows, "Change of the transfer error after alignment (points; the n/a "
                "row is the unaligned source's error, as in Table 6.3)")
    write_table(out, "similarity", sim_rows, f"Source-witness similarity before/after alignment on the first "
                f"{len(ys)} test images (Table 6.1) and the source's input-gradient norm (Table 6.2)")
    write_table(out, "models", model_rows, f"Clean accuracy of every model on the {len(test)} test images")
    write_table(out, "alignment_loss", align_rows, "The divergence alignment minimises, before and after")
    pairs = [f"{r['source']} / {r['witness']}" for r in err_rows if r["witness"] != "n/a"]
    before = [np.mean([r[f"-> {t} %"] for t in tnames]) for r in err_rows if r["witness"] == "n/a"
              for _ in witness_archs]
    after = [np.mean([r[f"-> {t} %"] for t in tnames]) for r in err_rows if r["witness"] != "n/a"]
    bar_plot(out / "transfer.png", pairs, {"before alignment": before, "after alignment": after},
             "mean transfer error over targets (Fig. 6.1)", "error (%)")
    metrics = {"device": device, "n_eval": int(len(idx)), "n_train": len(train), "n_align": int(align_x.shape[0]),
               "transfer_error": err_rows, "transfer_change": gain_rows, "similarity": sim_rows,
               "alignment_loss": align_rows, "models": model_rows, "histories": hist}
    finish_run(out, metrics)
    return metrics

