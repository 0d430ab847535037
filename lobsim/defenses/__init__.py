"""Defending valuation models against manipulation: adversarial training, certified capital, detection.

- :mod:`lobsim.defenses.adversarial_training`: ``DefenseConfig`` (fast / pgd / universal / certified, budget in
  dollars), the training hook of ``lobsim.train.train`` (``train_defended``) and ``robust_finetune`` for any torch
  model of the attack protocol (users' models wrapped by ``lobsim.stress``);
- :mod:`lobsim.defenses.order_attack`: the fast training-time attack in order space;
- :mod:`lobsim.defenses.certify` (with :mod:`lobsim.defenses.fractional`): certified lower bounds on the capital
  needed to change a Linear / MLP model's prediction (interval and linear-relaxation bounds);
- :mod:`lobsim.defenses.detection`: a resting-size anomaly detector (false-positive rate on unseen clean books,
  detection rate on the attacks' orders);
- :mod:`lobsim.defenses.experiment`: the model x defense table of one market (``advsim lob defend``).

See docs/defenses.md.
"""

from __future__ import annotations

from lobsim.defenses.adversarial_training import (
    DEFENSES,
    DefenseConfig,
    DefenseHook,
    make_hook,
    robust_finetune,
    train_defended,
)
from lobsim.defenses.certify import Certificate, CertifyConfig, certify, margin_bounds

__all__ = [
    "DEFENSES",
    "Certificate",
    "CertifyConfig",
    "DefenseConfig",
    "DefenseHook",
    "certify",
    "make_hook",
    "margin_bounds",
    "robust_finetune",
    "train_defended",
]
