"""The differentiable touch-model propagation operator: delta = P(a), linear in the orders a.

Per snippet, every real level entry (t, s, j) belongs to a key (s, prices[t, s, j]). Sorting the entries by
(key, t) turns propagation into a segmented cumulative sum: a segment is one key between two executions at it
(an execution in steps (t_prev, t] starts a new segment at t, since fills come before the orders of step t).
The sort order (``perm``) and segment starts depend only on the clean book, so they are built once per batch.
Forward = segmented cumsum in sorted order; backward = the reverse segmented cumsum (the adjoint).

Backends: ``"numba"`` (CPU, Numba kernels inside a ``torch.autograd.Function``) and ``"torch"`` (pure torch
gather / cumsum / scatter; runs on any device, the readable reference). ``"auto"`` picks Numba on the CPU and
torch elsewhere. Orders at masked (empty) levels are ignored (zeroed); their delta is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numba import njit, prange

from lobsim.grid import level_mask
from lobsim.propagation_exact import _lookup, _side_keys, check_executions, numba_threads_for
from lobsim.snippets import SnippetBatch


@njit(cache=True, parallel=True)
def _touch_structure(prices, exec_ptr, exec_side, exec_price, exec_hidden, include_hidden, perm, start, n_real,
                     dup):  # fmt: skip
    """Fill perm (B, N) int32, start (B, N) bool, n_real (B,), dup (B, 3) (-1 or the first duplicate (t, s, j))."""
    B, W, _, L = prices.shape
    N = W * 2 * L
    for b in prange(B):
        p = prices[b]
        keys0 = _side_keys(p, 0)
        keys1 = _side_keys(p, 1)
        k0 = keys0.shape[0]
        K = k0 + keys1.shape[0]
        epoch = np.zeros(K, np.int64)
        count = np.zeros(K + 1, np.int64)
        ekey = np.empty(N, np.int64)
        eepoch = np.empty(N, np.int64)
        epos = np.empty(N, np.int64)
        cur_price = np.full((2, L), -1, np.int64)
        cur_key = np.full((2, L), -1, np.int64)
        n = 0
        for t in range(W):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if exec_hidden[e] and not include_hidden:
                    continue
                if exec_side[e] == 0:
                    k = _lookup(keys0, exec_price[e])
                else:
                    k = _lookup(keys1, exec_price[e])
                    if k >= 0:
                        k += k0
                if k >= 0:
                    epoch[k] += 1
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        continue
                    if v != cur_price[s, j]:
                        cur_price[s, j] = v
                        cur_key[s, j] = _lookup(keys0, v) if s == 0 else _lookup(keys1, v) + k0
                    k = cur_key[s, j]
                    ekey[n] = k
                    eepoch[n] = epoch[k]
                    epos[n] = (t * 2 + s) * L + j
                    count[k + 1] += 1
                    n += 1
        for k in range(K):
            count[k + 1] += count[k]
        skey = np.empty(n, np.int64)
        sepoch = np.empty(n, np.int64)
        for i in range(n):  # stable counting sort by key: entries stay in time order within a key
            k = ekey[i]
            d = count[k]
            count[k] += 1
            perm[b, d] = epos[i]
            skey[d] = k
            sepoch[d] = eepoch[i]
        dup[b, 0] = -1
        for d in range(n):
            if d == 0 or skey[d] != skey[d - 1] or sepoch[d] != sepoch[d - 1]:
                start[b, d] = True
            else:
                start[b, d] = False
                if perm[b, d] // (2 * L) == perm[b, d - 1] // (2 * L) and dup[b, 0] < 0:
                    q = perm[b, d]
                    dup[b, 0] = q // (2 * L)
                    dup[b, 1] = (q // L) % 2
                    dup[b, 2] = q % L
        n_real[b] = n
        d = n
        for t in range(W):  # masked entries go last, each its own segment (value 0)
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        perm[b, d] = (t * 2 + s) * L + j
                        start[b, d] = True
                        d += 1


@njit(cache=True, parallel=True)
def _seg_cumsum(x, perm, start, n_real, out):
    """out[perm[i]] = sum of x[perm[k]] from the segment start to i (real entries only; out pre-zeroed)."""
    for b in prange(x.shape[0]):
        acc = 0.0
        for i in range(n_real[b]):
            q = perm[b, i]
            if start[b, i]:
                acc = 0.0
            acc += x[b, q]
            out[b, q] = acc


@njit(cache=True, parallel=True)
def _seg_cumsum_rev(g, perm, start, n_real, out):
    """The adjoint of :func:`_seg_cumsum`: out[perm[i]] = sum of g[perm[k]] from i to the segment end."""
    for b in prange(g.shape[0]):
        acc = 0.0
        for i in range(n_real[b] - 1, -1, -1):
            q = perm[b, i]
            acc += g[b, q]
            out[b, q] = acc
            if start[b, i]:
                acc = 0.0


class _NumbaTouch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op: TouchPropagator) -> torch.Tensor:
        ctx.op = op
        xf = x.detach().reshape(x.shape[0], -1).contiguous()
        out = torch.zeros_like(xf)
        with numba_threads_for(xf.numel()):
            _seg_cumsum(xf.numpy(), op._perm, op._start, op._n_real, out.numpy())
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        op = ctx.op
        gf = g.detach().reshape(g.shape[0], -1).contiguous()
        out = torch.zeros_like(gf)
        with numba_threads_for(gf.numel()):
            _seg_cumsum_rev(gf.numpy(), op._perm, op._start, op._n_real, out.numpy())
        return out.view(g.shape), None


class _TorchTouch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op: TouchPropagator) -> torch.Tensor:
        ctx.op = op
        xf = x.detach().reshape(x.shape[0], -1) * op._mask_flat.to(x.dtype)
        xs = xf.gather(1, op._perm_t).to(op.accumulate_dtype)
        c = xs.cumsum(1)
        ys = c - (c - xs).gather(1, op._first_t)
        return torch.empty_like(xf).scatter_(1, op._perm_t, ys.to(x.dtype)).view(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        op = ctx.op
        gs = g.reshape(g.shape[0], -1).gather(1, op._perm_t).to(op.accumulate_dtype)
        c = gs.cumsum(1)
        r = c.gather(1, op._last_t) - c + gs
        out = torch.empty(gs.shape, dtype=g.dtype, device=g.device).scatter_(1, op._perm_t, r.to(g.dtype))
        return (out * op._mask_flat.to(g.dtype)).view(g.shape), None


class TouchPropagator:
    """Differentiable touch-model propagation for one SnippetBatch: ``op(a) -> delta``, both (B, W, 2, L).

    Built once per batch (the clean-book structure); ``op(a)`` is linear in ``a`` and equals
    :func:`lobsim.propagation.propagate` (``fill_model="touch"``) on integer orders.
    Real prices within one side of one snapshot must be distinct (a ValueError names the first duplicate).
    """

    def __init__(
        self,
        batch: SnippetBatch,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        include_hidden: bool = True,
        backend: str = "auto",
    ) -> None:
        self.device = torch.device(device)
        if backend == "auto":
            backend = "numba" if self.device.type == "cpu" else "torch"
        if backend not in ("numba", "torch"):
            raise ValueError(f"backend must be 'auto', 'numba' or 'torch', got {backend!r}")
        if backend == "numba" and self.device.type != "cpu":
            raise ValueError("the numba backend runs on the CPU only; use backend='torch' on other devices")
        check_executions(batch)
        self.batch = batch
        self.backend = backend
        self.dtype = dtype
        self.include_hidden = include_hidden
        self.accumulate_dtype = torch.float64
        B, W, _, L = batch.prices.shape
        N = W * 2 * L
        perm = np.empty((B, N), np.int32)
        start = np.empty((B, N), np.bool_)
        n_real = np.empty(B, np.int64)
        dup = np.full((B, 3), -1, np.int64)
        with numba_threads_for(B * N):
            _touch_structure(np.ascontiguousarray(batch.prices, dtype=np.int64), np.ascontiguousarray(batch.exec_ptr),
                         np.ascontiguousarray(batch.exec_side, dtype=np.int8),
                         np.ascontiguousarray(batch.exec_price, dtype=np.int64),
                         np.ascontiguousarray(batch.exec_hidden, dtype=np.bool_), bool(include_hidden), perm, start,
                         n_real, dup)  # fmt: skip
        bad = np.flatnonzero(dup[:, 0] >= 0)
        if len(bad):
            b = int(bad[0])
            t, s, j = (int(v) for v in dup[b])
            raise ValueError(f"duplicate price {batch.prices[b, t, s, j]} on side {s} at snippet {b}, step {t} "
                             f"(level {j}): prices within a side must be distinct")  # fmt: skip
        self._perm, self._start, self._n_real = perm, start, n_real
        self.mask = torch.as_tensor(level_mask(batch.prices), device=self.device)
        self._mask_flat = self.mask.reshape(B, N).to(dtype)
        if backend == "torch":
            self._build_torch_index()

    def _build_torch_index(self) -> None:
        B, N = self._perm.shape
        self._perm_t = torch.as_tensor(self._perm, device=self.device).long()
        start = torch.as_tensor(self._start, device=self.device)
        idx = torch.arange(N, device=self.device).expand(B, N)
        self._first_t = torch.where(start, idx, torch.zeros_like(idx)).cummax(1).values
        end = torch.ones_like(start)
        end[:, :-1] = start[:, 1:]
        rev = torch.where(end, idx, torch.full_like(idx, N)).flip(1).cummin(1).values.flip(1)
        self._last_t = rev

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.batch.prices.shape)  # type: ignore[return-value]

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """Propagate float orders a (B, W, 2, L) on this operator's device; differentiable in a."""
        if tuple(a.shape) != self.shape:
            raise ValueError(f"orders have shape {tuple(a.shape)}, expected {self.shape}")
        if not a.is_floating_point():
            a = a.to(self.dtype)
        if a.device != self.device:
            raise ValueError(f"orders are on {a.device}, the operator on {self.device}")
        fn = _NumbaTouch if self.backend == "numba" else _TorchTouch
        return fn.apply(a, self)

    def select(self, index: np.ndarray | Sequence[int]) -> TouchPropagator:
        """The operator for the snippets ``index`` (no recomputation of the structure)."""
        index = np.asarray(index, dtype=np.int64)
        new = object.__new__(TouchPropagator)
        new.__dict__.update(self.__dict__)
        new.batch = self.batch.select(index)
        new._perm = np.ascontiguousarray(self._perm[index])
        new._start = np.ascontiguousarray(self._start[index])
        new._n_real = np.ascontiguousarray(self._n_real[index])
        ti = torch.as_tensor(index, device=self.device)
        new.mask = self.mask[ti]
        new._mask_flat = self._mask_flat[ti]
        if self.backend == "torch":
            new._perm_t, new._first_t, new._last_t = self._perm_t[ti], self._first_t[ti], self._last_t[ti]
        return new
