"""Properties of neural networks (spec-000 chapter 6), four experiments in one run directory (``parts``):

- ``lemma61``: on images average-pooled so that there are more images than inputs (the linear problem is not
  separable, as CIFAR-10's is not), a linear classifier trained with weight decay is embedded into a deep ReLU
  MLP by Lemma 6.1 (exact outputs, every ReLU active); full-batch gradient descent from there stays at the linear
  model's loss (Theorem 6.2), while the default initialisation fits the training set. Inits: default, Lemma
  6.1, biases +20, biases U(-50, 50), biases U(-10, 10) without momentum (Table 6.1). Loss, gradient norm and
  the extreme Hessian eigenvalues (power iteration with Hessian-vector products over the whole training subset)
  at init and after.
- ``norm-bias``: no weight decay vs weight decay vs the norm-bias regulariser |‖phi‖^2 - mu^2| (mu^2 from the weight-
  decay run's final norm, "slightly higher"), several seeds, mean +- standard error (Tables 6.5-6.7).
- ``rank``: effective rank ||W||_* / ||W||_F of every layer (exact conv spectra by FFT) at init, after natural and
  adversarial training, and after continuing with RankMin (small singular values zeroed) or RankMax (singular
  values clipped) projections applied periodically; clean and PGD-20 accuracy at 8/255 and 1/255 (Tables 6.8-6.10).
- ``ntk``: the empirical NTK on a few test images before and after training, for MLP-2, MLP-4, a small ConvNet and
  Wide ResNets of several widths: relative change and correlation (Figs 6.1-6.5, qualitative in the source).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.rundir import finish_run, make_run_dir, resolve_device
from vision.attacks import PGD
from vision.defenses.loop import train_epoch
from vision.defenses.pgd_training import PGDTraining
from vision.defenses.standard import StandardTraining
from vision.models import WideResNet
from vision.studies.common import accuracy, attacked_correct, bar_plot, load_subset, write_table
from vision.theory.conv_spectrum import apply_rank_projection, effective_rank, layer_singular_values
from vision.theory.hessian import extreme_eigenvalues, hvp, loss_and_grad
from vision.theory.linear_embedding import embed_linear, min_preactivation
from vision.theory.nets import MLP, SmallConvNet, conv_layers, he_uniform_, wrap
from vision.theory.norm_bias import NormBiasTraining, mu_from_weight_decay, parameter_norm
from vision.theory.ntk import empirical_ntk, ntk_change
from vision.theory.plots import xy_lines

__all__ = ["PropertiesConfig", "run_properties", "PARTS", "INITS", "PAPER"]

PARTS = ("lemma61", "norm-bias", "rank", "ntk")
INITS = ("default", "lemma61", "bias+20", "bias-u50", "bias-u10-nm")
PAPER = {
    "table61": {"default": (4.5963, 0.5752, -1.5549, 0.0061, 0.0074, 0.0007),
                "lemma61": (1.5702, 0.0992, 0.03125, 1.5699, 0.0414, 0.0156),
                "bias+20": (31.204, 343.99, -1.7421, 2.3301, 0.0090, 0.0005),
                "bias-u50": (51.445, 378.36, -430.49, 2.3153, 0.0048, 0.0000),
                "bias-u10-nm": (12.209, 42.454, -47.733, 0.2198, 0.0564, 0.0013)},
    "sharpness": {"lemma61": 113598.85, "default": 24.01},
    "linear": {"test acc %": 40.53, "loss": 1.57, "grad": 0.00375},
    "table66_mlp": {"no-wd": "58.88 +- 0.10", "wd": "58.95 +- 0.07", "norm-bias": "59.13 +- 0.09"},
    "table66_resnet18": {"no-wd": "93.40 +- 0.04", "wd": "94.76 +- 0.03", "norm-bias": "94.99 +- 0.05"},
    "table69_mlp": {"natural": (100.00, 58.79, 3.76, 28.94), "rankmax": (99.97, 58.19, 3.72, 26.63),
                    "rankmin": (100.00, 58.06, 3.76, 28.48)},
    "table68_resnet18": {"natural": (94.66, 0.00, 31.98), "rankmax": (93.66, 0.00, 22.01),
                         "rankmin": (94.44, 0.00, 31.53), "adversarial": (79.37, 35.38, 74.27),
                         "rankmax-adv": (80.00, 35.55, 74.92), "rankmin-adv": (78.34, 33.68, 73.19)},
}


@dataclass
class PropertiesConfig:
    """Chapter-6 experiments. Defaults: the CPU preset (Fashion-MNIST subsets, small MLPs / CNNs)."""

    parts: tuple[str, ...] = PARTS
    dataset: str = "fashion-mnist"
    root: str | None = None
    n_test: int = 1000
    # lemma61
    l61_n_train: int | None = 2000
    l61_pool: int = 2
    l61_widths: tuple[int, ...] = (64, 64, 64)
    l61_linear_steps: int = 1000
    l61_linear_lr: float = 0.1
    l61_linear_wd: float = 1e-3
    l61_steps: int = 400
    l61_lr: float = 0.05
    l61_inits: tuple[str, ...] = INITS
    hessian_iters: int = 100
    # norm-bias
    nb_n_train: int | None = 2000
    nb_net: str = "mlp"
    nb_width: int = 128
    nb_epochs: int = 10
    nb_lr: float = 0.05
    nb_wd: float = 5e-4
    nb_mu_factor: float = 1.1
    nb_seeds: int = 5
    # rank
    rank_n_train: int | None = 2000
    rank_width: int = 8
    rank_epochs: int = 8
    rank_extra_epochs: int = 3
    rank_lr: float = 0.05
    rank_min: float = 0.1
    rank_max: float = 0.8
    rank_every: int = 20
    rank_adv: bool = True
    rank_eps: float = 8 / 255
    rank_eps_small: float = 1 / 255
    rank_attack_steps: int = 5
    rank_eval_steps: int = 10
    # ntk
    ntk_n_train: int | None = 1000
    ntk_images: int = 25
    ntk_epochs: int = 3
    ntk_lr: float = 0.01
    ntk_wd: float = 5e-4
    ntk_mlp_widths: tuple[int, ...] = (32, 128, 256)
    ntk_conv_widths: tuple[int, ...] = (4, 8, 16)
    ntk_wrn_widths: tuple[int, ...] = (1, 2)
    ntk_max_entries: int = 400_000_000
    batch_size: int = 128
    figures: bool = True
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def _sgd(model: nn.Module, lr: float, momentum: float = 0.9, wd: float = 0.0) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=wd)


def _epochs(model: nn.Module, defense: Any, x: Tensor, y: Tensor, opt: torch.optim.Optimizer, epochs: int,
            batch_size: int, seed: int, progress: bool, desc: str, hook: Any = None, every: int = 0) -> None:
    """``epochs`` passes with the shared loop (constant rate); ``hook(model)`` every ``every`` iterations."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    loss_fn = defense
    if hook is not None and every > 0:
        count = [0]

        def loss_fn(model: nn.Module, xb: Tensor, yb: Tensor) -> tuple[Tensor, Tensor]:
            count[0] += 1
            if count[0] % every == 0:
                hook(model)
            return defense(model, xb, yb)
    for e in range(epochs):
        train_epoch(model, loss_fn, x, y, opt, sched, batch_size, generator=gen, progress=progress,
                    desc=f"{desc} {e + 1}/{epochs}")
    if hook is not None:
        hook(model)
    model.eval()


