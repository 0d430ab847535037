"""SOAR and FOAR: second- and first-order adversarial regularisers (spec-002 chapter 3, Algorithm 3.1).

For an Linf radius eps, an input of dimension d and the cross-entropy l, SOAR bounds the worst case of the
second-order Taylor model of l over the Linf ball (Prop. 3.3.1, Cor. 3.3.2: the Linf ball of radius eps lies in the
L2 ball of radius sqrt(d) eps) by

    R(x; z, h, eps) = ((d eps^2 + 1) / 2) * || [ ||z_d|| (grad l(x + h z_d/||z_d||) - grad l(x)) / h + z_1 grad l(x) ;
                                                 grad l(x)^T z_d + z_1 ] ||_2                               (3.12)

with z = [z_d; z_1] ~ N(0, I_{d+1}) (one draw per example) and the Hessian-vector product taken by the finite
difference (3.11) along the *normalised* direction. Algorithm 3.1 evaluates it at a less confident point: x' =
PGD1(x, eps/2) (uniform start in [-eps/2, eps/2], one signed step of eps/2, projection onto the ball of radius
eps/2), and regularises with the remaining radius eps/2: l_SOAR = l(x', y) + R(x'; z, h, eps/2).
Per batch this costs 3 forward and 4 backward passes (Table 3.5): PGD1, grad l(x'), grad l(x' + h z~) and the
double back-propagation through both input gradients.

The "clipping of 10 on the regulariser" (App. 3.A) is ``clip_mode="clamp"`` by default: the hard min(R, clip), so
an example whose R exceeds the clip adds no regulariser gradient (early in training only the CE at x' acts).
``clip_mode="rescale"`` keeps the value min(R, clip) but scales the gradient by clip/R, i.e. clips the gradient
instead of removing it (the study's ``soar-rescale`` method). Table 3.6's loss of 10.58 at the start of SOAR (CE
about 0.6 plus a clipped R of 10) is consistent with both. ``grad_clip`` additionally clips the parameter-gradient
norm of the regulariser term alone, as the public SOAR script does.

FOAR (Simon-Gabriel et al.) is the first-order baseline: l(x') + eps' ||grad_x l(x')||_1 (the dual norm of Linf).
:func:`run_soar_study` pretrains a standard model, continues training it with PGD-AT, FOAR and SOAR, and measures
clean, FGSM, PGD-20, APGD-CE, APGD-DLR, targeted APGD-DLR (APGD-T) and transferred PGD-20 accuracy, the
confidence of Table 3.1 and the gradient-masking diagnostics of App. 3.F.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.rundir import finish_run, load_weights, make_run_dir, resolve_device, save_weights
from vision.attacks import APGD, FGSM, PGD
from vision.attacks.apgd import APGDT
from vision.defenses.pgd_training import PGDTraining
from vision.defenses.standard import StandardTraining
from vision.models import build_model
from vision.studies.common import (
    accuracy,
    adversarial_examples,
    as_float,
    attacked_correct,
    bar_plot,
    config_matches,
    fit,
    input_gradients,
    line_plot,
    load_subset,
    make_optimizer,
    pct,
    predict,
    write_table,
)

__all__ = [
    "linf_to_l2_radius", "soar_prefactor", "input_gradient", "fd_hvp", "autograd_hvp", "pgd1_point",
    "soar_regularizer", "foar_regularizer", "SOARTraining", "FOARTraining", "SoarStudyConfig", "run_soar_study",
    "INITS", "CLIP_MODES",
]

INITS = ("pgd1", "rand", "zero")
CLIP_MODES = ("rescale", "clamp", "none")


def linf_to_l2_radius(eps: float, d: int) -> float:
    """Radius sqrt(d) eps of the L2 ball holding the Linf ball of radius ``eps`` in dimension ``d`` (Cor. 3.3.2)."""
    if eps < 0 or d < 1:
        raise ValueError(f"need eps >= 0 and d >= 1, got eps={eps}, d={d}")
    return math.sqrt(d) * eps


def soar_prefactor(eps: float, d: int) -> float:
    """(d eps^2 + 1) / 2 = (r^2 + 1) / 2 with r the L2 radius of the augmented ball (Prop. 3.3.1)."""
    return 0.5 * (linf_to_l2_radius(eps, d) ** 2 + 1.0)


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def input_gradient(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool = False
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """(per-example CE, its gradient w.r.t. ``x`` (same shape), logits) at ``x``.

    The loss is summed over the batch, so each example's gradient is that of its own loss. With ``create_graph``
    the gradient stays differentiable w.r.t. the parameters (double back-propagation).
    """
    x = x if x.requires_grad else x.detach().requires_grad_(True)
    logits = model(x)
    z = logits if logits.dtype == torch.float64 else logits.float()  # keep float64 (tests), lift half precision
    ce = F.cross_entropy(z, y, reduction="none")
    (g,) = torch.autograd.grad(ce.sum(), x, create_graph=create_graph)
    return ce, g, logits


def fd_hvp(model: nn.Module, x: Tensor, y: Tensor, v: Tensor, h: float, g0: Tensor | None = None,
           create_graph: bool = False) -> Tensor:
    """Finite-difference Hessian-vector product (3.11): ||v|| (grad l(x + h v/||v||) - grad l(x)) / h, per example.

    The step is taken along the normalised direction, so ``h`` is the actual distance moved in input space.
    ``g0`` (the gradient at ``x``) is reused when given.
    """
    if h <= 0:
        raise ValueError(f"the finite-difference step h must be > 0, got {h}")
    nv = _flat(v).norm(dim=1).clamp_min(1e-12)
    shape = (-1, *([1] * (x.dim() - 1)))
    if g0 is None:
        _, g0, _ = input_gradient(model, x, y, create_graph)
    _, g1, _ = input_gradient(model, x + h * v / nv.view(shape), y, create_graph)
    return nv.view(shape) * (g1 - g0) / h


def autograd_hvp(model: nn.Module, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
    """Exact per-example Hessian-vector product grad_x^2 l(x) v by double back-propagation (the reference)."""
    x = x.detach().requires_grad_(True)
    _, g, _ = input_gradient(model, x, y, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    return hv.detach()


def pgd1_point(model: nn.Module, x: Tensor, y: Tensor, eps: float, init: str = "pgd1",
               generator: torch.Generator | None = None) -> Tensor:
    """The point where SOAR/FOAR evaluate the loss: ``pgd1`` (Alg. 3.1 lines 5-6), ``rand`` or ``zero`` (x itself).

    pgd1: x + U(-eps/2, eps/2), then one step (eps/2) sign(grad_x l) and the projection onto the Linf ball of
    radius eps/2 around x and onto [0, 1]. rand: the uniform start only. Gradients are taken w.r.t. the input only.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    x = x.detach()
    if init == "zero":
        return x
    half = eps / 2.0
    u = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    xp = (x + (2 * u - 1) * half).clamp(0.0, 1.0)
    if init == "rand":
        return xp
    with torch.enable_grad():
        _, g, _ = input_gradient(model, xp, y)
    xp = xp.detach() + half * g.sign()
    return torch.min(torch.max(xp, x - half), x + half).clamp(0.0, 1.0).detach()


