"""Efficiency meters of the distillation study: parameters, multiply-adds per forward pass, wall-clock.

Multiply-adds (MAdds) count the multiplications of convolutions and fully connected layers for one image, the
convention of the MobileNetV2 paper: a convolution producing ``C_out x H_out x W_out`` values with ``C_in / groups``
input channels and a ``k_h x k_w`` kernel costs ``C_out H_out W_out (C_in / groups) k_h k_w``; a linear layer costs
``in x out``. Batch norm, activations, pooling and additions are not counted.
"""

from __future__ import annotations

import time

import torch
from torch import nn

__all__ = ["count_parameters", "count_madds", "Stopwatch"]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_madds(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-adds of one forward pass on one image of shape (C, H, W), from hooks on Conv2d and Linear."""
    total = 0

    def conv_hook(mod: nn.Conv2d, inp, out) -> None:
        nonlocal total
        kh, kw = mod.kernel_size
        total += int(out[0].numel()) * (mod.in_channels // mod.groups) * kh * kw

    def linear_hook(mod: nn.Linear, inp, out) -> None:
        nonlocal total
        total += int(out[0].numel()) * mod.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        device = p.device if p is not None else "cpu"
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return total


class Stopwatch:
    """Accumulated wall-clock seconds of the timed blocks (``with watch: ...``); synchronises CUDA."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.seconds += time.perf_counter() - self._t0
