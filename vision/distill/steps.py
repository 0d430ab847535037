"""One optimisation step per mini-batch for every student-training method of the distillation study.

Each step object is called as ``step(student, x, y, teacher_logits, update) -> (loss, logits)`` where ``update``
applies one optimiser step to a loss (zero_grad, backward, step, scheduler step). Most methods update once per
batch; the replay methods (Fast-ARD, free adversarial training) update ``m`` times on the same batch.

- ``standard``: CE on clean inputs (no teacher).
- ``kd``: natural knowledge distillation, :func:`vision.distill.losses.kd_loss` on clean inputs.
- ``at``: PGD adversarial training of the student (Madry), via :class:`vision.defenses.pgd_training.PGDTraining`.
- ``ard``: Algorithm 1. PGD on the student (cross-entropy with the true label, or the KL to the teacher's clean
  output with ``attack_loss="kl"``), then the ARD loss at the attacked input, teacher on the clean input.
- ``fast-ard`` (Algorithm 2) and ``free`` (free adversarial training with hard labels): see :class:`ReplayStep`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vision.attacks.base import eval_mode
from vision.attacks.pgd import PGD
from vision.attacks.projections import clip_box, project_linf
from vision.defenses.pgd_training import PGDTraining

from .losses import ard_loss, distill_kl, kd_loss

Update = Callable[[Tensor], None]

__all__ = ["StandardStep", "KDStep", "ATStep", "ARDStep", "ReplayStep", "kl_pgd"]


class StandardStep:
    """Cross-entropy on clean inputs."""

    needs_teacher = False

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, teacher_logits: Tensor | None,
                 update: Update) -> tuple[Tensor, Tensor]:
        logits = student(x)
        loss = F.cross_entropy(logits.float(), y)
        update(loss)
        return loss.detach(), logits.detach()


class KDStep:
    """Natural knowledge distillation: ``alpha t^2 KL(T^t(x) || S^t(x)) + (1 - alpha) CE(S(x), y)``."""

    needs_teacher = True

    def __init__(self, temperature: float, alpha: float = 1.0) -> None:
        self.temperature, self.alpha = float(temperature), float(alpha)

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, teacher_logits: Tensor | None,
                 update: Update) -> tuple[Tensor, Tensor]:
        logits = student(x)
        loss = kd_loss(logits, teacher_logits, self.temperature, self.alpha, y)
        update(loss)
        return loss.detach(), logits.detach()


class ATStep:
    """PGD adversarial training of the student alone (the "AT student" baseline of Tables 4.6-4.8)."""

    needs_teacher = False

    def __init__(self, eps: float, step_size: float, steps: int) -> None:
        self.inner = PGDTraining(eps, step_size, steps, "linf")

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, teacher_logits: Tensor | None,
                 update: Update) -> tuple[Tensor, Tensor]:
        loss, logits = self.inner(student, x, y)
        update(loss)
        return loss.detach(), logits.detach()


def kl_pgd(student: nn.Module, x: Tensor, teacher_logits: Tensor, temperature: float, eps: float,
           step_size: float, steps: int, random_start: bool = True) -> Tensor:
    """Linf PGD maximising ``KL(T^t(x) || S^t(x'))`` (the KL attack of the loss ablation, spec-000 4.9)."""
    delta = torch.empty_like(x).uniform_(-eps, eps) if random_start else torch.zeros_like(x)
    delta = clip_box(x, delta)
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():
            kl = distill_kl(student(x + delta), teacher_logits, temperature)
            (grad,) = torch.autograd.grad(kl, delta)
        delta = clip_box(x, project_linf(delta.detach() + step_size * grad.sign(), eps))
    return (x + delta).clamp(0.0, 1.0).detach()


class ARDStep:
    """Algorithm 1: attack the student (``steps`` signed steps of ``step_size``, random start), then the ARD loss.

    The attack runs with the student in train mode (batch-norm batch statistics), as in the reference recipe; set
    ``attack_eval_mode`` to attack in eval mode instead. ``steps = 0`` switches the attack off (then ARD is KD).
    """

    needs_teacher = True

    def __init__(self, eps: float, step_size: float, steps: int, temperature: float, alpha: float = 1.0,
                 attack_loss: str = "ce", random_start: bool = True, attack_eval_mode: bool = False) -> None:
        if attack_loss not in ("ce", "kl"):
            raise ValueError(f"attack_loss must be 'ce' or 'kl', got {attack_loss!r}")
        self.eps, self.step_size, self.steps = float(eps), float(step_size), int(steps)
        self.temperature, self.alpha, self.attack_loss = float(temperature), float(alpha), attack_loss
        self.random_start, self.attack_eval_mode = bool(random_start), bool(attack_eval_mode)
        self.pgd = PGD(eps, step_size, steps, norm="linf", restarts=1, random_start=random_start, select="last",
                       use_eval_mode=attack_eval_mode)

    def perturb(self, student: nn.Module, x: Tensor, y: Tensor, teacher_logits: Tensor) -> Tensor:
        """The attacked inputs x' (x itself when ``steps = 0`` and there is no random start)."""
        if self.steps == 0 and not self.random_start:
            return x
        if self.attack_loss == "ce":
            return self.pgd(student, x, y).x_adv.detach()
        with eval_mode(student, self.attack_eval_mode):
            return kl_pgd(student, x, teacher_logits, self.temperature, self.eps, self.step_size, self.steps,
                          self.random_start)

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, teacher_logits: Tensor | None,
                 update: Update) -> tuple[Tensor, Tensor]:
        x_adv = self.perturb(student, x, y, teacher_logits)
        logits_adv = student(x_adv)
        clean = student(x) if self.alpha < 1.0 else None
        loss = ard_loss(logits_adv, clean, teacher_logits, y, self.temperature, self.alpha)
        update(loss)
        return loss.detach(), logits_adv.detach()


class ReplayStep:
    """Fast-ARD (Algorithm 2) with a teacher, free adversarial training without one: ``m`` replays per batch.

    The perturbation ``delta`` starts at 0 and persists across replays (and across batches when
    ``carry=True``, Alg. 2's single initialisation; images of a new batch then start from the previous batch's
    perturbation, as in free adversarial training). Replay j:

    1. ``delta <- proj(delta + r * sign(g))``, where ``g`` is the input gradient of the attack objective
       (cross-entropy with the true label, or the KL to the teacher with ``attack_loss="kl"``) at the previous
       replay's input;
    2. one forward pass at ``x + delta``; its backward pass gives both the parameter gradient of the training loss
       (ARD loss with a teacher, cross-entropy without) and the input gradient ``g`` used by the next replay;
    3. one optimiser step.

    The first replay of a batch needs ``g`` at the batch's starting point: one extra forward/backward pass per
    batch, so a batch costs ``m + 1`` passes. With ``m = 1`` and ``carry=False`` this is exactly ARD with a
    one-step attack of size ``r`` from a zero start.
    """

    def __init__(self, eps: float, step_size: float, replays: int, temperature: float = 1.0, alpha: float = 1.0,
                 attack_loss: str = "ce", carry: bool = True, use_teacher: bool = True) -> None:
        if replays < 1:
            raise ValueError(f"replays (m) must be >= 1, got {replays}")
        if attack_loss not in ("ce", "kl"):
            raise ValueError(f"attack_loss must be 'ce' or 'kl', got {attack_loss!r}")
        if attack_loss == "kl" and not use_teacher:
            raise ValueError("attack_loss 'kl' needs a teacher; free training attacks the cross-entropy")
        self.eps, self.step_size, self.replays = float(eps), float(step_size), int(replays)
        self.temperature, self.alpha, self.attack_loss = float(temperature), float(alpha), attack_loss
        self.carry, self.needs_teacher = bool(carry), bool(use_teacher)
        self._delta: Tensor | None = None

    def reset(self) -> None:
        """Forget the carried perturbation."""
        self._delta = None

    def _start(self, x: Tensor) -> Tensor:
        d = self._delta
        if not self.carry or d is None or d.shape[1:] != x.shape[1:] or d.device != x.device:
            return torch.zeros_like(x)
        if d.shape[0] < x.shape[0]:
            d = torch.cat([d, torch.zeros_like(x[d.shape[0]:])])
        return clip_box(x, d[: x.shape[0]])

    def _objective(self, logits: Tensor, y: Tensor, teacher_logits: Tensor | None) -> Tensor:
        if self.attack_loss == "kl":
            return distill_kl(logits, teacher_logits, self.temperature)
        return F.cross_entropy(logits.float(), y, reduction="sum")

    def __call__(self, student: nn.Module, x: Tensor, y: Tensor, teacher_logits: Tensor | None,
                 update: Update) -> tuple[Tensor, Tensor]:
        delta = self._start(x)
        xin = (x + delta).requires_grad_(True)
        (g,) = torch.autograd.grad(self._objective(student(xin), y, teacher_logits), xin)
        loss = logits = None
        for _ in range(self.replays):
            delta = clip_box(x, project_linf(delta + self.step_size * g.sign(), self.eps)).detach()
            xin = (x + delta).requires_grad_(True)
            logits = student(xin)
            if self.needs_teacher:
                clean = student(x) if self.alpha < 1.0 else None
                loss = ard_loss(logits, clean, teacher_logits, y, self.temperature, self.alpha)
            else:
                loss = F.cross_entropy(logits.float(), y)
            (g,) = torch.autograd.grad(self._objective(logits, y, teacher_logits), xin, retain_graph=True)
            update(loss)
        self._delta = delta.detach()
        return loss.detach(), logits.detach()