def soar_regularizer(model: nn.Module, x: Tensor, y: Tensor, eps: float, h: float = 0.01, z: Tensor | None = None,
                     generator: torch.Generator | None = None, create_graph: bool = True
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """(R per example (3.12), CE per example, logits) at ``x`` for the Linf radius ``eps``.

    ``z`` of shape (B, d + 1) is drawn from N(0, I) when not given (one draw per example, n = 1 as in the thesis).
    """
    b = x.shape[0]
    d = x[0].numel()
    if z is None:
        z = torch.randn(b, d + 1, device=x.device, dtype=x.dtype, generator=generator)
    if z.shape != (b, d + 1):
        raise ValueError(f"z must have shape ({b}, {d + 1}), got {tuple(z.shape)}")
    z_d, z_1 = z[:, :d], z[:, d]
    x = x.detach().requires_grad_(True)
    ce, g0, logits = input_gradient(model, x, y, create_graph=create_graph)
    hv = fd_hvp(model, x, y, z_d.view_as(x), h, g0=g0, create_graph=create_graph)
    top = _flat(hv) + z_1[:, None] * _flat(g0)
    bottom = (_flat(g0) * z_d).sum(dim=1) + z_1
    norm = torch.sqrt((top * top).sum(dim=1) + bottom * bottom)
    return soar_prefactor(eps, d) * norm, ce, logits


def foar_regularizer(model: nn.Module, x: Tensor, y: Tensor, eps: float, create_graph: bool = True
                     ) -> tuple[Tensor, Tensor, Tensor]:
    """(eps ||grad_x l(x)||_1 per example, CE per example, logits): FOAR's Linf first-order term (3.4)."""
    x = x.detach().requires_grad_(True)
    ce, g, logits = input_gradient(model, x, y, create_graph=create_graph)
    return eps * _flat(g).abs().sum(dim=1), ce, logits


def clip_value(r: Tensor, clip: float | None, mode: str) -> Tensor:
    """The regulariser after clipping: ``rescale`` min(R, c) with gradient scaled by c/R; ``clamp`` hard min."""
    if mode not in CLIP_MODES:
        raise ValueError(f"unknown clip mode {mode!r}; choose one of {', '.join(CLIP_MODES)}")
    if clip is None or mode == "none":
        return r
    if mode == "clamp":
        return r.clamp(max=clip)
    return r * (clip / r.detach().clamp_min(1e-12)).clamp(max=1.0)


def _with_clipped_param_grad(model: nn.Module, reg: Tensor, max_norm: float) -> Tensor:
    """A term whose value is ``reg`` and whose parameter gradient is grad(reg) clipped to norm ``max_norm``."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(reg, params, retain_graph=True, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    total = torch.sqrt(sum((g.float() ** 2).sum() for g in grads))
    scale = min(1.0, max_norm / max(float(total), 1e-12))
    lin = sum((p * (scale * g).detach()).sum() for p, g in zip(params, grads))
    return lin - lin.detach() + reg.detach()


class _RegularizedTraining:
    """Shared pieces of FOAR and SOAR training: the init point, the radius split, the clipping."""

    name = "regularized"

    def __init__(self, eps: float, init: str = "pgd1", lam: float = 1.0, clip: float | None = 10.0,
                 clip_mode: str = "clamp", grad_clip: float | None = None, seed: int = 0,
                 device: str | torch.device = "cpu") -> None:
        if eps <= 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
        if clip_mode not in CLIP_MODES:
            raise ValueError(f"unknown clip mode {clip_mode!r}; choose one of {', '.join(CLIP_MODES)}")
        if grad_clip is not None and grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip}")
        self.eps, self.init, self.lam = float(eps), init, float(lam)
        self.clip, self.clip_mode, self.grad_clip = clip, clip_mode, grad_clip
        # PGD1/rand init spend eps/2 on the start point and leave eps/2 to the regulariser (Sec. 3.3.4)
        self.reg_eps = self.eps / 2.0 if init != "zero" else self.eps
        self.generator = torch.Generator(device=device).manual_seed(int(seed))
        self.last: dict[str, float] = {}

    def regularizer(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        xp = pgd1_point(model, x, y, self.eps, self.init, self.generator)
        r, ce, logits = self.regularizer(model, xp, y)
        reg = self.lam * clip_value(r, self.clip, self.clip_mode).mean()
        self.last = {"ce": float(ce.detach().mean()), "reg": float(reg.detach()), "reg_raw": float(r.detach().mean())}
        if self.grad_clip is not None:
            reg = _with_clipped_param_grad(model, reg, self.grad_clip)
        return ce.mean() + reg, logits


class SOARTraining(_RegularizedTraining):
    """Per batch: x' = PGD1(x, eps/2); loss = CE(x') + lam * clip(R(x'; z, h, eps/2)) (Alg. 3.1, eq. 3.14)."""

    name = "soar"

    def __init__(self, eps: float, h: float = 0.01, **kw: Any) -> None:
        super().__init__(eps, **kw)
        if h <= 0:
            raise ValueError(f"the finite-difference step h must be > 0, got {h}")
        self.h = float(h)

    def regularizer(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return soar_regularizer(model, x, y, self.reg_eps, self.h, generator=self.generator)


class FOARTraining(_RegularizedTraining):
    """Per batch: x' = PGD1(x, eps/2); loss = CE(x') + lam * clip((eps/2) ||grad_x CE(x')||_1) (eq. 3.4)."""

    name = "foar"

    def regularizer(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return foar_regularizer(model, x, y, self.reg_eps)


# ---------------------------------------------------------------------------------------------------------------------
# the study

METHODS = ("standard", "pgd-at", "foar", "soar", "soar-zero", "soar-rescale")


@dataclass
class SoarStudyConfig:
    """The SOAR study: a standard model, then PGD-AT / FOAR / SOAR continued from it, all evaluated alike."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    model: str = "mnist_small"           # BN-free (SOAR does not work with batch norm, Sec. 3.5.1)
    n_train: int | None = 5000
    n_test: int = 500
    eps: float = 0.1
    methods: tuple[str, ...] = ("standard", "pgd-at", "foar", "soar", "soar-zero", "soar-rescale")
    pretrain_epochs: int = 10
    pretrain_lr: float = 0.05
    epochs: int = 10                      # of every regularised / adversarial method, from the standard model
    lr: float = 0.004                     # the thesis' rate (CIFAR-10, 200 epochs)
    momentum: float = 0.9
    weight_decay: float = 2e-4
    batch_size: int = 128
    h: float = 0.01
    clip: float | None = 10.0
    clip_mode: str = "clamp"
    lam: float = 1.0
    grad_clip: float | None = None
    pgd_at_steps: int = 10
    eval_pgd_steps: int = 20
    eval_apgd_steps: int = 100
    n_target_classes: int = 9
    augment: bool | None = None           # auto: on for cifar10
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


def _check(cfg: SoarStudyConfig) -> None:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    if "standard" not in cfg.methods:
        raise ValueError("methods must include 'standard' (the pretrained model every other method starts from)")
    if cfg.eps <= 0 or cfg.n_test < 1 or cfg.pretrain_epochs < 0 or cfg.epochs < 0:
        raise ValueError("need eps > 0, n_test >= 1 and non-negative epochs")
    if cfg.clip_mode not in CLIP_MODES:
        raise ValueError(f"unknown clip mode {cfg.clip_mode!r}; choose one of {', '.join(CLIP_MODES)}")


def _defense(method: str, cfg: SoarStudyConfig, device: str):
    kw = dict(lam=cfg.lam, clip=cfg.clip, clip_mode=cfg.clip_mode, grad_clip=cfg.grad_clip, seed=cfg.seed + 7,
              device=device)
    if method == "pgd-at":
        return PGDTraining(cfg.eps, cfg.eps / 4, cfg.pgd_at_steps)
    if method == "foar":
        return FOARTraining(cfg.eps, init="pgd1", **kw)
    if method == "soar":
        return SOARTraining(cfg.eps, cfg.h, init="pgd1", **kw)
    if method == "soar-zero":
        return SOARTraining(cfg.eps, cfg.h, init="zero", **kw)
    if method == "soar-rescale":
        return SOARTraining(cfg.eps, cfg.h, init="pgd1", **{**kw, "clip_mode": "rescale"})
    raise ValueError(method)


def _attacks(cfg: SoarStudyConfig) -> dict[str, Any]:
    e, s = cfg.eps, cfg.seed
    return {
        "FGSM": FGSM(e),
        f"PGD-{cfg.eval_pgd_steps}": PGD(e, e / 4, cfg.eval_pgd_steps, seed=s),
        "APGD-CE": APGD(e, cfg.eval_apgd_steps, seed=s),
        "APGD-DLR": APGD(e, cfg.eval_apgd_steps, loss="dlr", seed=s),
        "APGD-T (DLR)": APGDT(e, cfg.eval_apgd_steps, n_targets=cfg.n_target_classes, seed=s),
    }


def mean_confidence(model: nn.Module, x: Tensor) -> float:
    """Mean max-softmax probability (Table 3.1)."""
    return float(F.softmax(predict(model, x), dim=1).amax(dim=1).mean())


def nonzero_gradient_count(model: nn.Module, x: Tensor, y: Tensor, tol: float = 1e-6) -> float:
    """Mean number of input-gradient entries with |g| > tol per example (App. 3.F; d when nothing is masked)."""
    g = input_gradients(model, x, y)
    return float((_flat(g).abs() > tol).sum(dim=1).float().mean())


def evaluate_method(model: nn.Module, cfg: SoarStudyConfig, x: Tensor, y: Tensor, transfer_x: Tensor | None,
                    device: str) -> dict[str, Any]:
    """Every accuracy and diagnostic of one trained model on the test images (x uint8, y)."""
    row: dict[str, Any] = {"clean %": pct(accuracy(model, x, y))}
    worst = None
    for name, atk in _attacks(cfg).items():
        t0 = time.perf_counter()
        clean_ok, rob_ok = attacked_correct(model, atk, x, y)
        worst = rob_ok if worst is None else worst & rob_ok
        row[f"{name} %"] = pct(float(rob_ok.float().mean()))
        row.setdefault("_seconds", {})[name] = round(time.perf_counter() - t0, 2)
    if transfer_x is not None:
        row["transfer PGD-20 %"] = pct(accuracy(model, transfer_x, y))
    row["worst-case %"] = pct(float(worst.float().mean())) if worst is not None else None
    xf = as_float(x)
    gen = torch.Generator(device=device).manual_seed(cfg.seed + 3)
    noise = (xf + (2 * torch.rand(xf.shape, device=device, generator=gen) - 1) * cfg.eps).clamp(0, 1)
    row["conf clean %"] = pct(mean_confidence(model, xf))
    row["conf random %"] = pct(mean_confidence(model, noise))
    with torch.enable_grad():
        p1 = torch.cat([pgd1_point(model, xf[s: s + 500], y[s: s + 500], cfg.eps, "pgd1", gen)
                        for s in range(0, xf.shape[0], 500)])
    row["conf PGD1 %"] = pct(mean_confidence(model, p1))
    row["nonzero grads"] = round(nonzero_gradient_count(model, x, y), 1)
    sanity = PGD(1.0, None, 20, seed=cfg.seed)  # the whole [0, 1] box: must reach 0% unless gradients are masked
    row["PGD-20 eps=1 %"] = pct(float(attacked_correct(model, sanity, x[:200], y[:200])[1].float().mean()))
    return row


def run_soar_study(cfg: SoarStudyConfig, out: str | Path, *, overwrite: bool = False,
                   progress: bool = True) -> dict[str, Any]:
    """Train every method of ``cfg`` and evaluate it; writes the run directory ``out`` and returns the metrics.

    Weights of finished methods are kept (``<method>.safetensors``): run the same command again after an
    interruption and they are reused instead of retrained.
    """
    _check(cfg)
    device = resolve_device(cfg.device)
    out = Path(out)
    reuse = config_matches(out, cfg)
    train = load_subset(cfg.dataset, cfg.root, "train", cfg.n_train, cfg.seed, device)
    test = load_subset(cfg.dataset, cfg.root, "test", cfg.n_test, None, device)
    c, hgt, _ = train.shape
    n_cls = len(train.classes)
    augment = cfg.augment if cfg.augment is not None else cfg.dataset == "cifar10"
    torch.manual_seed(cfg.seed)
    build_model(cfg.model, n_cls, c, hgt)  # fail on a bad model name before anything is written
    out = make_run_dir(out, cfg, overwrite=overwrite)

    models: dict[str, nn.Module] = {}
    histories: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for method in ["standard", *[m for m in cfg.methods if m != "standard"]]:  # the others start from it
        wpath = out / f"{method}.safetensors"
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, n_cls, c, hgt).to(device)
        if reuse and wpath.is_file():
            model.load_state_dict(load_weights(wpath, device))
            models[method] = model.eval()
            histories[method] = "reused"
            continue
        t0 = time.perf_counter()
        if method == "standard":
            opt = make_optimizer(model, "sgd", cfg.pretrain_lr, cfg.momentum, cfg.weight_decay)
            hist = fit(model, StandardTraining(), train, epochs=cfg.pretrain_epochs, batch_size=cfg.batch_size,
                       optimizer=opt, schedule="piecewise", augment=augment, seed=cfg.seed, progress=progress,
                       desc="standard")
        else:
            model.load_state_dict(models["standard"].state_dict())  # Alg. 3.1 line 1: start from the standard model
            opt = make_optimizer(model, "sgd", cfg.lr, cfg.momentum, cfg.weight_decay)
            defense = _defense(method, cfg, device)
            hist = fit(model, defense, train, epochs=cfg.epochs, batch_size=cfg.batch_size, optimizer=opt,
                       schedule="piecewise", augment=augment, seed=cfg.seed + 1, progress=progress, desc=method)
        seconds[method] = time.perf_counter() - t0
        histories[method] = hist
        save_weights(wpath, model.state_dict(), {"model": cfg.model, "method": method})
        models[method] = model.eval()

    # transfer source: PGD-20 on the standard model (the thesis' "-R" column)
    src_attack = PGD(cfg.eps, cfg.eps / 4, cfg.eval_pgd_steps, seed=cfg.seed + 11)
    transfer_x = adversarial_examples(models["standard"], src_attack, test.x, test.y)
    rows, timings = [], {}
    for method, model in models.items():
        row = evaluate_method(model, cfg, test.x, test.y, transfer_x, device)
        timings[method] = row.pop("_seconds")
        rows.append({"method": method, **row})

    acc_cols = ["method", "clean %", "FGSM %", f"PGD-{cfg.eval_pgd_steps} %", "APGD-CE %", "APGD-DLR %",
                "APGD-T (DLR) %", "transfer PGD-20 %", "worst-case %"]
    diag_cols = ["method", "conf clean %", "conf random %", "conf PGD1 %", "nonzero grads", "PGD-20 eps=1 %"]
    write_table(out, "robustness", rows, f"SOAR study: accuracy (%) on {cfg.n_test} {cfg.dataset} test images, "
                f"Linf eps={cfg.eps:.4g}", acc_cols)
    write_table(out, "diagnostics", rows, "Confidence (Table 3.1) and gradient-masking checks (App. 3.F)", diag_cols)
    attack_cols = acc_cols[1:]
    bar_plot(out / "robustness.png", attack_cols, {r["method"]: [r[k] or 0 for k in attack_cols] for r in rows},
             f"{cfg.dataset}, eps={cfg.eps:.4g}", "accuracy (%)")
    curves = {m: [h["loss"] for h in hist] for m, hist in histories.items() if isinstance(hist, list) and hist
              and m != "standard"}
    if curves:
        n_ep = max(len(v) for v in curves.values())
        line_plot(out / "training_loss.png", list(range(1, n_ep + 1)), curves, "training loss (CE + regulariser)",
                  "epoch", "loss")
    d = int(train.x[0].numel())
    metrics = {
        "device": device, "input_dim": d, "eps": cfg.eps, "reg_eps_l2": linf_to_l2_radius(cfg.eps / 2, d),
        "soar_prefactor": soar_prefactor(cfg.eps / 2, d), "n_train": len(train), "n_test": len(test),
        "train_seconds": seconds, "attack_seconds": timings, "rows": rows, "histories": histories,
    }
    finish_run(out, metrics)
    return metrics
