"""Teacher-student robustness (spec-001): specialisation of students to a teacher (oracle) network, and the
robust accuracy of students trained by standard (ST-logit, ST-label, ST + Gaussian noise), adversarial (oracle-
adversarial, teacher-target) and teacher-student CCAT training.

Two parts, one run directory:

1. **Synthetic two-layer check of Theorems 1-2** (the spec's section 6.8; the paper's own synthetic experiments are in
   its missing appendix). Inputs x~ = U z in R^d with U a random d x r orthonormal basis (the data subspace X), a
   two-layer ReLU teacher, over-realised students trained with the L2 loss to a small gradient. Measured per
   student: the angle between the best-matched student and teacher weights inside X (Theorem 1: ~0) and outside X
   (free: large for ST), the MBNC, the fan-out of unspecialised nodes relative to specialised ones (Corollary 1:
   small), the share of oracle-adversarial perturbations outside X, and robust accuracy. Students: ST, ST with
   Gaussian noise outside X, and teacher-target AT (Sec. 4.3: both should shrink the outside angle).
2. **Images** (Sec. 5, scaled to a CPU): a 4-layer conv ReLU teacher trained on labels, pruned by fan-out norm,
   then students 1.1x wider trained with each method; per-layer NC/BNC/MBNC, the first layer's eps_in / eps_out
   against the patch-PCA subspace, and Tables 1-4 (robust accuracy under oracle-adversarial Linf/L2/L1 PGD, FGSM,
   CW-loss PGD and transfer from an independently trained student; mean and variance over repeated attacks).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.rundir import finish_run, load_weights, make_run_dir, resolve_device, save_weights
from vision.defenses.loop import train_epoch
from vision.defenses.standard import StandardTraining
from vision.studies.common import accuracy, bar_plot, config_matches, line_plot, load_subset, write_table
from vision.theory.nets import ConvReLUNet, TwoLayer, activations, wrap
from vision.theory.oracle_attacks import (
    LabelTraining,
    LogitTraining,
    OracleAT,
    OracleAttack,
    TeacherCCAT,
    agreement,
    subspace_residual,
)
from vision.theory.specialization import (
    best_correlation,
    channel_activations,
    in_out_deviation,
    normalized_correlation,
    patch_pca,
    pearson,
    projected_angles,
    specialization_counts,
)

__all__ = ["TeacherStudentConfig", "run_teacher_student", "prune_by_fanout", "synthetic_check", "PAPER"]

# Source numbers (spec-001 section 4), kept next to ours in every table.
PAPER = {
    "table1_at150": {"linf-pgd": 87.57, "l2-pgd": 96.21, "l1-pgd": 96.56, "fgsm": 95.55, "cw": 91.96,
                     "transfer": 46.06},
    "table1_st300": {"linf-pgd": 74.39, "l2-pgd": 94.01, "l1-pgd": 94.51, "fgsm": 91.12, "cw": 86.19,
                     "transfer": 43.48},
    "table1_at50": {"linf-pgd": 78.79, "l2-pgd": 91.85, "l1-pgd": 92.30, "fgsm": 90.65, "cw": 78.89,
                    "transfer": 43.14},
    "table2": {"at-in": (88.86, 89.18, 89.28), "at-out": (83.11, 83.54, 83.60), "at": (86.87, 87.28, 87.18)},
    "table3": {"st-logit": (23.12, 30.72, 36.72, 48.52, 62.77), "st-label": (19.08, 20.81, 22.34, 23.42, 25.79)},
    "table4": {"ccat-5": 47.25, "ccat-10": 52.04, "ccat-20": 49.33, "at": 84.07},
}
ATTACKS = ("linf-pgd", "l2-pgd", "l1-pgd", "fgsm", "cw", "transfer")


@dataclass
class TeacherStudentConfig:
    """One teacher-student study. Defaults: the CPU preset (the built-in 8x8 digits, 16-wide conv nets)."""

    parts: tuple[str, ...] = ("synthetic", "images")
    # synthetic two-layer part
    synth_d: int = 20
    synth_rank: int = 5
    synth_teacher_hidden: int = 6
    synth_student_hidden: int = 24
    synth_outputs: int = 3
    synth_n: int = 1000
    synth_steps: int = 2000
    synth_lr: float = 0.01
    synth_noise: float = 0.3
    synth_eps: float = 0.5
    synth_at_steps: int = 5
    # image part
    dataset: str = "digits"
    root: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    teacher_widths: tuple[int, ...] = (16, 16, 16, 16)
    pruned_widths: tuple[int, ...] = (12, 8, 8, 6)
    student_scale: float = 1.1
    teacher_epochs: int = 60
    teacher_finetune_epochs: int = 20
    teacher_lr: float = 3e-3
    lr: float = 3e-3
    batch_size: int = 100
    st_epochs: tuple[int, ...] = (25, 50, 100)
    at_epochs: tuple[int, ...] = (25, 50, 100)
    plane_epochs: int = 50
    ccat_epochs: int = 50
    ccat_rhos: tuple[float, ...] = (5.0, 10.0, 20.0)
    ccat_radius: str = "uniform"
    noise_sigma: float = 0.1
    eps: float = 0.1
    train_steps: int = 5
    train_alpha: float | None = None
    eval_steps: int = 20
    eval_repeats: int = 3
    l2_eps: float = 0.5
    l1_eps: float = 2.0
    pca_components: int | None = None
    pooling: str = "positions"
    figures: bool = True
    seed: int = 0
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------------
# synthetic two-layer part


def _synth_data(cfg: TeacherStudentConfig, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """(inputs (N, d) inside X, test inputs, basis U (d, r))."""
    u, _ = torch.linalg.qr(torch.randn(cfg.synth_d, cfg.synth_rank, generator=gen, dtype=torch.float64))
    x = torch.randn(cfg.synth_n, cfg.synth_rank, generator=gen, dtype=torch.float64) @ u.T
    xt = torch.randn(max(cfg.synth_n // 4, 50), cfg.synth_rank, generator=gen, dtype=torch.float64) @ u.T
    return x, xt, u


def _train_two_layer(student: TwoLayer, teacher: TwoLayer, x: Tensor, cfg: TeacherStudentConfig, kind: str,
                     basis: Tensor, gen: torch.Generator) -> dict[str, float]:
    opt = torch.optim.Adam(student.parameters(), lr=cfg.synth_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, cfg.synth_steps)
    attack = OracleAttack(cfg.synth_eps, cfg.synth_at_steps, norm="l2", box=False, seed=int(gen.initial_seed()))
    perp = torch.eye(cfg.synth_d, dtype=torch.float64) - basis @ basis.T
    with torch.no_grad():
        target = teacher(x)
    for _ in range(cfg.synth_steps):
        xb, tb = x, target
        if kind == "st-noise":
            xb = x + cfg.synth_noise * torch.randn(x.shape, generator=gen, dtype=x.dtype) @ perp
            with torch.no_grad():
                tb = teacher(xb)
        elif kind == "at":
            xa = attack(student, teacher, x)
            xb = torch.cat([x, xa])
            with torch.no_grad():
                tb = teacher(xb)
        loss = F.mse_loss(student(xb), tb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    student.zero_grad()
    loss = F.mse_loss(student(x), target)
    loss.backward()
    gnorm = float(torch.cat([p.grad.reshape(-1) for p in student.parameters()]).norm())
    student.zero_grad()
    return {"train_loss": float(loss.detach()), "grad_norm": gnorm}


def synthetic_check(cfg: TeacherStudentConfig) -> dict[str, Any]:
    """Theorems 1-2 and Corollary 1 on a low-rank two-layer teacher; one row per student kind."""
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x, xt, u = _synth_data(cfg, gen)
    teacher = TwoLayer(cfg.synth_d, cfg.synth_teacher_hidden, cfg.synth_outputs).double()
    with torch.no_grad():
        teacher.fc1.bias.mul_(0.1)
        teacher.fc2.weight.normal_(0.0, 1.0, generator=gen)
    # X in the augmented space [x~; 1]: span(U) plus the bias axis; X-perp: the rest of the input directions
    d1 = cfg.synth_d + 1
    inside = torch.zeros(d1, cfg.synth_rank + 1, dtype=torch.float64)
    inside[: cfg.synth_d, : cfg.synth_rank] = u
    inside[cfg.synth_d, cfg.synth_rank] = 1.0
    full, _ = torch.linalg.qr(torch.cat([inside, torch.randn(d1, d1, generator=gen, dtype=torch.float64)], 1))
    outside = full[:, cfg.synth_rank + 1:]
    rows = []
    for kind in ("st", "st-noise", "at"):
        torch.manual_seed(cfg.seed + 1)
        student = TwoLayer(cfg.synth_d, cfg.synth_student_hidden, cfg.synth_outputs).double()
        fit_stats = _train_two_layer(student, teacher, x, cfg, kind, u, gen)
        with torch.no_grad():
            rho = normalized_correlation(student.activations(xt)[0], teacher.activations(xt)[0])
        best_k = rho.argmax(dim=0)
        ws, wt = student.augmented_weights().detach(), teacher.augmented_weights().detach()
        ang_in = projected_angles(ws, wt, inside)[best_k, torch.arange(wt.shape[0])]
        ang_out = projected_angles(ws, wt, outside)[best_k, torch.arange(wt.shape[0])]
        e_in, e_out = in_out_deviation(ws, wt, inside)
        fan = student.fc2.weight.detach().norm(dim=0)
        s_best = rho.max(dim=1).values
        spec, unspec = fan[s_best > 0.9], fan[s_best < 0.8]
        attack = OracleAttack(cfg.synth_eps, 20, norm="l2", box=False, seed=cfg.seed)
        xa = attack(student, teacher, xt)
        delta = xa - xt
        out_share = float(((delta - delta @ u @ u.T).pow(2).sum(1) / delta.pow(2).sum(1).clamp_min(1e-30)).mean())
        rows.append({
            "student": kind, "train MSE": fit_stats["train_loss"], "grad norm": fit_stats["grad_norm"],
            "MBNC": float(best_correlation(rho).mean()),
            "angle in X (deg, mean)": float(ang_in.mean()), "angle in X (deg, max)": float(ang_in.max()),
            "angle outside X (deg, mean)": float(ang_out.mean()),
            "eps_in (best match, mean)": float(e_in[best_k, torch.arange(wt.shape[0])].mean()),
            "eps_out (best match, mean)": float(e_out[best_k, torch.arange(wt.shape[0])].mean()),
            "specialized / unspecialized students": f"{int((s_best > 0.9).sum())} / {int((s_best < 0.8).sum())}",
            "fan-out unspec / spec": float(unspec.mean() / spec.mean()) if len(spec) and len(unspec) else None,
            "attack energy outside X": out_share,
            "random share outside X": (cfg.synth_d - cfg.synth_rank) / cfg.synth_d,
            "robust acc % (L2 PGD-20)": 100 * float(agreement(student, teacher, xa).double().mean()),
        })
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------------------------------
# image part


def prune_by_fanout(net: ConvReLUNet, widths: tuple[int, ...]) -> ConvReLUNet:
    """A narrower copy of ``net`` keeping, per conv layer, the ``widths`` channels with the largest fan-out norm
    (the norm of the next layer's weights reading the channel; the head's for the last conv)."""
    if len(widths) != len(net.convs) or any(w > o for w, o in zip(widths, net.widths)) or min(widths) < 1:
        raise ValueError(f"pruned widths {widths} must be positive and at most the teacher widths {net.widths}")
    keep = []
    for i, conv in enumerate(net.convs):
        nxt = net.convs[i + 1].weight if i + 1 < len(net.convs) else net.head.weight[:, :, None, None]
        score = nxt.detach().transpose(0, 1).reshape(conv.out_channels, -1).norm(dim=1)
        keep.append(score.argsort(descending=True)[: widths[i]].sort().values)
    small = ConvReLUNet(widths, net.convs[0].in_channels, net.head.out_features, net.strides)
    with torch.no_grad():
        prev = torch.arange(net.convs[0].in_channels)
        for i, conv in enumerate(net.convs):
            small.convs[i].weight.copy_(conv.weight[keep[i]][:, prev])
            small.convs[i].bias.copy_(conv.bias[keep[i]])
            prev = keep[i]
        small.head.weight.copy_(net.head.weight[:, prev])
        small.head.bias.copy_(net.head.bias)
    return small


def _batched_acts(model: nn.Module, x: Tensor, batch_size: int = 250) -> list[Tensor]:
    outs: list[list[Tensor]] = []
    with torch.no_grad():
        for s in range(0, x.shape[0], batch_size):
            xb = x[s: s + batch_size]
            outs.append(activations(model, xb.float().div(255.0) if xb.dtype == torch.uint8 else xb))
    return [torch.cat([o[i] for o in outs]) for i in range(len(outs[0]))]


def _specialization(student: nn.Module, teacher: nn.Module, x: Tensor, basis: Tensor, pooling: str
                    ) -> dict[str, Any]:
    sa, ta = _batched_acts(student, x), _batched_acts(teacher, x)
    layers = []
    rho1 = None
    for i, (s, t) in enumerate(zip(sa[:-1], ta[:-1])):
        rho = normalized_correlation(channel_activations(s, pooling), channel_activations(t, pooling))
        if i == 0:
            rho1 = rho
        layers.append({"layer": i, "MBNC": float(best_correlation(rho).mean()),
                       "sorted BNC": [float(v) for v in best_correlation(rho).sort(descending=True).values],
                       **specialization_counts(rho)})
    ws, wt = student.net.convs[0].weight.detach(), teacher.net.convs[0].weight.detach()
    e_in, e_out = in_out_deviation(ws, wt, basis)
    best_k = rho1.argmax(dim=0)
    cols = torch.arange(wt.shape[0])
    return {"layers": layers,
            "eps_in": sorted(float(v) for v in e_in[best_k, cols]),
            "eps_out": sorted(float(v) for v in e_out[best_k, cols]),
            "pearson_rho_eps_in": pearson(rho1.flatten(), e_in.flatten())}


def _attack_set(cfg: TeacherStudentConfig, seed: int) -> dict[str, OracleAttack]:
    s = cfg.eval_steps
    return {"linf-pgd": OracleAttack(cfg.eps, s, norm="linf", seed=seed),
            "l2-pgd": OracleAttack(cfg.l2_eps, s, norm="l2", seed=seed),
            "l1-pgd": OracleAttack(cfg.l1_eps, s, norm="l1", seed=seed),
            "fgsm": OracleAttack(cfg.eps, 1, alpha=cfg.eps, norm="linf", random_start=False, seed=seed),
            "cw": OracleAttack(cfg.eps, s, norm="linf", objective="cw", seed=seed)}


def _robust(student: nn.Module, teacher: nn.Module, x: Tensor, cfg: TeacherStudentConfig,
            attacks: tuple[str, ...], surrogate: nn.Module | None = None, batch_size: int = 150
            ) -> dict[str, dict[str, float]]:
    """Robust accuracy (%) per attack: mean and variance over ``eval_repeats`` attack seeds."""
    out = {}
    for name in attacks:
        vals = []
        for r in range(cfg.eval_repeats):
            atk = _attack_set(cfg, cfg.seed + 100 * r)["linf-pgd" if name == "transfer" else name]
            src = surrogate if name == "transfer" else student
            if src is None:
                raise ValueError("the transfer attack needs a surrogate student")
            ok = []
            for s in range(0, x.shape[0], batch_size):
                xb = x[s: s + batch_size].float().div(255.0)
                ok.append(agreement(student, teacher, atk(src, teacher, xb)))
            vals.append(100.0 * float(torch.cat(ok).double().mean()))
        out[name] = {"mean": float(np.mean(vals)), "var": float(np.var(vals))}
    return out


def _plane_robust(student: nn.Module, teacher: nn.Module, x: Tensor, basis: Tensor, cfg: TeacherStudentConfig
                  ) -> dict[str, float]:
    """Robust accuracy (%) under in-plane / out-of-plane / standard Linf attacks: of two PGD runs per example
    (different random starts), in-plane keeps the one whose first-layer patches lie more inside the PCA subspace,
    out-of-plane the other; standard is the first run alone."""
    acc = {"in-plane": [], "out-plane": [], "standard": []}
    for s in range(0, x.shape[0], 150):
        xb = x[s: s + 150].float().div(255.0)
        a = OracleAttack(cfg.eps, cfg.eval_steps, seed=cfg.seed)(student, teacher, xb)
        b = OracleAttack(cfg.eps, cfg.eval_steps, seed=cfg.seed + 1)(student, teacher, xb)
        std = teacher.normalize.std.flatten()
        ra = subspace_residual(a - xb, basis, channel_std=std)
        rb = subspace_residual(b - xb, basis, channel_std=std)
        ok_a, ok_b = agreement(student, teacher, a), agreement(student, teacher, b)
        a_in = rb >= ra
        acc["in-plane"].append(torch.where(a_in, ok_a, ok_b))
        acc["out-plane"].append(torch.where(a_in, ok_b, ok_a))
        acc["standard"].append(ok_a)  # one plain PGD run, whatever its subspace share
    return {k: 100.0 * float(torch.cat(v).double().mean()) for k, v in acc.items()}


def _student_widths(cfg: TeacherStudentConfig) -> tuple[int, ...]:
    return tuple(max(1, int(math.floor(w * cfg.student_scale + 0.5))) for w in cfg.pruned_widths)


def _new_student(cfg: TeacherStudentConfig, c: int, k: int, seed: int, device: str) -> nn.Module:
    torch.manual_seed(seed)
    return wrap(ConvReLUNet(_student_widths(cfg), c, k), c).to(device)


def _train_with_checkpoints(student: nn.Module, loss_fn: Any, x: Tensor, y: Tensor, checkpoints: tuple[int, ...],
                            cfg: TeacherStudentConfig, name: str, out: Path, reuse: bool, device: str,
                            progress: bool) -> dict[int, nn.Module]:
    """Adam at a constant rate; a copy of the student at every epoch in ``checkpoints`` (saved as weights)."""
    import copy

    paths = {e: out / f"student-{name}-e{e}.safetensors" for e in checkpoints}
    if reuse and all(p.is_file() for p in paths.values()):
        models = {}
        for e, p in paths.items():
            m = copy.deepcopy(student)
            m.load_state_dict(load_weights(p, device))
            models[e] = m.eval()
        return models
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    gen = torch.Generator(device=x.device).manual_seed(cfg.seed)
    models = {}
    for epoch in range(1, max(checkpoints) + 1):
        train_epoch(student, loss_fn, x, y, opt, sched, cfg.batch_size, generator=gen, progress=progress,
                    desc=f"{name} {epoch}/{max(checkpoints)}")
        if epoch in checkpoints:
            save_weights(paths[epoch], student.state_dict(), {"student": name, "epoch": str(epoch)})
            models[epoch] = copy.deepcopy(student).eval()
    return models


def _claim(text: str, ours: str, paper: str, held: bool | None) -> dict[str, Any]:
    return {"claim": text, "measured": ours, "source": paper,
            "held at our scale": "n/a" if held is None else ("yes" if held else "no")}


def run_teacher_student(cfg: TeacherStudentConfig, out: str | Path, *, overwrite: bool = False,
                        progress: bool = True) -> dict[str, Any]:
    """Run the parts in ``cfg.parts``; write tables, figures, weights and metrics.json into ``out``."""
    unknown = set(cfg.parts) - {"synthetic", "images"}
    if unknown or not cfg.parts:
        raise ValueError(f"parts must be synthetic and/or images, got {cfg.parts}")
    if cfg.synth_rank >= cfg.synth_d or cfg.synth_rank < 1:
        raise ValueError(f"the synthetic subspace rank must be in 1..d-1, got r={cfg.synth_rank}, d={cfg.synth_d}")
    if min(cfg.st_epochs + cfg.at_epochs) < 1 or cfg.eval_repeats < 1 or (cfg.n_test is not None and cfg.n_test < 1):
        raise ValueError("epochs, eval_repeats and n_test must be >= 1")
    device = resolve_device(cfg.device)
    out = Path(out)
    reuse = config_matches(out, cfg)
    train = test = None
    if "images" in cfg.parts:
        train = load_subset(cfg.dataset, cfg.root, "train", cfg.n_train, cfg.seed, device)
        test = load_subset(cfg.dataset, cfg.root, "test", cfg.n_test, None, device)
        if len(cfg.pruned_widths) != len(cfg.teacher_widths):
            raise ValueError(f"pruned widths {cfg.pruned_widths} need one entry per teacher layer "
                             f"{cfg.teacher_widths}")
    out = make_run_dir(out, cfg, overwrite=overwrite)
    metrics: dict[str, Any] = {"device": device}
    claims: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    if "synthetic" in cfg.parts:
        syn = synthetic_check(cfg)
        write_table(out, "synthetic", syn["rows"], f"Two-layer teacher ({cfg.synth_teacher_hidden} nodes) and "
                    f"students ({cfg.synth_student_hidden} nodes) on rank-{cfg.synth_rank} inputs in R^{cfg.synth_d}: "
                    "specialisation inside and outside the data subspace X")
        metrics["synthetic"] = syn
        by = {r["student"]: r for r in syn["rows"]}
        claims.append(_claim("Thm 1: inside X the best-matched student weight is parallel to the teacher's",
                             f"mean angle in X {by['st']['angle in X (deg, mean)']:.2f} deg (ST)",
                             "angle 0 when the gradient is 0", by["st"]["angle in X (deg, mean)"] < 5.0))
        claims.append(_claim("Thm 2 / Fig 1c: outside X the angle stays large after ST",
                             f"{by['st']['angle outside X (deg, mean)']:.1f} deg (ST)", "qualitative",
                             by["st"]["angle outside X (deg, mean)"] > 30.0))
        claims.append(_claim("Sec 4.3: noise outside X and AT shrink the outside angle",
                             f"ST {by['st']['angle outside X (deg, mean)']:.1f}, ST+noise "
                             f"{by['st-noise']['angle outside X (deg, mean)']:.1f}, AT "
                             f"{by['at']['angle outside X (deg, mean)']:.1f} deg", "qualitative",
                             by["st-noise"]["angle outside X (deg, mean)"] < by["st"]["angle outside X (deg, mean)"]
                             and by["at"]["angle outside X (deg, mean)"] < by["st"]["angle outside X (deg, mean)"]))
        ratio = by["st"]["fan-out unspec / spec"]
        claims.append(_claim("Cor 1: unspecialised student nodes (best NC < 0.8) have small fan-out weights",
                             "no unspecialised node" if ratio is None else
                             f"mean ||v|| unspecialised / specialised = {ratio:.3f} (ST)", "||v_k'|| <= O(eps)",
                             None if ratio is None else ratio < 0.5))
        claims.append(_claim("Oracle-adversarial perturbations of an ST student lie mostly outside X",
                             f"{100 * by['st']['attack energy outside X']:.1f}% of the energy (random: "
                             f"{100 * by['st']['random share outside X']:.0f}%)", "conjecture (Sec 1, Fig 1c2)",
                             by["st"]["attack energy outside X"] > by["st"]["random share outside X"]))
    if "images" in cfg.parts:
        metrics["images"] = _run_images(cfg, train, test, out, reuse, device, progress, claims)
    write_table(out, "claims", claims, "Claims of spec-001, measured at our scale")
    metrics["claims"] = claims
    metrics["seconds"] = round(time.perf_counter() - t0, 1)
    finish_run(out, metrics)
    return metrics


def _run_images(cfg: TeacherStudentConfig, train: Any, test: Any, out: Path, reuse: bool, device: str,
                progress: bool, claims: list[dict[str, Any]]) -> dict[str, Any]:
    c, n, _ = train.shape
    k = len(train.classes)
    res: dict[str, Any] = {}
    # teacher: trained on labels, pruned by fan-out norm, briefly fine-tuned
    torch.manual_seed(cfg.seed)
    big = wrap(ConvReLUNet(cfg.teacher_widths, c, k), c).to(device)
    tpath = out / "teacher.safetensors"
    gen = torch.Generator(device=train.x.device).manual_seed(cfg.seed)
    if reuse and tpath.is_file():
        teacher = wrap(ConvReLUNet(cfg.pruned_widths, c, k), c).to(device)
        teacher.load_state_dict(load_weights(tpath, device))
        res["teacher"] = "reused"
    else:
        opt = torch.optim.Adam(big.parameters(), lr=cfg.teacher_lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        for e in range(cfg.teacher_epochs):
            train_epoch(big, StandardTraining(), train.x, train.y, opt, sched, cfg.batch_size, generator=gen,
                        progress=progress, desc=f"teacher {e + 1}/{cfg.teacher_epochs}")
        acc_big = accuracy(big, test.x, test.y)
        teacher = wrap(prune_by_fanout(big.net, cfg.pruned_widths), c).to(device)
        acc_pruned = accuracy(teacher, test.x, test.y)
        with torch.no_grad():
            xb = test.x.float().div(255.0)
            lb, lp = big(xb), teacher(xb)
        change = float((lp - lb).norm() / lb.norm())
        opt = torch.optim.Adam(teacher.parameters(), lr=cfg.teacher_lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        for e in range(cfg.teacher_finetune_epochs):
            train_epoch(teacher, StandardTraining(), train.x, train.y, opt, sched, cfg.batch_size, generator=gen,
                        progress=progress, desc=f"pruned teacher {e + 1}/{cfg.teacher_finetune_epochs}")
        save_weights(tpath, teacher.state_dict(), {"role": "teacher", "widths": str(cfg.pruned_widths)})
        res["teacher"] = {"accuracy % (full)": 100 * acc_big, "accuracy % (pruned)": 100 * acc_pruned,
                          "relative logit change by pruning": change}
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    res["teacher_accuracy %"] = 100 * accuracy(teacher, test.x, test.y)
    # patch PCA of the first layer's inputs
    vals, vecs = patch_pca(teacher.normalize(train.x[:1000].float().div(255.0)).cpu(), 3)
    dim = vals.numel()
    r = cfg.pca_components or max(1, round(dim * 17 / 27))
    basis = vecs[:, :r]
    res["pca"] = {"dimension": dim, "components": r, "explained %": float(100 * vals[:r].sum() / vals.sum()),
                  "eigenvalues": [float(v) for v in vals]}
    if cfg.figures:
        line_plot(out / "pca_spectrum.png", list(range(1, dim + 1)), {"eigenvalue": [float(v) for v in vals]},
                  f"PCA of the {dim}-dim first-layer patches (Fig 2 left)", "component", "eigenvalue", logy=True)
    ty = torch.cat([teacher(train.x[s: s + 500].float().div(255.0)).argmax(1) for s in range(0, len(train), 500)])
    sw = cfg.seed + 1
    students: dict[str, dict[int, nn.Module]] = {}

    def train_student(name: str, loss_fn: Any, checkpoints: tuple[int, ...], seed: int = sw) -> None:
        students[name] = _train_with_checkpoints(_new_student(cfg, c, k, seed, device), loss_fn, train.x, ty,
                                                 checkpoints, cfg, name, out, reuse, device, progress)

    def at_attack(offset: int) -> OracleAttack:  # one attack (one random stream) per student
        return OracleAttack(cfg.eps, cfg.train_steps, cfg.train_alpha, seed=cfg.seed + offset)

    noise_gen = torch.Generator(device=train.x.device).manual_seed(cfg.seed + 7)
    train_student("st-logit", LogitTraining(teacher), cfg.st_epochs)
    train_student("st-label", LabelTraining(teacher), cfg.st_epochs)
    train_student("st-noise", LogitTraining(teacher, cfg.noise_sigma, noise_gen), (max(cfg.st_epochs),))
    train_student("surrogate", LogitTraining(teacher), (max(cfg.st_epochs),), seed=sw + 100)
    train_student("at", OracleAT(teacher, at_attack(0)), tuple(sorted(set(cfg.at_epochs) | {cfg.plane_epochs,
                                                                                       cfg.ccat_epochs})))
    if cfg.plane_epochs > 0:
        std = teacher.normalize.std.flatten()
        train_student("at-in", OracleAT(teacher, at_attack(1), "in", basis, std), (cfg.plane_epochs,))
        train_student("at-out", OracleAT(teacher, at_attack(2), "out", basis, std), (cfg.plane_epochs,))
    for rho in cfg.ccat_rhos:
        ccat_attack = OracleAttack(cfg.eps, cfg.train_steps, cfg.train_alpha, objective="linf", seed=cfg.seed + 3,
                                   radius=cfg.ccat_radius)
        train_student(f"ccat-{rho:g}", TeacherCCAT(teacher, ccat_attack, rho), (cfg.ccat_epochs,))
    surrogate = students["surrogate"][max(cfg.st_epochs)]
    st_final = max(cfg.st_epochs)
    xt = test.x

    # specialisation of every trained student
    spec_rows, spec = [], {}
    for name, ckpts in students.items():
        if name == "surrogate":
            continue
        for e, m in ckpts.items():
            s = _specialization(m, teacher, xt, basis, cfg.pooling)
            spec[f"{name}@{e}"] = s
            row = {"student": name, "epochs": e, "clean agreement %": 100 * float(
                agreement(m, teacher, xt.float().div(255.0)).double().mean())}
            for lay in s["layers"]:
                row[f"MBNC L{lay['layer']}"] = lay["MBNC"]
            for lay in s["layers"]:
                row[f"unspec/spec L{lay['layer']}"] = lay["teacher_ratio"]
            row["mean eps_in L0"] = float(np.mean(s["eps_in"]))
            row["mean eps_out L0"] = float(np.mean(s["eps_out"]))
            row["pearson(rho, eps_in) L0"] = s["pearson_rho_eps_in"]
            spec_rows.append(row)
    write_table(out, "specialization", spec_rows, "Specialisation per student: MBNC per layer, unspecialised/"
                "specialised teacher nodes (BNC < 0.8 / > 0.9), first-layer eps_in/eps_out and Pearson(rho, eps_in)")
    res["specialization"] = spec

    # Table 1: AT(T) vs ST-logit(final) under every attack
    t1 = {f"AT({e})": _robust(students["at"][e], teacher, xt, cfg, ATTACKS, surrogate) for e in cfg.at_epochs}
    t1[f"ST-logit({st_final})"] = _robust(students["st-logit"][st_final], teacher, xt, cfg, ATTACKS, surrogate)
    rows1 = []
    for a in ATTACKS:
        row = {"attack": a}
        for col, v in t1.items():
            row[f"{col} mu"] = v[a]["mean"]
            row[f"{col} var"] = v[a]["var"]
        row["paper AT(50)"] = PAPER["table1_at50"][a]
        row["paper AT(150)"] = PAPER["table1_at150"][a]
        row["paper ST(300)"] = PAPER["table1_st300"][a]
        rows1.append(row)
    write_table(out, "table1", rows1, f"Table 1: robust accuracy (%) of AT students by epoch vs ST-logit({st_final});"
                f" Linf eps {cfg.eps:g}, L2 {cfg.l2_eps:g}, L1 {cfg.l1_eps:g}, {cfg.eval_steps} steps, "
                f"{cfg.eval_repeats} repeats (paper columns: CIFAR-10, 10/255, its own epochs)")
    res["table1"] = t1
    # Table 2: in-plane / out-of-plane / standard AT under the three attacks
    rows2, t2 = [], {}
    if cfg.plane_epochs > 0:
        for name in ("at-in", "at-out", "at"):
            v = _plane_robust(students[name][cfg.plane_epochs], teacher, xt, basis, cfg)
            t2[name] = v
            p = PAPER["table2"][name]
            rows2.append({"model": f"{name}({cfg.plane_epochs})", "in-plane attack": v["in-plane"],
                          "out-plane attack": v["out-plane"], "standard attack": v["standard"],
                          "paper in / out / standard": f"{p[0]} / {p[1]} / {p[2]}"})
        write_table(out, "table2", rows2, "Table 2: robust accuracy (%) of in-plane / out-of-plane / standard AT "
                    "(the in/out attack keeps, of two Linf PGD runs, the one closer to / farther from the patch "
                    "subspace; standard = the first run alone)")
        res["table2"] = t2
    # Table 3: ST-logit vs ST-label by epoch
    rows3, t3 = [], {}
    for name in ("st-logit", "st-label"):
        t3[name] = {e: _robust(students[name][e], teacher, xt, cfg, ("linf-pgd",))["linf-pgd"]["mean"]
                    for e in cfg.st_epochs}
        rows3.append({"training": name, **{f"ST({e})": v for e, v in t3[name].items()},
                      "paper ST(50..300)": " / ".join(f"{v:g}" for v in PAPER["table3"][name])})
    write_table(out, "table3", rows3, "Table 3: robust accuracy (%) under Linf PGD for standard training by epoch")
    res["table3"] = t3
    # Table 4: CCAT vs AT at the same number of epochs
    t4 = {f"ccat-{r:g}": _robust(students[f"ccat-{r:g}"][cfg.ccat_epochs], teacher, xt, cfg, ("linf-pgd",))
          ["linf-pgd"]["mean"] for r in cfg.ccat_rhos}
    t4["at"] = _robust(students["at"][cfg.ccat_epochs], teacher, xt, cfg, ("linf-pgd",))["linf-pgd"]["mean"]
    t4["st-noise"] = _robust(students["st-noise"][st_final], teacher, xt, cfg, ("linf-pgd",))["linf-pgd"]["mean"]
    rows4 = [{"model": f"{kname}({cfg.ccat_epochs if kname != 'st-noise' else st_final})", "robust %": v,
              "paper (150 epochs)": PAPER["table4"].get(kname)} for kname, v in t4.items()]
    write_table(out, "table4", rows4, "Table 4: robust accuracy (%) of teacher-student CCAT vs AT (Linf PGD); "
                "ST-logit + Gaussian noise added for Fig 10")
    res["table4"] = t4
    if cfg.figures:
        _figures(out, spec, students, cfg)
    _image_claims(claims, t1, t2, t3, t4, spec, cfg)
    return res


def _figures(out: Path, spec: dict[str, Any], students: dict[str, Any], cfg: TeacherStudentConfig) -> None:
    final = max(cfg.st_epochs)
    keys = [f"st-logit@{final}", f"st-label@{final}", f"at@{max(cfg.at_epochs)}", f"st-noise@{final}"]
    keys = [k for k in keys if k in spec]
    n_layers = len(spec[keys[0]]["layers"])
    for lay in range(n_layers):
        curves = {k: spec[k]["layers"][lay]["sorted BNC"] for k in keys}
        length = min(len(v) for v in curves.values())
        line_plot(out / f"sorted_bnc_L{lay}.png", list(range(1, length + 1)),
                  {k: v[:length] for k, v in curves.items()}, f"Sorted BNC, layer {lay} (Figs 3, 8)",
                  "teacher node (sorted)", "best normalised correlation")
    m = min(len(spec[k]["eps_in"]) for k in keys)
    line_plot(out / "eps_in_out.png", list(range(1, m + 1)),
              {**{f"eps_in {k}": spec[k]["eps_in"][:m] for k in keys},
               **{f"eps_out {k}": spec[k]["eps_out"][:m] for k in keys}},
              "First-layer eps_in / eps_out, best-NC match per teacher node (Figs 4, 9, 10)", "teacher node (sorted)",
              "deviation")
    groups = [f"L{i}" for i in range(n_layers)]
    bar_plot(out / "mbnc.png", groups, {k: [spec[k]["layers"][i]["MBNC"] for i in range(n_layers)] for k in keys},
             "MBNC per layer (Fig 6 left)", "MBNC")


def _image_claims(claims: list[dict[str, Any]], t1: dict, t2: dict, t3: dict, t4: dict, spec: dict,
                  cfg: TeacherStudentConfig) -> None:
    st_final, at_last = max(cfg.st_epochs), max(cfg.at_epochs)
    st_col = t1[f"ST-logit({st_final})"]
    at_first = t1[f"AT({min(cfg.at_epochs)})"]
    at_end = t1[f"AT({at_last})"]
    claims.append(_claim(f"AT beats ST-logit({st_final}) under Linf PGD even at its first checkpoint",
                         f"AT({min(cfg.at_epochs)}) {at_first['linf-pgd']['mean']:.2f} vs ST "
                         f"{st_col['linf-pgd']['mean']:.2f}", "AT(50) 78.79 vs ST(300) 74.39",
                         at_first["linf-pgd"]["mean"] > st_col["linf-pgd"]["mean"]))
    wins = sum(at_end[a]["mean"] > st_col[a]["mean"] for a in ATTACKS)
    claims.append(_claim(f"AT({at_last}) beats ST-logit on every attack", f"{wins}/{len(ATTACKS)} attacks",
                         "from AT(100) on: 6/6", wins == len(ATTACKS)))
    if t2:
        claims.append(_claim("In-plane AT is the most robust, out-plane AT the least (standard attack)",
                             " / ".join(f"{k} {v['standard']:.2f}" for k, v in t2.items()), "89.28 / 83.60 / 87.18",
                             t2["at-in"]["standard"] > t2["at"]["standard"] > t2["at-out"]["standard"]))
        lowest = sum(v["in-plane"] <= min(v["out-plane"], v["standard"]) for v in t2.values())
        claims.append(_claim("The in-plane attack gives the lowest accuracy in every row (of in / out / standard)",
                             f"{lowest}/3 rows", "3/3 rows", lowest == 3))
    logit, label = t3["st-logit"], t3["st-label"]
    claims.append(_claim("ST-logit is more robust than ST-label at every epoch",
                         ", ".join(f"{e}: {logit[e]:.1f} vs {label[e]:.1f}" for e in cfg.st_epochs),
                         "62.77 vs 25.79 at 300", all(logit[e] > label[e] for e in cfg.st_epochs)))
    es = sorted(cfg.st_epochs)
    claims.append(_claim("Robustness of ST-logit grows with epochs", " -> ".join(f"{logit[e]:.1f}" for e in es),
                         "23.12 -> 62.77", logit[es[-1]] > logit[es[0]]))
    ccat = {r: t4[f"ccat-{r:g}"] for r in cfg.ccat_rhos}
    claims.append(_claim("CCAT-TS is far below AT", ", ".join(f"rho {r:g}: {v:.1f}" for r, v in ccat.items())
                         + f"; AT {t4['at']:.1f}", "47-52 vs 84.07", max(ccat.values()) < t4["at"]))
    mb = {k: float(np.mean([lay["MBNC"] for lay in spec[k]["layers"]])) for k in spec}
    claims.append(_claim("AT specialises more than ST-logit (mean MBNC over layers)",
                         f"AT {mb[f'at@{at_last}']:.3f} vs ST-logit {mb[f'st-logit@{st_final}']:.3f}",
                         "Fig 3 / Fig 6 (no numbers)", mb[f"at@{at_last}"] > mb[f"st-logit@{st_final}"]))
    claims.append(_claim("Logit training specialises more than label training",
                         f"{mb[f'st-logit@{st_final}']:.3f} vs {mb[f'st-label@{st_final}']:.3f}",
                         "Fig 8 (no numbers)", mb[f"st-logit@{st_final}"] > mb[f"st-label@{st_final}"]))
    p = spec[f"st-logit@{st_final}"]["pearson_rho_eps_in"]
    claims.append(_claim("rho and eps_in are strongly negatively correlated (first layer, ST)", f"Pearson {p:.3f}",
                         "'strong negative' (no number)", p < -0.5))
    no, st = spec[f"st-noise@{st_final}"], spec[f"st-logit@{st_final}"]
    claims.append(_claim("Gaussian noise lowers eps_in and eps_out (Fig 10)",
                         f"eps_in {np.mean(st['eps_in']):.3f} -> {np.mean(no['eps_in']):.3f}, eps_out "
                         f"{np.mean(st['eps_out']):.3f} -> {np.mean(no['eps_out']):.3f}", "qualitative",
                         np.mean(no["eps_in"]) < np.mean(st["eps_in"]) and
                         np.mean(no["eps_out"]) < np.mean(st["eps_out"])))
