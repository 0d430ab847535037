"""The differentiable touch-model propagation operator: delta = P(a), linear in the orders a.

Per snippet, every real level entry (t, s, j) belongs to a key (s, prices[t, s, j]). Sorting the entries by
(key, t) turns propagation into a segmented cumulative sum: a segment is one key between two executions at it
(an execution in steps (t_prev, t] starts a new segment at t, since fills come before the orders of step t).
The sort order (``perm``) and segment starts depend only on the clean book, so they are built once per batch.
Forward = segmented cumsum in sorted order; backward = the reverse segmented cumsum (the adjoint).

Backends: ``"numba"`` (CPU, Numba kernels inside a ``torch.autograd.Function``; they walk time in order with one
running sum per key, zeroed at the key's executions, which reads memory sequentially) and ``"torch"`` (the sorted
segmented cumsum as pure torch gather / cumsum / scatter; runs on any device, the readable reference).
``"auto"`` picks Numba on the CPU and torch elsewhere. Orders at masked (empty) levels are ignored (zeroed);
their delta is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from numba import njit, prange

from lobsim.grid import level_mask
from lobsim.propagation.exact import _side_key, _side_keys, check_executions, numba_threads_for
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
                k = _side_key(keys0, keys1, exec_side[e], exec_price[e])
                if k >= 0:
                    epoch[k] += 1
            for s in range(2):
                for j in range(L):
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        continue
                    if v != cur_price[s, j]:
                        cur_price[s, j] = v
                        cur_key[s, j] = _side_key(keys0, keys1, s, v)
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
def _touch_keys(prices, exec_ptr, exec_side, exec_price, exec_hidden, include_hidden, key, reset_key, n_keys, dup):
    """Time-major structure: key (B, W*2*L) int32 (-1 masked), reset_key (E,) int32 (the key an execution resets,
    -1 when none), n_keys (B,), dup (B, 3) as in :func:`_touch_structure`."""
    B, W, _, L = prices.shape
    for b in prange(B):
        p = prices[b]
        keys0 = _side_keys(p, 0)
        keys1 = _side_keys(p, 1)
        k0 = keys0.shape[0]
        K = k0 + keys1.shape[0]
        n_keys[b] = K
        last_t = np.full(K, -1, np.int64)
        cur_price = np.full((2, L), -1, np.int64)
        cur_key = np.full((2, L), -1, np.int64)
        dup[b, 0] = -1
        for t in range(W):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                k = -1
                if include_hidden or not exec_hidden[e]:
                    k = _side_key(keys0, keys1, exec_side[e], exec_price[e])
                reset_key[e] = k
            for s in range(2):
                for j in range(L):
                    q = (t * 2 + s) * L + j
                    v = p[t, s, j]
                    if v == 9999999999 or v == -9999999999:
                        key[b, q] = -1
                        continue
                    if v != cur_price[s, j]:
                        cur_price[s, j] = v
                        cur_key[s, j] = _side_key(keys0, keys1, s, v)
                    k = cur_key[s, j]
                    key[b, q] = k
                    if last_t[k] == t and dup[b, 0] < 0:
                        dup[b, 0] = t
                        dup[b, 1] = s
                        dup[b, 2] = j
                    last_t[k] = t


@njit(cache=True, parallel=True)
def _touch_forward(x, key, exec_ptr, reset_key, n_keys, out, bad):
    """out[t] = per-key running sum of x over time, zeroed at the key's executions (before step t's orders).

    ``bad[b]`` = flat index of snippet b's first negative order at a real level, else -1."""
    B, N = x.shape
    M = N // (exec_ptr.shape[1] - 1)
    for b in prange(B):
        bad[b] = -1
        acc = np.zeros(n_keys[b], np.float64)
        for t in range(exec_ptr.shape[1] - 1):
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if reset_key[e] >= 0:
                    acc[reset_key[e]] = 0.0
            for q in range(t * M, (t + 1) * M):
                if key[b, q] >= 0:
                    v = x[b, q]
                    if v < 0 and bad[b] < 0:
                        bad[b] = q
                    acc[key[b, q]] += v
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                out[b, q] = acc[k] if k >= 0 else 0.0


