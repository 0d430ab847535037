"""Attacks and training losses of the teacher-student setting (spec-001 sections 2.8, 2.11, 2.12).

- **Oracle-adversarial** (Eq. 3): x' = argmax over the ball of L[f(x'), f*(x')], gradients through the student f
  and the teacher f*; ``objective="l2"`` is ||f(x') - f*(x')||^2 on the logits (the paper's robust-accuracy
  attack), ``"linf"`` is max_k |f_k(x') - f*_k(x')| (the teacher-student CCAT attack), ``"cw"`` is the CW margin
  max_{i != t} f_i(x') - f_t(x') with t = argmax f*(x') (a CW-loss PGD: the source gives no CW settings).
- **Data-adversarial** (Eq. 4, ``objective="data"``): CE of the student against y = argmax f*(x) of the clean
  point, gradients through the student only.
- **Robust accuracy**: the fraction of x' with argmax f(x') = argmax f*(x') (teacher's label at x').

:class:`OracleAttack` runs PGD in the Linf, L2 or L1 ball (steps and projections of :mod:`vision.attacks`), with
a random start and the best iterate per example. ``box=False`` drops the [0, 1] box for synthetic inputs.
Training losses: :class:`LogitTraining` (ST-logit: MSE to the teacher's logits), :class:`LabelTraining` (ST-label:
CE to the teacher's argmax), :class:`OracleAT` (teacher-target AT on oracle-adversarial points),
:class:`TeacherCCAT` (the teacher-student CCAT of Sec. 5.6). Each is ``loss_fn(student, x, y) -> (loss, logits)``
with the teacher held inside, so :func:`vision.defenses.loop.train_epoch` can train with it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision.attacks.base import eval_mode
from vision.attacks.pgd import make_generator
from vision.attacks.projections import project, project_l1, project_l2, project_linf
from vision.attacks.steps import check_norm, default_alpha, l1_k_range, random_start, steepest_step

__all__ = ["OBJECTIVES", "discrepancy", "OracleAttack", "agreement", "LogitTraining", "LabelTraining",
           "OracleAT", "TeacherCCAT", "ccat_lambda", "subspace_residual"]

OBJECTIVES = ("l2", "linf", "cw", "data")


def discrepancy(s: Tensor, t: Tensor, objective: str, y: Tensor | None = None) -> Tensor:
    """Per-example objective (to maximise) from student logits ``s`` and teacher logits ``t``."""
    s, t = s.float(), t.float()
    if objective == "l2":
        return (s - t).pow(2).sum(dim=1)
    if objective == "linf":
        return (s - t).abs().amax(dim=1)
    if objective == "cw":
        lab = t.argmax(dim=1)
        other = s.scatter(1, lab[:, None], -torch.inf).amax(dim=1)
        return other - s.gather(1, lab[:, None]).squeeze(1)
    if objective == "data":
        if y is None:
            raise ValueError("the data-adversarial objective needs the clean labels y")
        return F.cross_entropy(s, y, reduction="none")
    raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")


def _project_free(delta: Tensor, eps: float, norm: str) -> Tensor:
    if norm == "linf":
        return project_linf(delta, eps)
    if norm == "l2":
        return project_l2(delta, eps)
    flat = project_l1(delta.reshape(delta.shape[0], -1), eps)
    return flat.reshape(delta.shape)


class OracleAttack:
    """PGD on a teacher-student objective in the ``norm`` ball of radius ``eps``; ``atk(student, teacher, x)``
    returns x' (the best iterate per example). ``steps=1, random_start=False, alpha=eps, norm="linf"`` is FGSM."""

    def __init__(self, eps: float, steps: int = 10, alpha: float | None = None, norm: str = "linf",
                 objective: str = "l2", random_start: bool = True, box: bool = True, seed: int | None = None,
                 l1_k: tuple[float, float] = (5.0, 20.0), radius: str = "fixed") -> None:
        if eps < 0 or steps < 1:
            raise ValueError(f"need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
        if objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if radius not in ("fixed", "uniform"):
            raise ValueError(f"radius must be 'fixed' or 'uniform', got {radius!r}")
        self.eps, self.steps, self.norm = float(eps), int(steps), check_norm(norm)
        self.alpha = float(alpha) if alpha is not None else default_alpha(self.eps, self.steps)
        self.objective, self.random_start, self.box, self.seed = objective, bool(random_start), bool(box), seed
        self.l1_k, self.radius = l1_k, radius
        self._gen: torch.Generator | None = None

    def _project(self, delta: Tensor, x: Tensor) -> Tensor:
        return project(delta, x, self.eps, self.norm) if self.box else _project_free(delta, self.eps, self.norm)

    def __call__(self, student: nn.Module, teacher: nn.Module, x: Tensor) -> Tensor:
        """x' per example. The seeded generator lives as long as the attack, so successive calls (training
        batches, or the two runs of in/out-of-plane AT) draw different random starts; a new attack object with
        the same seed repeats them. ``radius="uniform"``: each example gets its own radius u * eps, u ~ U(0, 1)
        (PGD on delta in the eps ball, evaluated at u * delta: the same steps and projections, rescaled)."""
        x = x.detach()
        if self.seed is not None and (self._gen is None or self._gen.device != x.device):
            self._gen = make_generator(self.seed, x.device)
        gen = self._gen
        shape = (-1, *([1] * (x.dim() - 1)))
        with eval_mode(student), eval_mode(teacher), torch.enable_grad():
            y = teacher(x).argmax(dim=1) if self.objective == "data" else None
            scale = torch.ones(x.shape[0], device=x.device, dtype=x.dtype)
            if self.radius == "uniform":
                scale = torch.rand(x.shape[0], generator=gen, device=x.device, dtype=x.dtype)
            if self.random_start:
                delta = random_start(x, self.eps, self.norm, gen) if self.box else \
                    _project_free(torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype) * self.eps,
                                  self.eps, self.norm)
            else:
                delta = torch.zeros_like(x)
            k_range = l1_k_range(x[0].numel(), self.l1_k, True)
            best = delta.clone()
            best_obj = torch.full((x.shape[0],), -torch.inf, device=x.device)
            for t in range(self.steps + 1):
                last = t == self.steps
                delta = delta.detach().requires_grad_(not last)
                xa = x + scale.view(shape) * delta
                if self.box:
                    xa = xa.clamp(0.0, 1.0)
                s_out = student(xa)
                t_out = s_out if self.objective == "data" else teacher(xa)
                obj = discrepancy(s_out, t_out, self.objective, y)
                upd = obj.detach() > best_obj
                best[upd] = delta.detach()[upd]
                best_obj = torch.where(upd, obj.detach(), best_obj)
                if last:
                    break
                (g,) = torch.autograd.grad(obj.sum(), delta)
                step = steepest_step(g, x, delta.detach(), self.alpha, self.norm, k_range, gen)
                delta = self._project(delta.detach() + step, x)
        out = x + scale.view(shape) * best
        return (out.clamp(0.0, 1.0) if self.box else out).detach()


