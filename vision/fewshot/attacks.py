"""Attacking query images of episodes: the wrapper that turns a fitted few-shot head into an ordinary classifier
of query images, so the attacks of :mod:`vision.attacks` (PGD, MI-FGSM) apply unchanged. ``MIFGSM`` is
re-exported from :mod:`vision.attacks.mifgsm`.
"""

from __future__ import annotations

from torch import Tensor, nn

from vision.attacks.mifgsm import MIFGSM

from .heads import Fitted

__all__ = ["MIFGSM", "EpisodeClassifier"]


class EpisodeClassifier(nn.Module):
    """Query images (B * q, C, H, W) -> logits (B * q, way) of B fitted episodes (q queries each).

    The wrapped ``backbone`` embeds the queries; ``fitted`` (normally detached) classifies them. The module's
    train/eval mode is the backbone's, so the attacks' eval-mode switch applies to it.
    """

    def __init__(self, backbone: nn.Module, fitted: Fitted, tasks: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.fitted = fitted
        self.tasks = int(tasks)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] % self.tasks:
            raise ValueError(f"{x.shape[0]} query images do not split into {self.tasks} episodes")
        emb = self.backbone(x).view(self.tasks, x.shape[0] // self.tasks, -1)
        logits = self.fitted(emb)
        return logits.reshape(x.shape[0], -1)
