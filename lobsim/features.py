"""SWA (size-weighted average price) features, input normalisation and 3-class labels.

SWA of one snapshot = sum(price x size) / sum(size) over both sides and all real (unmasked) levels, in dollars.
Everything downstream of SWA is shift-invariant (SWA(p - c) = SWA(p) - c), so the attack may feed prices that
are centred per snippet for float32 precision. :class:`Normalizer` is the SWA-only normaliser of the thesis'
models; :class:`InputNormalizer` normalises the several channels of ``lobsim.adapters`` (same numbers for SWA).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from lobsim.grid import level_mask

PRICE_SCALE = 10_000.0  # LOBSTER price units per dollar

DOWN, FLAT, UP = 0, 1, 2
CLASS_NAMES = ("down", "flat", "up")


def swa(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """SWA in dollars of int64 snapshots ``(..., 2, L)``; returns float64 ``(...)``.

    Masked (dummy-price) levels contribute nothing. A snapshot whose real levels hold no size raises a
    ValueError naming its index.
    """
    prices = np.asarray(prices)
    sizes = np.asarray(sizes)
    if prices.shape != sizes.shape or prices.ndim < 2 or prices.shape[-2] != 2:
        raise ValueError(f"swa: prices {prices.shape} and sizes {sizes.shape} must both be (..., 2, L)")
    mask = level_mask(prices)
    s = np.where(mask, sizes, 0).astype(np.int64)
    # Exact integer sums (price x size stays far below 2**63 for any real book), one division at the end.
    num = (np.where(mask, prices, 0).astype(np.int64) * s).sum(axis=(-2, -1))
    den = s.sum(axis=(-2, -1))
    bad = den <= 0
    if np.any(bad):
        idx = np.unravel_index(int(np.argmax(bad.ravel())), den.shape) if den.ndim else ()
        where = tuple(int(i) for i in idx)
        raise ValueError(
            f"swa: snapshot {where if len(where) != 1 else where[0]} has zero total size on its real levels "
            f"({int(bad.sum())} such snapshot(s)); SWA is undefined there"
        )
    return num / den / PRICE_SCALE


def swa_torch(prices: torch.Tensor, sizes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Differentiable SWA of float snapshots ``(..., 2, L)`` -> ``(...)``, batched, on any device.

    ``prices`` are in whatever unit/shift the caller uses (the result has the same unit and shift); masked
    levels contribute nothing and receive zero gradient. No zero-size check (it would force a device sync):
    callers feed real snapshots, which always hold size.
    """
    zero = torch.zeros((), dtype=prices.dtype, device=prices.device)
    p = torch.where(mask, prices, zero)
    s = torch.where(mask, sizes, torch.zeros((), dtype=sizes.dtype, device=sizes.device))
    return (p * s).sum(dim=(-2, -1)) / s.sum(dim=(-2, -1))


@dataclass
class Normalizer:
    """Shift-invariant input normalisation: ``x = (swa - swa[:, -1:]) / scale``.

    ``scale`` (dollars) is the root-mean-square of ``swa - swa[:, -1:]`` over training windows, so inputs are
    of order one. Subtracting the window's last SWA removes the price level (which differs ~100x between
    assets) and makes the model see only the recent path relative to "now".
    """

    scale: float = 1.0
    kind: str = "last"

    def __post_init__(self) -> None:
        if self.kind != "last":
            raise ValueError(f"Normalizer: unknown kind {self.kind!r} (only 'last' is implemented)")
        if not np.isfinite(self.scale) or self.scale <= 0:
            raise ValueError(f"Normalizer: scale must be a positive finite number, got {self.scale}")

    @classmethod
    def fit(cls, swa_windows: np.ndarray) -> Normalizer:
        """Fit ``scale`` on training windows ``(B, W)`` (dollars)."""
        w = np.asarray(swa_windows, dtype=np.float64)
        d = w - w[:, -1:]
        rms = float(np.sqrt(np.mean(d * d))) if d.size else 0.0
        return cls(scale=rms if rms > 0 and np.isfinite(rms) else 1.0)

    def numpy(self, swa_windows: np.ndarray) -> np.ndarray:
        """Normalise float64 windows ``(B, W)`` -> float32 ``(B, W)``."""
        w = np.asarray(swa_windows, dtype=np.float64)
        return ((w - w[..., -1:]) / self.scale).astype(np.float32)

    def torch(self, swa_windows: torch.Tensor) -> torch.Tensor:
        """Normalise a tensor ``(B, W)`` (differentiable, same dtype and device)."""
        return (swa_windows - swa_windows[..., -1:]) / self.scale

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalizer:
        return cls(scale=float(d["scale"]), kind=str(d.get("kind", "last")))


