"""Image attacks: callable objects ``atk(model, x, y) -> AttackResult``.

FGSM (optionally from a random start), PGD for the Linf, L2 and L1 balls (sparse L1 step, exact L1 projection),
MSD over the union of the three balls, APGD (CE or DLR loss; Linf, L2 and the sparsity-adaptive L1 version),
APGD-T (targeted DLR over the most likely wrong classes), and the gradient-free Square attack (Linf, L2).
:mod:`vision.attacks.suite` combines them into an AutoAttack-style evaluation. Inputs are images in [0, 1].
"""

from .apgd import APGD, APGDT
from .base import Attack, AttackResult
from .fgsm import FGSM
from .mifgsm import MIFGSM
from .msd import MSD
from .pgd import PGD
from .square import Square

__all__ = ["Attack", "AttackResult", "APGD", "APGDT", "FGSM", "MIFGSM", "MSD", "PGD", "Square"]