@njit(cache=True, parallel=True)
def _touch_backward(g, key, exec_ptr, reset_key, n_keys, out):
    """The adjoint of :func:`_touch_forward`: the same sums backwards in time."""
    B, N = g.shape
    M = N // (exec_ptr.shape[1] - 1)
    for b in prange(B):
        acc = np.zeros(n_keys[b], np.float64)
        for t in range(exec_ptr.shape[1] - 2, -1, -1):
            for q in range(t * M, (t + 1) * M):
                if key[b, q] >= 0:
                    acc[key[b, q]] += g[b, q]
            for q in range(t * M, (t + 1) * M):
                k = key[b, q]
                out[b, q] = acc[k] if k >= 0 else 0.0
            for e in range(exec_ptr[b, t], exec_ptr[b, t + 1]):
                if reset_key[e] >= 0:
                    acc[reset_key[e]] = 0.0


class _NumbaTouch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op: TouchPropagator) -> torch.Tensor:
        ctx.op = op
        xf = x.detach().reshape(x.shape[0], -1).contiguous()
        out = torch.empty_like(xf)
        bad = np.empty(xf.shape[0], np.int64)
        with numba_threads_for(xf.numel()):
            _touch_forward(xf.numpy(), op._key, op._exec_ptr, op._reset_key, op._n_keys, out.numpy(), bad)
        raise_if_negative(bad, xf, op.shape)
        return out.view(x.shape)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        op = ctx.op
        gf = g.detach().reshape(g.shape[0], -1).contiguous()
        out = torch.empty_like(gf)
        with numba_threads_for(gf.numel()):
            _touch_backward(gf.numpy(), op._key, op._exec_ptr, op._reset_key, op._n_keys, out.numpy())
        return out.view(g.shape), None


class _TorchTouch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, op: TouchPropagator) -> torch.Tensor:
        ctx.op = op
        mask = op._mask_flat.to(x.dtype)
        xf = x.detach().reshape(x.shape[0], -1)
        neg = (xf < 0) & (mask > 0)
        if bool(neg.any()):
            bad = np.full(xf.shape[0], -1, np.int64)
            rows, cols = (v.cpu().numpy() for v in torch.nonzero(neg, as_tuple=True))
            bad[rows[::-1]] = cols[::-1]  # the first bad column of each row
            raise_if_negative(bad, xf, op.shape)
        xf = xf * mask
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


def raise_if_negative(bad: np.ndarray, x: torch.Tensor, shape: tuple[int, ...]) -> None:
    """ValueError naming the first negative order (``bad[b]`` = flat index in snippet b or -1)."""
    rows = np.flatnonzero(bad >= 0)
    if not len(rows):
        return
    b = int(rows[0])
    q = int(bad[b])
    _, _, _, L = shape
    t, s, j = q // (2 * L), (q // L) % 2, q % L
    raise ValueError(f"negative order {float(x[b, q]):g} at snippet {b}, step {t}, side {s}, level {j}: orders are "
                     "shares the attacker adds and must be >= 0")