# ---------------------------------------------------------------------------------------------------------------------
# Lemma 6.1 / Theorem 6.2


def _flat_inputs(model: nn.Module, x: Tensor, pool: int = 1) -> Tensor:
    """Normalised images, average-pooled by ``pool`` (so that the linear problem is not separable when there are
    more images than pixels), flattened."""
    z = model.normalize(x.float().div(255.0))
    return (F.avg_pool2d(z, pool) if pool > 1 else z).flatten(1)


def _gd(mlp: MLP, z: Tensor, y: Tensor, steps: int, lr: float, momentum: float, wd: float = 0.0) -> None:
    opt = torch.optim.SGD(mlp.parameters(), lr=lr, momentum=momentum, weight_decay=wd)
    for _ in range(steps):
        loss = F.cross_entropy(mlp(z), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _state(mlp: MLP, z: Tensor, y: Tensor, iters: int, seed: int) -> dict[str, float]:
    loss, g = loss_and_grad(mlp, z, y)
    dim = g.numel()
    ev = extreme_eigenvalues(lambda v: hvp(mlp, z, y, v), dim, iters, seed=seed)
    return {"loss": loss, "grad": float(g.norm()), "min_ev": ev["min"], "max_ev": ev["max"]}


def _lemma61(cfg: PropertiesConfig, train: Any, test: Any, out: Path, progress: bool,
             claims: list[dict[str, Any]]) -> dict[str, Any]:
    c, n, _ = train.shape
    k = len(train.classes)
    norm_model = wrap(nn.Identity(), c).to(train.x.device)
    z, zt = _flat_inputs(norm_model, train.x, cfg.l61_pool), _flat_inputs(norm_model, test.x, cfg.l61_pool)
    y, yt = train.y, test.y
    torch.manual_seed(cfg.seed)
    lin = MLP(z.shape[1], k, depth=1).to(z.device)
    _gd(lin, z, y, cfg.l61_linear_steps, cfg.l61_linear_lr, 0.9, cfg.l61_linear_wd)
    lin_loss, lin_g = loss_and_grad(lin, z, y)
    with torch.no_grad():
        lin_test = 100 * float((lin(zt).argmax(1) == yt).double().mean())
    res: dict[str, Any] = {"linear": {"train loss": lin_loss, "grad": float(lin_g.norm()), "test acc %": lin_test}}
    rows = []
    for init in cfg.l61_inits:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose from {', '.join(INITS)}")
        torch.manual_seed(cfg.seed + 1)
        mlp = MLP(z.shape[1], k, widths=cfg.l61_widths).to(z.device)
        gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 2)
        with torch.no_grad():
            if init == "lemma61":
                embed_linear(mlp, lin.layers[0].weight, lin.layers[0].bias, z)
            elif init == "bias+20":
                for layer in mlp.layers:
                    layer.bias.add_(20.0)
            elif init in ("bias-u50", "bias-u10-nm"):
                a = 50.0 if init == "bias-u50" else 10.0
                for layer in mlp.layers:
                    layer.bias.copy_((torch.rand(layer.bias.shape, generator=gen) * 2 - 1).to(z.device) * a)
        row: dict[str, Any] = {"init": init}
        if init == "lemma61":
            with torch.no_grad():
                row["max |MLP - linear| at init"] = float((mlp(z) - lin(z)).abs().max())
            row["min pre-activation at init"] = min_preactivation(mlp, z)
        before = _state(mlp, z, y, cfg.hessian_iters, cfg.seed)
        momentum = 0.0 if init.endswith("-nm") else 0.9
        lr = cfg.l61_lr
        if init == "lemma61" and before["max_ev"] * lr > 1.0:
            # the embedded minimum is so sharp that GD at the common rate is unstable: record that run's loss,
            # then train at a rate the curvature allows (lr lambda_max = 1; heavy ball is stable below 2 (1 + m))
            probe = copy.deepcopy(mlp)
            _gd(probe, z, y, cfg.l61_steps, lr, momentum)
            row["loss after at the common lr"] = loss_and_grad(probe, z, y)[0]
            lr = 1.0 / before["max_ev"]
        row["lr"] = lr
        _gd(mlp, z, y, cfg.l61_steps, lr, momentum)
        after = _state(mlp, z, y, cfg.hessian_iters, cfg.seed)
        with torch.no_grad():
            test_acc = 100 * float((mlp(zt).argmax(1) == yt).double().mean())
        p = PAPER["table61"][init]
        row.update({"loss@init": before["loss"], "grad@init": before["grad"], "minEV@init": before["min_ev"],
                    "maxEV@init": before["max_ev"], "loss after": after["loss"], "grad after": after["grad"],
                    "minEV after": after["min_ev"], "maxEV after": after["max_ev"], "test acc %": test_acc,
                    "paper loss/grad/minEV init": f"{p[0]} / {p[1]} / {p[2]}",
                    "paper loss/grad/minEV after": f"{p[3]} / {p[4]} / {p[5]}"})
        rows.append(row)
        if progress:
            print(f"lemma61: {init} done", flush=True)
    write_table(out, "lemma61", rows, f"Table 6.1: MLP {cfg.l61_widths} on {len(train)} {cfg.dataset} images "
                f"({z.shape[1]} inputs after {cfg.l61_pool}x{cfg.l61_pool} average pooling), "
                f"full-batch GD ({cfg.l61_steps} steps, lr {cfg.l61_lr:g} (Lemma 6.1 init: lowered to "
                f"1 / lambda_max at init when that is smaller), momentum 0.9 unless -nm); Hessian "
                f"extremes by {cfg.hessian_iters} power iterations. Linear model: train loss {lin_loss:.4f}, "
                f"grad {float(lin_g.norm()):.5f}, test acc {lin_test:.2f}%")
    res["rows"] = rows
    by = {r["init"]: r for r in rows}
    if "lemma61" in by:
        r = by["lemma61"]
        claims.append(_claim("Lemma 6.1: the embedded MLP reproduces the linear classifier exactly at init",
                             f"max |diff| {r['max |MLP - linear| at init']:.2e}, min pre-activation "
                             f"{r['min pre-activation at init']:.2f}", "exact", r["max |MLP - linear| at init"] < 1e-3))
        claims.append(_claim("Thm 6.2: training from the Lemma 6.1 init stays at the linear model's loss",
                             f"{r['loss@init']:.4f} -> {r['loss after']:.4f} (linear {lin_loss:.4f})",
                             "1.5702 -> 1.5699 (linear 1.57)", abs(r["loss after"] - lin_loss) < 0.05 * lin_loss))
        if "default" in by:
            d = by["default"]
            claims.append(_claim("The default init fits far below the linear model's loss",
                                 f"{d['loss after']:.4f} vs {r['loss after']:.4f}", "0.0061 vs 1.5699",
                                 d["loss after"] < 0.5 * r["loss after"]))
            claims.append(_claim("The Lemma 6.1 minimum is much sharper (max Hessian eigenvalue after training)",
                                 f"{r['maxEV after']:.4g} vs default {d['maxEV after']:.4g}", "113,598.85 vs 24.01",
                                 r["maxEV after"] > d["maxEV after"]))
    for b in ("bias+20", "bias-u50"):
        if b in by:
            loss = by[b]["loss after"]
            claims.append(_claim(f"Init {b} gets stuck (loss after stays far above the default's)",
                                 f"{loss:.4f}" if math.isfinite(loss) else "GD diverged (NaN)",
                                 f"{PAPER['table61'][b][3]}", "default" in by and math.isfinite(loss) and
                                 loss > 10 * max(by["default"]["loss after"], 1e-3)))
    return res