@torch.no_grad()
def agreement(student: nn.Module, teacher: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Per example: argmax student(x) == argmax teacher(x) (bool)."""
    with eval_mode(student), eval_mode(teacher):
        return torch.cat([student(x[s: s + batch_size]).argmax(1) == teacher(x[s: s + batch_size]).argmax(1)
                          for s in range(0, x.shape[0], batch_size)])


def subspace_residual(delta: Tensor, basis: Tensor, kernel: int = 3, channel_std: Tensor | None = None) -> Tensor:
    """Per example: the fraction of the perturbation's first-layer patch energy outside span(basis); with
    ``channel_std`` the pixel perturbation is first divided by the model's per-channel std (the basis lives in the
    normalised space the first layer sees)."""
    if channel_std is not None:
        delta = delta / channel_std.to(delta.device, delta.dtype).view(1, -1, 1, 1)
    cols = F.unfold(delta.double(), kernel).transpose(1, 2)  # (B, P, D)
    u = basis.double().to(delta.device)
    inside = cols @ u @ u.T
    tot = cols.pow(2).sum(dim=(1, 2)).clamp_min(1e-30)
    return (cols - inside).pow(2).sum(dim=(1, 2)) / tot


class _TeacherLoss:
    def __init__(self, teacher: nn.Module) -> None:
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)


class LogitTraining(_TeacherLoss):
    """ST-logit: MSE between student and teacher logits (optionally with Gaussian input noise ``sigma``)."""

    def __init__(self, teacher: nn.Module, sigma: float = 0.0, generator: torch.Generator | None = None) -> None:
        super().__init__(teacher)
        self.sigma, self.generator = float(sigma), generator

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.sigma > 0:
            x = x + self.sigma * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=self.generator)
        with torch.no_grad():
            t = self.teacher(x)
        s = student(x)
        return F.mse_loss(s.float(), t.float()), s


class LabelTraining(_TeacherLoss):
    """ST-label: CE between the student's logits and the teacher's argmax."""

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            lab = self.teacher(x).argmax(1)
        s = student(x)
        return F.cross_entropy(s.float(), lab), s


class OracleAT(_TeacherLoss):
    """Teacher-target AT: MSE between student and teacher logits at oracle-adversarial points (``attack``);
    ``mode="in"``/``"out"`` takes, of two PGD runs, the one closer to / farther from the patch subspace ``basis``
    (in-plane / out-of-plane AT of Table 2)."""

    def __init__(self, teacher: nn.Module, attack: OracleAttack, mode: str = "standard",
                 basis: Tensor | None = None, channel_std: Tensor | None = None) -> None:
        super().__init__(teacher)
        if mode not in ("standard", "in", "out"):
            raise ValueError(f"AT mode must be standard, in or out, got {mode!r}")
        if mode != "standard" and basis is None:
            raise ValueError("in-plane / out-of-plane AT needs the patch-PCA basis")
        self.attack, self.mode, self.basis, self.channel_std = attack, mode, basis, channel_std

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        xa = self.attack(student, self.teacher, x)
        if self.mode != "standard":
            xb = self.attack(student, self.teacher, x)
            ra = subspace_residual(xa - x, self.basis, channel_std=self.channel_std)
            rb = subspace_residual(xb - x, self.basis, channel_std=self.channel_std)
            pick_b = rb < ra if self.mode == "in" else rb > ra
            xa = torch.where(pick_b.view(-1, *([1] * (x.dim() - 1))), xb, xa)
        student.train()
        with torch.no_grad():
            t = self.teacher(xa)
        s = student(xa)
        return F.mse_loss(s.float(), t.float()), s


def ccat_lambda(delta: Tensor, eps: float, rho: float) -> Tensor:
    """lambda(delta) = (1 - min(1, ||delta||_inf / eps))^rho per example."""
    n = delta.reshape(delta.shape[0], -1).abs().amax(dim=1)
    return (1.0 - (n / eps).clamp(max=1.0)).pow(rho)


class TeacherCCAT(_TeacherLoss):
    """Teacher-student CCAT: half of each batch clean (CE to the teacher's label at x), half adversarial with the
    max-|s - t| attack and the soft label lambda onehot(y) + (1 - lambda) / K (CE against it)."""

    def __init__(self, teacher: nn.Module, attack: OracleAttack, rho: float) -> None:
        super().__init__(teacher)
        if attack.objective != "linf" or attack.norm != "linf":
            raise ValueError("teacher-student CCAT uses the Linf-ball attack on max_k |s_k - t_k|")
        self.attack, self.rho = attack, float(rho)
        self.last_lambda = float("nan")

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            lab = self.teacher(x).argmax(1)
        half = x.shape[0] // 2
        xa = self.attack(student, self.teacher, x[half:])
        student.train()
        s = student(torch.cat([x[:half], xa]))
        k = s.shape[1]
        lam = ccat_lambda(xa - x[half:], self.attack.eps, self.rho)
        soft = lam[:, None] * F.one_hot(lab[half:], k).float() + (1 - lam[:, None]) / k
        loss_clean = F.cross_entropy(s[:half].float(), lab[:half], reduction="sum")
        loss_adv = -(soft * F.log_softmax(s[half:].float(), dim=1)).sum()
        self.last_lambda = float(lam.mean())
        return (loss_clean + loss_adv) / x.shape[0], s
