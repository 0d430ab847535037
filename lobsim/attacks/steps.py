"""In-place update steps of the gradient attacks on flat (B, N) order buffers: one pass per step, no temporaries.

Orders live in dollars (``v``) or shares (``a``) per entry of the (W, 2, L) snippet flattened to N. Prices are
``centre[b] + price[b, q]`` (centred float32 book prices plus the snippet's float64 centre). ``real[b, q]`` marks the
real (unmasked) levels (on the CPU the operator's key >= 0).

Budget rule (scale-free, :func:`budget_step`): a gradient step in dollars whose L2 length is ``alpha * eps`` (eps the
current capital budget of the snippet), the projection onto ``{v >= 0, sum v <= eps}`` (Euclidean projection onto
the capital simplex, Michelot's algorithm), then sigma-delta rounding to whole shares: the running sum of shares in
flat order is rounded, ``a_int[q] = floor(c_q + r) - floor(c_{q-1} + r)``, so the rounded orders hold the same
number of shares as the real-valued ones (+- 1), only where those are positive. If the rounded capital exceeds
``cmax``, the orders are rounded down instead (r = 0), and if that still exceeds it, shares are removed from the
dearest entries until it does not.

Thesis rule (:func:`thesis_step`): ``a <- max(a + scale * g, 0)``, ``a_int = floor(a + r)``.

Every step has a Numba version (CPU) and a torch version (any device; the tests check they agree on the CPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit, prange

from lobsim.propagation.exact import numba_threads_for

# -- Numba (CPU) ---------------------------------------------------------------------------------------------------


@njit(cache=True)
def _simplex_tau(v, real, eps, idx):
    """Threshold tau of the projection of row v (> 0 entries at real levels) onto {sum = eps} (Michelot)."""
    n = 0
    s = 0.0
    for q in range(v.shape[0]):
        if real[q] and v[q] > 0:
            idx[n] = q
            n += 1
            s += v[q]
    if n == 0:
        return 0.0
    tau = (s - eps) / n
    while True:
        m = 0
        s = 0.0
        for i in range(n):
            q = idx[i]
            if v[q] > tau:
                idx[m] = q
                m += 1
                s += v[q]
        if m == n or m == 0:
            break
        n = m
        tau = (s - eps) / n
    return tau


@njit(cache=True)
def _round_row(v, price, c0, real, r, dollars, out):
    """Sigma-delta rounding of one row to shares (``dollars``: v is in dollars, else in shares); returns capital."""
    c = 0.0
    prev = 0.0
    cap = 0.0
    for q in range(v.shape[0]):
        x = v[q]
        if real[q] and x > 0:
            p = c0 + price[q]
            c += x / p if dollars else x
            k = math.floor(c + r)
            n = k - prev
            prev = k
            out[q] = n
            cap += n * p
        else:
            out[q] = 0.0
    return cap


@njit(cache=True)
def _trim_row(out, price, c0, real, cap, cmax):
    """Remove shares from the dearest entries until the capital is <= cmax; returns the new capital."""
    while cap > cmax:
        best = -1
        bp = -1.0
        for q in range(out.shape[0]):
            if real[q] and out[q] > 0:
                p = c0 + price[q]
                if p > bp:
                    bp = p
                    best = q
        if best < 0:
            return 0.0
        n = min(out[best], math.ceil((cap - cmax) / bp))
        out[best] -= n
        cap -= n * bp
    return cap


@njit(cache=True, parallel=True)
def _budget_step_nb(v, g, price, centre, key, eps, mode, deficit, cap_now, eps_lo, eps_hi, alpha, r, cmax, aint, cap,
                    gmax):  # fmt: skip
    B, N = v.shape
    for b in prange(B):
        c0 = centre[b]
        real = key[b] >= 0
        gn = 0.0
        gm = 0.0
        for q in range(N):
            if real[q]:
                z = g[b, q] / (c0 + price[b, q])
                gn += z * z
                if z > gm:
                    gm = z
        gmax[b] = gm
        if mode[b] == 1:  # linear extrapolation of the capital still missing, clipped
            e = eps_hi[b] if gm <= 0 else cap_now[b] + deficit[b] / gm
            eps[b] = min(max(e, eps_lo[b]), eps_hi[b])
        tot = 0.0
        if gn > 0 and alpha > 0:
            step = alpha * eps[b] / math.sqrt(gn)
            for q in range(N):
                if real[q]:
                    w = v[b, q] + step * g[b, q] / (c0 + price[b, q])
                    if w < 0:
                        w = 0.0
                    v[b, q] = w
                    tot += w
        else:
            for q in range(N):
                if real[q]:
                    tot += v[b, q]
        if tot > eps[b]:
            idx = np.empty(N, np.int32)
            tau = _simplex_tau(v[b], real, eps[b], idx)
            for q in range(N):
                w = v[b, q] - tau
                v[b, q] = w if w > 0 and real[q] else 0.0
        c = _round_row(v[b], price[b], c0, real, r, True, aint[b])
        if c > cmax:
            c = _round_row(v[b], price[b], c0, real, 0.0, True, aint[b])
            c = _trim_row(aint[b], price[b], c0, real, c, cmax)
        cap[b] = c


@njit(cache=True, parallel=True)
def _thesis_step_nb(a, g, price, centre, key, scale, r, aint, cap):
    B, N = a.shape
    for b in prange(B):
        c0 = centre[b]
        s = scale[b]
        c = 0.0
        for q in range(N):
            if key[b, q] >= 0:
                w = a[b, q] + s * g[b, q]
                if w < 0:
                    w = 0.0
                a[b, q] = w
                n = math.floor(w + r)
                aint[b, q] = n
                c += n * (c0 + price[b, q])
            else:
                a[b, q] = 0.0
                aint[b, q] = 0.0
        cap[b] = c


@njit(cache=True, parallel=True)
def _round_nb(v, price, centre, key, r, dollars, aint, cap):
    B, N = v.shape
    for b in prange(B):
        cap[b] = _round_row(v[b], price[b], centre[b], key[b] >= 0, r, dollars, aint[b])


@njit(cache=True, parallel=True)
def _project_nb(v, key, eps):
    B, N = v.shape
    for b in prange(B):
        real = key[b] >= 0
        tot = 0.0
        for q in range(N):
            if real[q]:
                if v[b, q] < 0:
                    v[b, q] = 0.0
                tot += v[b, q]
            else:
                v[b, q] = 0.0
        if tot > eps[b]:
            idx = np.empty(N, np.int32)
            tau = _simplex_tau(v[b], real, eps[b], idx)
            for q in range(N):
                w = v[b, q] - tau
                v[b, q] = w if w > 0 else 0.0


# -- torch (any device) --------------------------------------------------------------------------------------------


def _tau_torch(v: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Michelot thresholds (B,) for rows of v >= 0 (only rows whose sum exceeds eps are meaningful)."""
    act = v > 0
    tau = torch.zeros(v.shape[0], dtype=torch.float64, device=v.device)
    vd = v.to(torch.float64)
    while True:
        n = act.sum(1)
        s = torch.where(act, vd, 0.0).sum(1)
        tau = torch.where(n > 0, (s - eps.to(torch.float64)) / n.clamp_min(1), tau)
        new = act & (vd > tau[:, None])
        if torch.equal(new, act):
            return tau
        act = new