# ---------------------------------------------------------------------------------------------------------------------
# norm-bias vs weight decay


def _nb_net(cfg: PropertiesConfig, c: int, n: int, k: int) -> nn.Module:
    if cfg.nb_net == "mlp":
        return wrap(MLP(c * n * n, k, cfg.nb_width, 4), c)
    if cfg.nb_net == "cnn":
        return wrap(SmallConvNet(cfg.nb_width, c, k, n), c)
    raise ValueError(f"norm-bias net must be mlp or cnn, got {cfg.nb_net!r}")


def _norm_bias(cfg: PropertiesConfig, train: Any, test: Any, out: Path, progress: bool,
               claims: list[dict[str, Any]]) -> dict[str, Any]:
    c, n, _ = train.shape
    k = len(train.classes)
    acc: dict[str, list[float]] = {"no-wd": [], "wd": [], "norm-bias": []}
    norms: dict[str, list[float]] = {key: [] for key in acc}
    mu2s = []
    for s in range(cfg.nb_seeds):
        seed = cfg.seed + s
        for method in ("no-wd", "wd", "norm-bias"):
            torch.manual_seed(seed)
            model = _nb_net(cfg, c, n, k).to(train.x.device)
            if method == "norm-bias":
                mu2 = mu_from_weight_decay(norms["wd"][-1], cfg.nb_mu_factor)
                mu2s.append(mu2)
                defense, opt = NormBiasTraining(mu2, cfg.nb_wd / 2), _sgd(model, cfg.nb_lr)
            else:
                defense = StandardTraining()
                opt = _sgd(model, cfg.nb_lr, wd=cfg.nb_wd if method == "wd" else 0.0)
            _epochs(model, defense, train.x, train.y, opt, cfg.nb_epochs, cfg.batch_size, seed, progress,
                    f"{method} seed {seed}")
            acc[method].append(100 * accuracy(model, test.x, test.y))
            norms[method].append(parameter_norm(model))
    rows = []
    for m in acc:
        a = np.asarray(acc[m])
        se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else float("nan")
        rows.append({"method": m, "test acc % (mean)": float(a.mean()), "SE": se, "runs": len(a),
                     "final ||phi|| (mean)": float(np.mean(norms[m])),
                     "paper 4-layer MLP CIFAR-10": PAPER["table66_mlp"][m],
                     "paper ResNet-18 CIFAR-10": PAPER["table66_resnet18"][m]})
    write_table(out, "norm_bias", rows, f"Tables 6.5-6.7: {cfg.nb_net} on {len(train)} {cfg.dataset} images, "
                f"{cfg.nb_epochs} epochs, SGD m 0.9 lr {cfg.nb_lr:g}; wd {cfg.nb_wd:g}; norm-bias coef "
                f"{cfg.nb_wd / 2:g} (= the same strength at mu = 0), mu^2 = ({cfg.nb_mu_factor:g} x the wd run's "
                f"final norm)^2 (mean {np.mean(mu2s):.1f}); mean +- standard error over {cfg.nb_seeds} seeds")
    d = {r["method"]: r for r in rows}
    claims.append(_claim("Norm-bias is at least as accurate as weight decay",
                         f"{d['norm-bias']['test acc % (mean)']:.2f} +- {d['norm-bias']['SE']:.2f} vs "
                         f"{d['wd']['test acc % (mean)']:.2f} +- {d['wd']['SE']:.2f}",
                         "ResNet-18 94.99 vs 94.76; MLP 59.13 vs 58.95",
                         d["norm-bias"]["test acc % (mean)"] >= d["wd"]["test acc % (mean)"]))
    claims.append(_claim("Norm-bias ends at a larger parameter norm than weight decay",
                         f"{d['norm-bias']['final ||phi|| (mean)']:.2f} vs {d['wd']['final ||phi|| (mean)']:.2f}",
                         "Fixup 31.62 vs 24.51", d["norm-bias"]["final ||phi|| (mean)"] >
                         d["wd"]["final ||phi|| (mean)"]))
    return {"rows": rows, "accuracies": acc, "norms": norms, "mu2": mu2s}


