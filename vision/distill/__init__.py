"""Robust distillation (spec-000 chapter 4): KD and ARD losses, ARD / Fast-ARD / AT / free / KD student training,
efficiency meters, and the A1-A5 study table.

Entry points: :func:`vision.distill.run.distill_run` (one student, a run directory) and
:func:`vision.distill.table.ard_table` (teachers + students + the table).
"""

from .efficiency import count_madds, count_parameters
from .losses import ard_loss, distill_kl, kd_loss
from .run import DistillConfig, distill_run

__all__ = ["DistillConfig", "distill_run", "ard_loss", "distill_kl", "kd_loss", "count_madds",
           "count_parameters"]
