"""Knowledge-distillation losses: KD (Hinton) and ARD (adversarially robust distillation, spec-000 Def. 4.1).

``kd_loss`` is ``alpha * t^2 * KL(T^t(x) || S^t(x_s)) + (1 - alpha) * CE(S(x), y)``: the student's logits at its
input ``x_s`` and the teacher's at the clean ``x`` are divided by the temperature ``t`` before the softmax, and the
``t^2`` factor keeps the gradient scale independent of ``t``. ARD is the same loss with ``x_s`` an adversarial
example of the student, so ``ard_loss`` is ``kd_loss`` evaluated at the attacked student's logits. The KL term is
the batch mean of the per-example divergence (``reduction="batchmean"``), i.e. the KL of the thesis' formula; the
public ARD code averages over batch x classes, which divides this term by the number of classes.

The divergence runs from the teacher's distribution to the student's, ``sum_k p_T log(p_T / p_S)`` (what
``torch.nn.KLDivLoss(log p_S, p_T)`` computes); the thesis writes ``KL(S^t, T^t)`` for the same quantity.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["distill_kl", "kd_loss", "ard_loss"]


def distill_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Batch-mean ``KL(softmax(T / t) || softmax(S / t))`` (not yet multiplied by ``t^2``)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape (same classes needed)")
    log_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, alpha: float = 1.0,
            y: Tensor | None = None, student_clean_logits: Tensor | None = None) -> Tensor:
    """``alpha t^2 KL(T^t || S^t) + (1 - alpha) CE(S(x), y)`` (spec-000 Eq. 4.2).

    ``student_logits`` are the student's logits at the input it is trained on (clean for KD, adversarial for
    ARD); ``student_clean_logits`` (default: the same logits) feed the label term, which needs ``y`` when
    ``alpha < 1``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    loss = alpha * temperature ** 2 * distill_kl(student_logits, teacher_logits, temperature)
    if alpha < 1.0:
        if y is None:
            raise ValueError("kd_loss with alpha < 1 needs the labels y for the cross-entropy term")
        clean = student_logits if student_clean_logits is None else student_clean_logits
        loss = loss + (1.0 - alpha) * F.cross_entropy(clean.float(), y)
    return loss


def ard_loss(student_adv_logits: Tensor, student_clean_logits: Tensor | None, teacher_clean_logits: Tensor,
             y: Tensor, temperature: float, alpha: float = 1.0) -> Tensor:
    """ARD (Def. 4.1): ``alpha t^2 KL(T^t(x) || S^t(x')) + (1 - alpha) CE(S(x), y)``, teacher on clean x.

    With the attack switched off (``x' = x``) this is exactly :func:`kd_loss` on clean inputs.
    """
    return kd_loss(student_adv_logits, teacher_clean_logits, temperature, alpha, y, student_clean_logits)