# ---------------------------------------------------------------------------------------------------------------------
# effective rank with RankMin / RankMax


def _ranks(model: nn.Module, shape: tuple[int, int, int]) -> dict[str, float]:
    sv = layer_singular_values(conv_layers(model, shape), "fft")
    return {name: effective_rank(s) for name, s in sv.items()}


def _rank(cfg: PropertiesConfig, train: Any, test: Any, out: Path, progress: bool,
          claims: list[dict[str, Any]]) -> dict[str, Any]:
    c, n, _ = train.shape
    k = len(train.classes)
    shape = (c, n, n)
    torch.manual_seed(cfg.seed)
    init = wrap(SmallConvNet(cfg.rank_width, c, k, n), c).to(train.x.device)
    init_rank = _ranks(init, shape)
    rows, ranks = [], {"init": init_rank}
    bases = [("natural", StandardTraining())]
    if cfg.rank_adv:
        bases.append(("adversarial", PGDTraining(cfg.rank_eps, 2.5 * cfg.rank_eps / cfg.rank_attack_steps,
                                                 cfg.rank_attack_steps)))
    pgd_big = PGD(cfg.rank_eps, 2.5 * cfg.rank_eps / cfg.rank_eval_steps, cfg.rank_eval_steps, seed=cfg.seed)
    pgd_small = PGD(cfg.rank_eps_small, 2.5 * cfg.rank_eps_small / cfg.rank_eval_steps, cfg.rank_eval_steps,
                    seed=cfg.seed)
    key = f"PGD-{cfg.rank_eval_steps} {cfg.rank_eps * 255:g}/255 %"
    small = f"PGD-{cfg.rank_eval_steps} {cfg.rank_eps_small * 255:g}/255 %"
    for base, defense in bases:
        model = copy.deepcopy(init)
        _epochs(model, defense, train.x, train.y, _sgd(model, cfg.rank_lr), cfg.rank_epochs, cfg.batch_size,
                cfg.seed, progress, base)
        for variant in ("none", "rankmin", "rankmax"):
            m = copy.deepcopy(model)
            layers = conv_layers(m, shape)
            hook = None
            if variant != "none":
                value = cfg.rank_min if variant == "rankmin" else cfg.rank_max

                def hook(mod: nn.Module, layers: Any = layers, variant: str = variant, value: float = value) -> None:
                    apply_rank_projection(layers, variant, value)
            _epochs(m, defense, train.x, train.y, _sgd(m, cfg.rank_lr / 10), cfg.rank_extra_epochs, cfg.batch_size,
                    cfg.seed + 1, progress, f"{base} {variant}", hook, cfg.rank_every)
            name = base if variant == "none" else (variant if base == "natural" else f"{variant}-adv")
            r = _ranks(m, shape)
            ranks[name] = r
            _, rob_big = attacked_correct(m, pgd_big, test.x, test.y)
            _, rob_small = attacked_correct(m, pgd_small, test.x, test.y)
            rows.append({"method": name, "train acc %": 100 * accuracy(m, train.x, train.y),
                         "clean %": 100 * accuracy(m, test.x, test.y),
                         key: 100 * float(rob_big.double().mean()), small: 100 * float(rob_small.double().mean()),
                         "mean effective rank": float(np.mean(list(r.values()))),
                         **{f"erank {lay}": v for lay, v in r.items()}})
    write_table(out, "rank", rows, f"Tables 6.8-6.10: SmallConvNet({cfg.rank_width}) on {len(train)} {cfg.dataset} "
                f"images, {cfg.rank_epochs} epochs then {cfg.rank_extra_epochs} at lr/10 with the projection every "
                f"{cfg.rank_every} iterations (RankMin: s < {cfg.rank_min:g} s_max -> 0; RankMax: s -> min(s, "
                f"{cfg.rank_max:g} s_max)); effective rank of the exact conv operator (FFT); mean effective rank at "
                f"init {np.mean(list(init_rank.values())):.2f}")
    groups = list(init_rank)
    if cfg.figures:
        bar_plot(out / "effective_rank.png", groups, {name: [r[g] for g in groups] for name, r in ranks.items()},
                 "Effective rank per layer", "||W||_* / ||W||_F")
    d = {r["method"]: r for r in rows}
    er = {m: d[m]["mean effective rank"] for m in d}
    claims.append(_claim("Initialisations have higher effective rank than trained models",
                         f"init {np.mean(list(init_rank.values())):.2f} vs natural {er['natural']:.2f}",
                         "consistent with [82]", np.mean(list(init_rank.values())) > er["natural"]))
    claims.append(_claim("Rank does not track generalisation: RankMin and RankMax change clean accuracy little",
                         f"natural {d['natural']['clean %']:.2f}, RankMin {d['rankmin']['clean %']:.2f}, RankMax "
                         f"{d['rankmax']['clean %']:.2f}", "94.66 / 94.44 / 93.66",
                         max(abs(d[m]["clean %"] - d["natural"]["clean %"]) for m in ("rankmin", "rankmax")) < 2.0))
    claims.append(_claim("RankMax lowers robustness at a small radius for natural training",
                         f"{d['natural'][small]:.2f} -> RankMax {d['rankmax'][small]:.2f}", "31.98 -> 22.01",
                         d["rankmax"][small] < d["natural"][small]))
    if cfg.rank_adv:
        claims.append(_claim("RankMax >= RankMin in adversarial training (robust accuracy)",
                             f"{d['rankmax-adv'][key]:.2f} vs {d['rankmin-adv'][key]:.2f}", "35.55 vs 33.68",
                             d["rankmax-adv"][key] >= d["rankmin-adv"][key]))
        claims.append(_claim("Adversarially trained nets are not necessarily low-rank",
                             f"effective rank adversarial {er['adversarial']:.2f} vs natural {er['natural']:.2f}",
                             "qualitative", er["adversarial"] >= er["natural"]))
    return {"rows": rows, "effective_rank": ranks}