def round_torch(v: torch.Tensor, price: torch.Tensor, real: torch.Tensor, r: float, dollars: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sigma-delta rounding (see the module docstring) -> (shares as v's dtype, capital float64 (B,))."""
    x = torch.where(real & (v > 0), v.to(torch.float64), 0.0)
    if dollars:
        x = x / price
    k = torch.floor(x.cumsum(1) + r)
    n = torch.diff(k, dim=1, prepend=torch.zeros_like(k[:, :1]))
    return n.to(v.dtype), (n * price).sum(1)


def _trim_torch(aint: torch.Tensor, price: torch.Tensor, real: torch.Tensor, cap: torch.Tensor, cmax: float
                ) -> torch.Tensor:
    rows = torch.nonzero(cap > cmax).flatten().tolist()
    if not rows:
        return cap
    a = aint[rows].detach().cpu().numpy().astype(np.float32)
    p = price[rows].detach().cpu().numpy().astype(np.float32)
    re = real[rows].detach().cpu().numpy()
    for i, row in enumerate(rows):
        cap[row] = _trim_row(a[i], p[i], 0.0, re[i], float(cap[row]), cmax)
    aint[rows] = torch.as_tensor(a, device=aint.device, dtype=aint.dtype)
    return cap


def budget_step_torch(v, g, price, real, eps, mode, deficit, cap_now, eps_lo, eps_hi, alpha, r, cmax, aint):
    """Torch twin of the Numba budget step; ``price`` is the absolute float64 price (B, N). Returns (cap, gmax)."""
    z = torch.where(real, g.to(torch.float64) / price, 0.0)
    gn = z.square().sum(1).sqrt()
    gm = z.amax(1).clamp_min(0.0)
    e = torch.where(gm > 0, cap_now + deficit / gm.clamp_min(1e-300), eps_hi)
    eps.copy_(torch.where(mode == 1, torch.minimum(torch.maximum(e, eps_lo), eps_hi), eps))
    if alpha > 0:
        step = torch.where(gn > 0, alpha * eps / gn.clamp_min(1e-300), 0.0)
        v.copy_(torch.where(real, (v + step[:, None] * z).clamp_min(0.0), 0.0).to(v.dtype))
    over = torch.where(real, v, 0.0).to(torch.float64).sum(1) > eps
    if bool(over.any()):
        tau = _tau_torch(v[over], eps[over])
        v[over] = (v[over] - tau[:, None].to(v.dtype)).clamp_min(0.0)
    n, cap = round_torch(v, price, real, r)
    bad = cap > cmax
    if bool(bad.any()):
        n0, cap0 = round_torch(v, price, real, 0.0)
        n = torch.where(bad[:, None], n0, n)
        cap = torch.where(bad, cap0, cap)
        cap = _trim_torch(n, price, real, cap, cmax)
    aint.copy_(n)
    return cap, gm


def thesis_step_torch(a, g, price, real, scale, r, aint) -> torch.Tensor:
    """Torch twin of the Numba thesis step; returns the capital (B,) float64."""
    a.copy_(torch.where(real, (a + scale[:, None].to(a.dtype) * g).clamp_min(0.0), 0.0))
    aint.copy_(torch.floor(a + r) * real)
    return (aint.to(torch.float64) * price).sum(1)


# -- dispatch ---------------------------------------------------------------------------------------------------


class StepKernels:
    """The steps for one chunk: Numba on the CPU (flat numpy views), torch elsewhere. All buffers (B, N)."""

    def __init__(self, key: np.ndarray | None, price: torch.Tensor, centre: torch.Tensor, real: torch.Tensor) -> None:
        self.cpu = key is not None
        self.key = key
        self.price = price  # centred float32 (B, N)
        self.centre = centre  # float64 (B,)
        self.real = real  # bool (B, N)
        self._abs: torch.Tensor | None = None

    @property
    def abs_price(self) -> torch.Tensor:
        """Absolute float64 prices (B, N) (torch path only; built on first use)."""
        if self._abs is None:
            self._abs = torch.where(self.real, self.centre[:, None] + self.price.to(torch.float64), 1.0)
        return self._abs

    def budget(self, v, g, eps, mode, deficit, cap_now, eps_lo, eps_hi, alpha, r, cmax, aint):
        """One budget-rule step in place on v (dollars) and aint (shares); eps (B,) float64 updated in place where
        ``mode == 1``. Returns (capital (B,) float64 numpy, max gradient per dollar (B,) numpy)."""
        B = v.shape[0]
        if self.cpu:
            cap = np.empty(B)
            gmax = np.empty(B)
            with numba_threads_for(v.numel()):
                _budget_step_nb(v.numpy(), g.numpy(), self.price.numpy(), self.centre.numpy(), self.key,
                                eps.numpy(), mode.numpy(), deficit.numpy(), cap_now.numpy(), eps_lo.numpy(),
                                eps_hi.numpy(), float(alpha), float(r), float(cmax), aint.numpy(), cap, gmax)
            return cap, gmax
        dev = v.device
        args = [torch.as_tensor(x, device=dev) for x in (eps, mode, deficit, cap_now, eps_lo, eps_hi)]
        cap, gm = budget_step_torch(v, g, self.abs_price, self.real, *args, alpha, r, cmax, aint)
        eps.copy_(args[0].cpu())
        return cap.cpu().numpy(), gm.cpu().numpy()

    def thesis(self, a, g, scale: np.ndarray, r: float, aint) -> np.ndarray:
        B = a.shape[0]
        if self.cpu:
            cap = np.empty(B)
            with numba_threads_for(a.numel()):
                _thesis_step_nb(a.numpy(), g.numpy(), self.price.numpy(), self.centre.numpy(), self.key,
                                np.ascontiguousarray(scale, np.float64), float(r), aint.numpy(), cap)
            return cap
        s = torch.as_tensor(scale, device=a.device)
        return thesis_step_torch(a, g, self.abs_price, self.real, s, r, aint).cpu().numpy()

    def round(self, v, r: float, aint, dollars: bool = True) -> np.ndarray:
        """Sigma-delta rounding of v into aint; returns the capital (B,)."""
        if self.cpu:
            cap = np.empty(v.shape[0])
            with numba_threads_for(v.numel()):
                _round_nb(v.numpy(), self.price.numpy(), self.centre.numpy(), self.key, float(r), dollars,
                          aint.numpy(), cap)
            return cap
        n, cap = round_torch(v, self.abs_price, self.real, r, dollars)
        aint.copy_(n)
        return cap.cpu().numpy()

    def capital(self, aint: torch.Tensor) -> np.ndarray:
        """In-loop capital (B,) of share buffers (float prices; records recompute it exactly)."""
        if self.cpu:
            p = self.centre[:, None] + self.price.to(torch.float64)
            return torch.where(self.real, aint.to(torch.float64) * p, 0.0).sum(1).numpy()
        return (aint.to(torch.float64) * self.abs_price).sum(1).cpu().numpy()

    def select(self, rows: np.ndarray, price: torch.Tensor, real: torch.Tensor, key: np.ndarray | None
               ) -> StepKernels:
        new = StepKernels(key, price, self.centre[torch.as_tensor(rows)], real)
        if self._abs is not None:
            new._abs = self._abs[torch.as_tensor(rows, device=self._abs.device)]
        return new


def project_simplex_numba(v: torch.Tensor, key: np.ndarray, eps: np.ndarray) -> None:
    """In place: each row of v (B, N) projected onto {v >= 0, sum v <= eps[b]} (masked entries zeroed)."""
    _project_nb(v.numpy(), key, np.ascontiguousarray(eps, np.float64))