class TouchPropagator:
    """Differentiable touch-model propagation for one SnippetBatch: ``op(a) -> delta``, both (B, W, 2, L).

    Built once per batch (the clean-book structure); ``op(a)`` is linear in ``a`` and equals
    :func:`lobsim.propagation.propagate` (``fill_model="touch"``) on integer orders. Negative orders are refused
    (ValueError naming the entry). Real prices within one side of one snapshot must be distinct (a ValueError names
    the first duplicate). The operator keeps only its index structure, not the batch's price/size arrays.
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
        self.backend = backend
        self.dtype = dtype
        self.include_hidden = include_hidden
        self.accumulate_dtype = torch.float64
        B, W, _, L = batch.prices.shape
        self._shape = (B, W, 2, L)
        N = W * 2 * L
        dup = np.full((B, 3), -1, np.int64)
        args = (
            np.ascontiguousarray(batch.prices, dtype=np.int64),
            np.ascontiguousarray(batch.exec_ptr, dtype=np.int64),
            np.ascontiguousarray(batch.exec_side, dtype=np.int8),
            np.ascontiguousarray(batch.exec_price, dtype=np.int64),
            np.ascontiguousarray(batch.exec_hidden, dtype=np.bool_),
            bool(include_hidden),
        )
        self._exec_ptr = args[1]
        if backend == "numba":
            self._key = np.empty((B, N), np.int32)
            self._reset_key = np.empty(args[2].shape[0], np.int32)
            self._n_keys = np.empty(B, np.int64)
            with numba_threads_for(B * N):
                _touch_keys(*args, self._key, self._reset_key, self._n_keys, dup)
        else:
            self._perm = np.empty((B, N), np.int32)
            self._start = np.empty((B, N), np.bool_)
            self._n_real = np.empty(B, np.int64)
            with numba_threads_for(B * N):
                _touch_structure(*args, self._perm, self._start, self._n_real, dup)
        bad = np.flatnonzero(dup[:, 0] >= 0)
        if len(bad):
            b = int(bad[0])
            t, s, j = (int(v) for v in dup[b])
            raise ValueError(f"duplicate price {batch.prices[b, t, s, j]} on side {s} at snippet {b}, step {t} "
                             f"(level {j}): prices within a side must be distinct")  # fmt: skip
        if backend == "torch":
            self._mask_t = torch.as_tensor(level_mask(batch.prices), device=self.device)
            self._mask_flat = self._mask_t.reshape(B, N).to(dtype)
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
        return self._shape  # type: ignore[return-value]

    @property
    def mask(self) -> torch.Tensor:
        """Bool (B, W, 2, L) of the real (unmasked) levels, on the operator's device."""
        if self.backend == "numba":
            return torch.from_numpy(self._key >= 0).view(self._shape)
        return self._mask_t

    def __call__(self, a: torch.Tensor) -> torch.Tensor:
        """Propagate float orders a >= 0 (B, W, 2, L) on this operator's device; differentiable in a."""
        if tuple(a.shape) != self.shape:
            raise ValueError(f"orders have shape {tuple(a.shape)}, expected {self.shape}")
        if not a.is_floating_point():
            a = a.to(self.dtype)
        if a.device != self.device:
            raise ValueError(f"orders are on {a.device}, the operator on {self.device}")
        fn = _NumbaTouch if self.backend == "numba" else _TorchTouch
        return fn.apply(a, self)

    def select(self, index: np.ndarray | Sequence[int]) -> TouchPropagator:
        """The operator for the snippets ``index`` (integer indices or a boolean mask; no recomputation)."""
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        index = np.asarray(index)
        index = np.flatnonzero(index) if index.dtype == np.bool_ else index.astype(np.int64)
        new = object.__new__(TouchPropagator)
        new.__dict__.update(self.__dict__)
        new._shape = (len(index),) + tuple(self._shape[1:])
        ptr = self._exec_ptr
        counts = ptr[index, -1] - ptr[index, 0]
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]) if len(index) else np.zeros(0, np.int64)
        new._exec_ptr = np.ascontiguousarray(ptr[index] - ptr[index, :1] + offsets[:, None], dtype=np.int64)
        if self.backend == "numba":
            new._key = np.ascontiguousarray(self._key[index])
            new._n_keys = np.ascontiguousarray(self._n_keys[index])
            parts = [self._reset_key[ptr[b, 0] : ptr[b, -1]] for b in index]
            new._reset_key = np.concatenate(parts).astype(np.int32) if parts else np.zeros(0, np.int32)
        else:
            ti = torch.as_tensor(index, device=self.device)
            new._mask_t = self._mask_t[ti]
            new._mask_flat = self._mask_flat[ti]
            new._perm = np.ascontiguousarray(self._perm[index])
            new._start = np.ascontiguousarray(self._start[index])
            new._n_real = np.ascontiguousarray(self._n_real[index])
            new._perm_t, new._first_t, new._last_t = self._perm_t[ti], self._first_t[ti], self._last_t[ti]
        return new