# ---------------------------------------------------------------------------------------------------------------------
# NTK before/after training across widths


def _ntk_models(cfg: PropertiesConfig, c: int, n: int, k: int) -> list[tuple[str, int, nn.Module]]:
    out = []
    for w in cfg.ntk_mlp_widths:
        out.append(("MLP-2", w, wrap(MLP(c * n * n, k, w, 2), c)))
        out.append(("MLP-4", w, wrap(MLP(c * n * n, k, w, 4), c)))
    for w in cfg.ntk_conv_widths:
        out.append(("ConvNet", w, wrap(SmallConvNet(w, c, k, n), c)))
    for w in cfg.ntk_wrn_widths:
        out.append(("WRN-10", w, wrap(WideResNet(10, w, k, c), c)))
    return out


def _ntk(cfg: PropertiesConfig, train: Any, test: Any, out: Path, progress: bool,
         claims: list[dict[str, Any]]) -> dict[str, Any]:
    c, n, _ = train.shape
    k = len(train.classes)
    xs = test.x[: cfg.ntk_images].float().div(255.0)
    rows = []
    for family, width, model in _ntk_models(cfg, c, n, k):
        torch.manual_seed(cfg.seed)
        he_uniform_(model)
        model = model.to(train.x.device)
        p0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()
        k0 = empirical_ntk(model, xs, cfg.ntk_max_entries)
        _epochs(model, StandardTraining(), train.x, train.y, _sgd(model, cfg.ntk_lr, wd=cfg.ntk_wd), cfg.ntk_epochs,
                cfg.batch_size, cfg.seed, progress, f"{family} w{width}")
        k1 = empirical_ntk(model, xs, cfg.ntk_max_entries)
        p1 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        ch = ntk_change(k0, k1)
        rows.append({"net": family, "width": width, "params": int(p0.numel()),
                     "NTK correlation": ch["correlation"], "NTK relative change": ch["relative_change"],
                     "||phi_1 - phi_0|| / ||phi_0||": float((p1 - p0).norm() / p0.norm()),
                     "test acc %": 100 * accuracy(model, test.x, test.y)})
    write_table(out, "ntk", rows, f"Figs 6.1-6.5: empirical NTK on {cfg.ntk_images} test images before and after "
                f"{cfg.ntk_epochs} epochs (SGD m 0.9, lr {cfg.ntk_lr:g}, wd {cfg.ntk_wd:g}, uniform He init)")
    fams = sorted({r["net"] for r in rows})
    for metric in ("NTK correlation", "NTK relative change") if cfg.figures else ():
        curves = {f: ([r["width"] for r in rows if r["net"] == f], [r[metric] for r in rows if r["net"] == f])
                  for f in fams}
        xy_lines(out / f"ntk_{metric.split()[-1]}.png", curves, f"{metric} vs width (Fig 6.1)", "width", metric,
                 logx=True)
    for f in fams:
        sel = sorted((r for r in rows if r["net"] == f), key=lambda r: r["width"])
        if len(sel) < 2:
            continue
        trend = " -> ".join(f"{r['NTK correlation']:.3f}" for r in sel)
        c0, c1 = sel[0]["NTK correlation"], sel[-1]["NTK correlation"]
        if f == "WRN-10":
            claims.append(_claim("WRN: NTK correlation decreases with width", trend, "decreases (Fig 6.1)",
                                 _trend(c0, c1, up=False)))
        else:
            claims.append(_claim(f"{f}: NTK correlation increases with width", trend, "towards 1 (Fig 6.1)",
                                 _trend(c0, c1, up=True)))
        rel = " -> ".join(f"{r['NTK relative change']:.3f}" for r in sel)
        claims.append(_claim(f"{f}: relative NTK change grows with width", rel, "grows (Fig 6.1)",
                             _trend(sel[0]["NTK relative change"], sel[-1]["NTK relative change"], up=True)))
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------------------------------


