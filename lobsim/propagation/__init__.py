"""Public entry for order propagation: the exact integer engine, the differentiable operator, universal orders.

See :mod:`lobsim.propagation.exact` for the semantics (fill models, order of events inside a step),
:mod:`lobsim.propagation.touch` for the differentiable touch-model operator and :mod:`lobsim.propagation.fused`
for the fused propagation -> SWA kernels that attacks on SWA-only models use.
"""

from __future__ import annotations

import numpy as np
import torch

from lobsim.grid import level_mask
from lobsim.propagation.exact import (
    FILL_MODELS,
    Fills,
    Propagation,
    check_orders,
    check_prices,
    propagate,
    propagate_reference,
)
from lobsim.propagation.fused import FusedTouchSwa
from lobsim.propagation.touch import TouchPropagator
from lobsim.snippets import SnippetBatch

__all__ = [
    "FILL_MODELS",
    "Fills",
    "FusedTouchSwa",
    "Propagation",
    "TouchPropagator",
    "check_orders",
    "check_prices",
    "propagate",
    "propagate_reference",
    "universal_orders",
]


def universal_orders(pattern: np.ndarray | torch.Tensor, batch: SnippetBatch) -> np.ndarray | torch.Tensor:
    """Map a level-relative pattern (W', 2, L) onto every snippet of ``batch`` -> orders (B, W, 2, L).

    ``pattern[t, s, j]`` = shares placed t steps after the snippet start on side s at the j-th best price of that
    step (whatever its absolute price). Masked (empty) levels get zero; a pattern shorter than the window is
    zero after its end. A numpy integer pattern gives int64 numpy orders; a torch pattern gives a torch tensor
    on the pattern's device that is differentiable in the pattern.
    """
    B, W, _, L = batch.prices.shape
    if pattern.ndim != 3 or pattern.shape[1] != 2 or pattern.shape[2] != L or pattern.shape[0] > W:
        raise ValueError(f"pattern must be (W' <= {W}, 2, {L}), got {tuple(pattern.shape)}")
    Wp = pattern.shape[0]
    mask = level_mask(batch.prices[:, :Wp])
    if isinstance(pattern, torch.Tensor):
        m = torch.as_tensor(mask, device=pattern.device, dtype=pattern.dtype)
        out = pattern.unsqueeze(0) * m
        if Wp < W:
            pad = torch.zeros((B, W - Wp, 2, L), dtype=pattern.dtype, device=pattern.device)
            out = torch.cat([out, pad], dim=1)
        return out
    pattern = np.asarray(pattern)
    if not np.issubdtype(pattern.dtype, np.integer):
        raise ValueError(f"a numpy pattern must hold integer shares, got dtype {pattern.dtype}")
    if (pattern < 0).any():
        raise ValueError("a pattern must be non-negative")
    out = np.zeros(batch.prices.shape, np.int64)
    out[:, :Wp] = np.where(mask, pattern[None].astype(np.int64), 0)
    return out
