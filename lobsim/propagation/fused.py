"""Fused touch propagation -> SWA: ``swa = SWA(S + P(a))`` (B, W) without materialising ``P(a)`` (CPU, Numba).

For a model that reads only the SWA, the attack needs the (B, W) SWA of the perturbed books and the gradient with
respect to the orders a (B, W, 2, L). Going through ``TouchPropagator`` writes the propagated (B, W, 2, L) tensor,
the perturbed sizes and several same-sized autograd buffers. Here one forward kernel walks time with the running
sum of every (side, price) key and accumulates the two SWA sums of each snapshot on the fly; one backward kernel
walks time backwards, forms dSWA/ddelta = (p - swa) / den at each entry and applies the adjoint propagation in the
same loop. Only a, the clean book (centred prices, sizes) and the key structure are read; only the gradient is
written.

It computes the same function as ``swa_torch(P, S + op(a), M)`` (sums in float64 here, so the float32 outputs
agree to rounding; the tests compare both on random books and orders).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numba import njit, prange

from lobsim.propagation.exact import numba_threads_for
from lobsim.propagation.touch import TouchPropagator, raise_if_negative


@njit(cache=True, parallel=True)
def _fused_forward(x, key, exec_ptr, reset_key, n_keys, price, size, swa, den, bad):
    """swa[b, t] = sum p (s + d) / sum (s + d) over the real entries of step t, d the propagated orders."""
    B, N = x.shape
    W = exec_ptr.shape[1] - 1
    M = N // W
    for b in prange(B):
        bad[b] = -1
        acc = np.zeros(n_keys[b], np.float64)
        for t in range(W):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if reset_key[e] >= 0:
                    acc[reset_key[e]] = 0.0
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                if k >= 0:
                    v = x[b, q]
                    if v < 0 and bad[b] < 0:
                        bad[b] = q
                    acc[k] += v
            num = 0.0
            d = 0.0
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                if k >= 0:
                    s = size[b, q] + acc[k]
                    num += price[b, q] * s
                    d += s
            swa[b, t] = num / d
            den[b, t] = d


@njit(cache=True, parallel=True)
def _fused_backward(gs, swa, den, key, exec_ptr, reset_key, n_keys, price, out):
    """out = P^T (dL/ddelta) with dL/ddelta[b, t, q] = gs[b, t] (p_q - swa[b, t]) / den[b, t]."""
    B, N = out.shape
    W = exec_ptr.shape[1] - 1
    M = N // W
    for b in prange(B):
        acc = np.zeros(n_keys[b], np.float64)
        for t in range(W - 1, -1, -1):
            c = gs[b, t] / den[b, t]
            m = swa[b, t]
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                if k >= 0:
                    acc[k] += c * (price[b, q] - m)
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                out[b, q] = acc[k] if k >= 0 else 0.0
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if reset_key[e] >= 0:
                    acc[reset_key[e]] = 0.0


class _Fused(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, f: FusedTouchSwa) -> torch.Tensor:
        op = f.op
        xf = x.detach().reshape(x.shape[0], -1)
        if xf.dtype != torch.float32 or not xf.is_contiguous():
            xf = xf.to(torch.float32).contiguous()
        B = xf.shape[0]
        W = op.shape[1]
        swa = np.empty((B, W), np.float64)
        den = np.empty((B, W), np.float64)
        bad = np.empty(B, np.int64)
        with numba_threads_for(xf.numel()):
            _fused_forward(xf.numpy(), op._key, op._exec_ptr, op._reset_key, op._n_keys, f._price, f._size, swa, den,
                           bad)  # fmt: skip
        raise_if_negative(bad, xf, op.shape)
        ctx.f, ctx.swa, ctx.den, ctx.shape = f, swa, den, x.shape
        return torch.from_numpy(swa).to(x.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        f = ctx.f
        op = f.op
        gs = np.ascontiguousarray(g.detach().numpy(), dtype=np.float64)
        out = torch.empty((gs.shape[0], op.shape[1] * 2 * op.shape[3]), dtype=torch.float32)
        with numba_threads_for(out.numel()):
            _fused_backward(gs, ctx.swa, ctx.den, op._key, op._exec_ptr, op._reset_key, op._n_keys, f._price,
                            out.numpy())  # fmt: skip
        return out.view(ctx.shape).to(g.dtype), None


class FusedTouchSwa:
    """``f(a) -> SWA(S + P(a))`` (B, W) for the books of ``op`` (Numba backend, CPU), differentiable in a.

    prices: (B, W, 2, L) float prices of the books (any shift per snippet, e.g. centred dollars), 0 at masked
    levels; sizes: (B, W, 2, L) clean sizes, 0 at masked levels. Both are stored once as float32 (B, W*2*L).
    """

    def __init__(self, op: TouchPropagator, prices: torch.Tensor, sizes: torch.Tensor) -> None:
        if op.backend != "numba":
            raise ValueError("FusedTouchSwa needs the numba backend of TouchPropagator (CPU)")
        if tuple(prices.shape) != op.shape or tuple(sizes.shape) != op.shape:
            raise ValueError(f"prices {tuple(prices.shape)} and sizes {tuple(sizes.shape)} must be {op.shape}")
        B = op.shape[0]
        self.op = op
        self._price = np.ascontiguousarray(prices.detach().cpu().reshape(B, -1).numpy(), dtype=np.float32)
        self._size = np.ascontiguousarray(sizes.detach().cpu().reshape(B, -1).numpy(), dtype=np.float32)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.op.shape

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """SWA (B, W) of the books plus the propagated orders ``a`` >= 0 (B, W, 2, L), float32 on the CPU."""
        if tuple(a.shape) != self.op.shape:
            raise ValueError(f"orders have shape {tuple(a.shape)}, expected {self.op.shape}")
        if a.device.type != "cpu":
            raise ValueError(f"orders are on {a.device}; the fused kernel runs on the CPU")
        if not a.is_floating_point():
            a = a.to(torch.float32)
        return _Fused.apply(a, self)

    def select(self, index: np.ndarray | Sequence[int]) -> FusedTouchSwa:
        """The fused map for the snippets ``index`` (integer indices or a boolean mask)."""
        index = np.asarray(index)
        index = np.flatnonzero(index) if index.dtype == np.bool_ else index.astype(np.int64)
        new = object.__new__(FusedTouchSwa)
        new.op = self.op.select(index)
        new._price = np.ascontiguousarray(self._price[index])
        new._size = np.ascontiguousarray(self._size[index])
        return new