def _claim(text: str, measured: str, source: str, held: bool | None) -> dict[str, Any]:
    verdict = "unclear (within noise)" if held is None else ("yes" if held else "no")
    return {"claim": text, "measured": measured, "source": source, "held at our scale": verdict}


def _trend(first: float, last: float, up: bool, tol: float = 0.05) -> bool | None:
    """Whether ``last`` moved from ``first`` in the claimed direction by more than ``tol`` (None: within it)."""
    d = (last - first) if up else (first - last)
    return True if d > tol else (False if d < -tol else None)


def run_properties(cfg: PropertiesConfig, out: str | Path, *, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Run ``cfg.parts``; write tables, figures and metrics.json into ``out``."""
    if not cfg.parts or set(cfg.parts) - set(PARTS):
        raise ValueError(f"parts must be a non-empty subset of {', '.join(PARTS)}, got {cfg.parts}")
    for name, v in (("nb_seeds", cfg.nb_seeds), ("hessian_iters", cfg.hessian_iters),
                    ("ntk_images", cfg.ntk_images), ("n_test", cfg.n_test)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    device = resolve_device(cfg.device)
    test = load_subset(cfg.dataset, cfg.root, "test", cfg.n_test, None, device)
    sizes = {"lemma61": cfg.l61_n_train, "norm-bias": cfg.nb_n_train, "rank": cfg.rank_n_train,
             "ntk": cfg.ntk_n_train}
    trains = {p: load_subset(cfg.dataset, cfg.root, "train", sizes[p], cfg.seed, device) for p in cfg.parts}
    out = make_run_dir(Path(out), cfg, overwrite=overwrite)
    t0 = time.perf_counter()
    claims: list[dict[str, Any]] = []
    metrics: dict[str, Any] = {"device": device, "seconds_per_part": {}}
    runners = {"lemma61": _lemma61, "norm-bias": _norm_bias, "rank": _rank, "ntk": _ntk}
    for part in PARTS:
        if part in cfg.parts:
            t = time.perf_counter()
            metrics[part] = runners[part](cfg, trains[part], test, out, progress, claims)
            metrics["seconds_per_part"][part] = round(time.perf_counter() - t, 1)
    write_table(out, "claims", claims, "Claims of spec-000 chapter 6, measured at our scale")
    metrics["claims"] = claims
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    finish_run(out, metrics)
    return metrics
