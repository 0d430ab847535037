"""The adjoint of the touch propagation for many coefficient rows at once (certification's hot loop).

``P^T`` maps coefficients on the resting shares ``(t, s, j)`` to coefficients on the orders: an order placed at
``(t, s, j)`` counts once at every later snapshot where it still rests, so its coefficient is the sum of the
resting coefficients at its (side, price) from t until the next execution there (a reverse segmented sum). The
bounds need it for hundreds of rows (one per neuron) of the same snippet, so the rows are the fastest axis here:
one pass over the snippet's clean-book structure serves all rows. The structure (keys, resets) is the one
:class:`lobsim.propagation.TouchPropagator` builds (its Numba backend); other backends go through the operator's
own autograd adjoint.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from numba import njit, prange


@njit(cache=True, parallel=True)
def _adjoint_rows(g, key, exec_ptr, reset_key, n_keys, out):
    """out[b, q, :] = reverse per-key running sum of g[b, :, :] over time (zeroed at the key's executions)."""
    B, N, R = g.shape
    M = N // (exec_ptr.shape[1] - 1)
    for b in prange(B):
        acc = np.zeros((n_keys[b], R), np.float64)
        for t in range(exec_ptr.shape[1] - 2, -1, -1):
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                if k >= 0:
                    for r in range(R):
                        acc[k, r] += g[b, q, r]
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                if k >= 0:
                    for r in range(R):
                        out[b, q, r] = acc[k, r]
                else:
                    for r in range(R):
                        out[b, q, r] = 0.0
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if reset_key[e] >= 0:
                    for r in range(R):
                        acc[reset_key[e], r] = 0.0


def adjoint_rows(op: Any, coef: torch.Tensor) -> torch.Tensor:
    """``P^T`` of every row: coef ``(B, N, R)`` (N = W * 2 * L, rows last) -> ``(B, N, R)`` float64."""
    B, N, R = coef.shape
    if getattr(op, "backend", None) == "numba" and coef.device.type == "cpu":
        from lobsim.propagation.exact import numba_threads_for

        g = np.ascontiguousarray(coef.detach().to(torch.float64).numpy())
        out = np.empty_like(g)
        with numba_threads_for(g.size):
            _adjoint_rows(g, op._key, op._exec_ptr, op._reset_key, op._n_keys, out)
        return torch.from_numpy(out)
    rep = op.select(np.repeat(np.arange(B), R))
    a = torch.zeros(rep.shape, dtype=coef.dtype, device=coef.device, requires_grad=True)
    rows = coef.permute(0, 2, 1).reshape(rep.shape).contiguous()
    with torch.enable_grad():
        (g,) = torch.autograd.grad(rep(a), a, grad_outputs=rows)
    return g.reshape(B, R, N).permute(0, 2, 1).contiguous()
