"""Image attacks: callable objects ``atk(model, x, y) -> AttackResult``.

FGSM (optionally from a random start), PGD for the Linf, L2 and L1 balls (sparse L1 step, exact L1 projection),
MSD over the union of the three balls, and APGD-CE (Linf and L2). Inputs are images in [0, 1].
"""

from .apgd import APGD
from .base import Attack, AttackResult
from .fgsm import FGSM
from .msd import MSD
from .pgd import PGD

__all__ = ["Attack", "AttackResult", "APGD", "FGSM", "MSD", "PGD"]
