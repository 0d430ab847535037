"""Augmentation on the device: random crop with zero padding and horizontal flip, for a whole batch at once.

Works on uint8 or float (N, C, H, W) tensors wherever they live (CPU or GPU), so a fast training loop never waits
for a CPU data loader. Output dtype and value range equal the input's.
"""

from __future__ import annotations

import torch
from torch import Tensor


def random_crop(x: Tensor, padding: int, generator: torch.Generator | None = None) -> Tensor:
    """Pad each image by ``padding`` zeros on every side and cut a random H x W window (one offset per image)."""
    if padding <= 0:
        return x
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    dy = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), device=x.device, generator=generator)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # (n, w)
    idx_r = rows[:, None, :, None].expand(n, c, h, w + 2 * padding)
    out = padded.gather(2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, c, h, w)
    return out.gather(3, idx_c)


def random_flip(x: Tensor, p: float = 0.5, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image left-right with probability ``p``."""
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < p
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def augment(x: Tensor, padding: int = 4, flip: bool = True, generator: torch.Generator | None = None) -> Tensor:
    """Random crop (zero padding ``padding``) then, when ``flip``, a random horizontal flip."""
    x = random_crop(x, padding, generator)
    return random_flip(x, 0.5, generator) if flip else x
