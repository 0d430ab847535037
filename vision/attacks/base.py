"""Shared pieces of every image attack: the result type, the callable base class and small helpers.

An attack is a callable object ``atk(model, x, y) -> AttackResult``. Inputs ``x`` are float images in [0, 1]
with the batch axis first (the model normalises inside). ``y`` holds the true labels, or the target classes when
the attack was built with ``targeted=True``. The model is put in eval mode for the attack and every module's mode
is restored afterwards; gradients are taken with ``torch.autograd.grad`` with respect to the perturbation only, so
nothing is accumulated into the model's ``.grad`` fields.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttackResult",
    "Attack",
    "eval_mode",
    "objective",
    "is_success",
    "better",
    "norm_of",
    "best_over_restarts",
]


@dataclass
class AttackResult:
    """Adversarial inputs and, per example, whether the attack succeeded.

    ``x_adv`` has the shape and dtype of the input and lies in the threat model's ball around it and in [0, 1].
    ``success`` is a bool tensor (B,): misclassified (untargeted) or classified as the target (targeted).
    ``loss`` is the attack objective at ``x_adv`` per example (cross-entropy; its negative when targeted),
    or None when an attack does not report it.
    """

    x_adv: Tensor
    success: Tensor
    loss: Tensor | None = None

    @property
    def success_rate(self) -> float:
        """The fraction of examples on which the attack succeeded."""
        return float(self.success.float().mean()) if self.success.numel() else 0.0


@contextmanager
def eval_mode(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore each submodule's own mode afterwards."""
    if not enabled:
        yield model
        return
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, was_training in modes:
            m.training = was_training


def objective(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Per-example quantity the attack maximises: CE of the true label, or minus CE of the target."""
    ce = F.cross_entropy(logits.float(), y, reduction="none")
    return -ce if targeted else ce


def is_success(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    """Per-example success: prediction differs from ``y`` (untargeted) or equals it (targeted)."""
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


def better(succ_new: Tensor, obj_new: Tensor, succ_old: Tensor, obj_old: Tensor) -> Tensor:
    """Where the new candidate beats the old one: success first, then a strictly higher objective."""
    return (succ_new & ~succ_old) | ((succ_new == succ_old) & (obj_new > obj_old))


def best_over_restarts(
    x: Tensor, restarts: int, run: Callable[[Tensor, int], tuple[Tensor, Tensor, Tensor]]
) -> AttackResult:
    """Call ``run(index, restart) -> (x_adv, objective, success)`` on the examples ``index`` and keep the best.

    Restart 0 attacks every example; each later restart attacks only the examples not broken yet. Per example the
    kept candidate is the first success or, while none succeeded, the highest objective, so adding restarts never
    lowers the success rate.
    """
    b = x.shape[0]
    best_x = x.clone()
    best_obj = torch.full((b,), -torch.inf, device=x.device)
    best_succ = torch.zeros(b, dtype=torch.bool, device=x.device)
    for r in range(restarts):
        todo = torch.arange(b, device=x.device) if r == 0 else (~best_succ).nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        x_adv, obj, succ = run(todo, r)
        upd = better(succ, obj, best_succ[todo], best_obj[todo])
        sel = todo[upd]
        best_x[sel] = x_adv[upd].detach().to(x.dtype)
        best_obj[sel] = obj[upd].detach().float()
        best_succ[sel] = succ[upd]
    return AttackResult(best_x.detach(), best_succ, best_obj)


def norm_of(delta: Tensor, norm: str) -> Tensor:
    """Per-example norm (``linf``, ``l2`` or ``l1``) of a batched perturbation, shape (B,)."""
    flat = delta.reshape(delta.shape[0], -1)
    if norm == "linf":
        return flat.abs().amax(dim=1)
    if norm == "l2":
        return flat.norm(p=2, dim=1)
    if norm == "l1":
        return flat.abs().sum(dim=1)
    raise ValueError(f"unknown norm {norm!r}; expected 'linf', 'l2' or 'l1'")


class Attack:
    """Base class: validates the inputs, switches the model to eval mode and calls :meth:`attack`.

    Subclasses implement ``attack(model, x, y) -> AttackResult`` on validated inputs.
    ``targeted``: when True, ``y`` is the target class and success means hitting it.
    ``use_eval_mode``: set False to attack the model in whatever mode it is in (e.g. batch-norm in train mode
    during adversarial training).
    """

    norm: str = "linf"

    def __init__(self, targeted: bool = False, use_eval_mode: bool = True) -> None:
        self.targeted = bool(targeted)
        self.use_eval_mode = bool(use_eval_mode)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        x, y = self._check_inputs(x, y)
        with eval_mode(model, self.use_eval_mode), torch.enable_grad():
            return self.attack(model, x, y)

    def attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"

    @staticmethod
    def _check_inputs(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not torch.is_floating_point(x):
            raise TypeError(f"x must be a float tensor of images in [0, 1], got {getattr(x, 'dtype', type(x))}")
        if x.dim() < 2:
            raise ValueError(f"x must have a batch axis first, got shape {tuple(x.shape)}")
        if not isinstance(y, Tensor) or y.dim() != 1 or y.shape[0] != x.shape[0]:
            raise ValueError(f"y must be a 1-D label tensor of length {x.shape[0]}, got {getattr(y, 'shape', y)}")
        if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"y must hold integer class indices, got {y.dtype}")
        if x.numel():
            lo, hi = float(x.min()), float(x.max())
            if lo < -1e-6 or hi > 1 + 1e-6:
                raise ValueError(f"x must lie in [0, 1] (the model normalises inside); got values in [{lo}, {hi}]")
        return x.detach(), y.to(device=x.device, dtype=torch.int64)