@dataclass
class InputNormalizer:
    """Per-channel normalisation of input windows ``(B, W, C)`` read from the feature adapters.

    ``kinds[c]``: ``"last"`` for price-like channels, ``x = (v - v[:, -1]) / scale`` with ``scale`` the RMS of
    ``v - v[:, -1]`` over training windows (shift-invariant; for SWA alone this is exactly :class:`Normalizer`), or
    ``"standard"``, ``x = (v - centre) / scale`` with the training mean and standard deviation over all steps.
    ``inputs`` names the adapters the channels come from (``lobsim.adapters``).
    """

    inputs: tuple[str, ...] = ("swa",)
    kinds: tuple[str, ...] = ("last",)
    centre: tuple[float, ...] = (0.0,)
    scale: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        self.inputs, self.kinds = tuple(self.inputs), tuple(self.kinds)
        self.centre = tuple(float(c) for c in self.centre)
        self.scale = tuple(float(c) for c in self.scale)
        if not (len(self.kinds) == len(self.centre) == len(self.scale) >= 1):
            raise ValueError(f"InputNormalizer: kinds, centre and scale need one entry per channel, got {self}")
        for k, c, sc in zip(self.kinds, self.centre, self.scale):
            if k not in ("last", "standard"):
                raise ValueError(f"InputNormalizer: unknown kind {k!r} (use 'last' or 'standard')")
            if not np.isfinite(sc) or sc <= 0 or not np.isfinite(c):
                raise ValueError(f"InputNormalizer: scale must be positive and finite, centre finite; got {sc}, {c}")

    @property
    def channels(self) -> int:
        return len(self.kinds)

    @classmethod
    def fit(cls, windows: np.ndarray, price_like: list[bool], inputs: tuple[str, ...] = ("swa",)) -> InputNormalizer:
        """Fit on training windows ``(B, W, C)`` (or ``(B, W)`` for one channel)."""
        w = np.asarray(windows, dtype=np.float64)
        w = w[..., None] if w.ndim == 2 else w
        if w.shape[-1] != len(price_like):
            raise ValueError(f"InputNormalizer.fit: {w.shape[-1]} channels but {len(price_like)} price-like flags")
        kinds, centre, scale = [], [], []
        for c, pl in enumerate(price_like):
            v = w[..., c]
            if pl:
                d = v - v[:, -1:]
                rms = float(np.sqrt(np.mean(d * d))) if d.size else 0.0
                rms = rms if rms > 1e-9 else 0.0
                kinds.append("last")
                centre.append(0.0)
                scale.append(rms if rms > 0 and np.isfinite(rms) else 1.0)
            else:
                sd = float(v.std()) if v.size else 0.0
                mean = float(v.mean()) if v.size else 0.0
                kinds.append("standard")
                centre.append(mean)
                # A (numerically) constant channel keeps scale 1: float32 rounding must not be blown up.
                scale.append(sd if sd > 1e-6 * max(1.0, abs(mean)) and np.isfinite(sd) else 1.0)
        return cls(tuple(inputs), tuple(kinds), tuple(centre), tuple(scale))

    @classmethod
    def from_swa(cls, normalizer: Normalizer) -> InputNormalizer:
        """The SWA-only normaliser of older model files (identical numbers)."""
        return cls(("swa",), ("last",), (0.0,), (normalizer.scale,))

    def numpy(self, windows: np.ndarray) -> np.ndarray:
        """Normalise float64 windows ``(B, W, C)`` -> float32 ``(B, W, C)`` (``(B, W)`` in, ``(B, W)`` out)."""
        w = np.asarray(windows, dtype=np.float64)
        flat = w.ndim == 2
        w = w[..., None] if flat else w
        out = np.empty(w.shape, np.float32)
        for c, (k, ce, sc) in enumerate(zip(self.kinds, self.centre, self.scale)):
            v = w[..., c]
            out[..., c] = ((v - v[..., -1:]) / sc if k == "last" else (v - ce) / sc).astype(np.float32)
        return out[..., 0] if flat else out

    def torch(self, windows: torch.Tensor) -> torch.Tensor:
        """Normalise a tensor ``(B, W, C)`` or ``(B, W)`` (differentiable, same dtype and device)."""
        flat = windows.dim() == 2
        w = windows.unsqueeze(-1) if flat else windows
        parts = []
        for c, (k, ce, sc) in enumerate(zip(self.kinds, self.centre, self.scale)):
            v = w[..., c]
            parts.append((v - v[..., -1:]) / sc if k == "last" else (v - ce) / sc)
        return parts[0] if flat else torch.stack(parts, dim=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "kinds": list(self.kinds), "centre": list(self.centre),
                "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputNormalizer:
        """Read :meth:`to_dict`, or an older SWA-only ``Normalizer`` dict (``{"scale": s, "kind": "last"}``)."""
        if "kinds" not in d:
            return cls.from_swa(Normalizer.from_dict(d))
        return cls(tuple(d["inputs"]), tuple(d["kinds"]), tuple(d["centre"]), tuple(d["scale"]))


@dataclass
class LabelConfig:
    """How labels are made: change = SWA(end + horizon) - SWA(end), absolute dollars or ``relative`` (fraction).

    ``flat_fraction`` of the training changes fall in the flat class: tau is that quantile of |change|.
    """

    relative: bool = False
    flat_fraction: float = 1.0 / 3.0

    def __post_init__(self) -> None:
        if not 0.0 < self.flat_fraction < 1.0:
            raise ValueError(f"LabelConfig: flat_fraction must be in (0, 1), got {self.flat_fraction}")


def swa_change(swa_end: np.ndarray, swa_future: np.ndarray, relative: bool = False) -> np.ndarray:
    """The label's change: ``future - end`` in dollars, or ``(future - end) / end`` when ``relative``."""
    swa_end = np.asarray(swa_end, dtype=np.float64)
    change = np.asarray(swa_future, dtype=np.float64) - swa_end
    return change / swa_end if relative else change


def fit_threshold(changes: np.ndarray, flat_fraction: float = 1.0 / 3.0) -> float:
    """Symmetric threshold tau such that ``|change| <= tau`` holds ``flat_fraction`` of ``changes``.

    With ties (e.g. many exact zeros in a quiet market) the flat class can exceed the target; it is never
    below it.
    """
    c = np.abs(np.asarray(changes, dtype=np.float64).ravel())
    if c.size == 0:
        raise ValueError("fit_threshold: no changes to fit on")
    if not np.all(np.isfinite(c)):
        raise ValueError("fit_threshold: changes contain NaN or inf")
    k = max(int(np.ceil(flat_fraction * c.size)) - 1, 0)
    return float(np.partition(c, k)[k])


def make_labels(change: np.ndarray, tau: float) -> np.ndarray:
    """int64 labels: 0 = down (change < -tau), 1 = flat (|change| <= tau), 2 = up (change > tau)."""
    change = np.asarray(change, dtype=np.float64)
    labels = np.full(change.shape, FLAT, dtype=np.int64)
    labels[change < -tau] = DOWN
    labels[change > tau] = UP
    return labels
