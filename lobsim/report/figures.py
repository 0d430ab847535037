"""PNG figures (matplotlib, Agg backend): SWA with window and label point, book heat-maps, universal patterns,
accuracy-vs-capital curves."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from data_loaders.rundir import atomic_write_bytes


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> Path:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def book_image(x: np.ndarray) -> np.ndarray:
    """(W, 2, L) -> (W, 2L) image: bid levels deepest..best on the left, ask levels best..deepest on the right."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x[:, 0, ::-1], x[:, 1, :]], axis=1)


def level_ticks(L: int) -> tuple[list[int], list[str]]:
    """x positions and labels of a :func:`book_image` with ``L`` levels: ``b10 .. b1 | a1 .. a10`` (every level
    up to 10 per side, else about ten per side)."""
    step = max(1, -(-L // 10))
    bid = [j for j in range(L) if (L - 1 - j) % step == 0 or j == L - 1]  # columns 0..L-1 = levels L..1
    ask = [L + j for j in range(L) if j % step == 0]
    return bid + ask, [f"b{L - j}" for j in bid] + [f"a{j - L + 1}" for j in ask]


def _heat(ax, img: np.ndarray, title: str, dt: float, vmin: float | None = None, vmax: float | None = None,
          cmap: str = "viridis") -> None:
    W, twoL = img.shape
    L = twoL // 2
    im = ax.imshow(img, aspect="auto", origin="upper", interpolation="nearest", cmap=cmap, vmin=vmin, vmax=vmax,
                   extent=(-0.5, twoL - 0.5, W * dt, 0.0))
    ax.axvline(L - 0.5, color="white", lw=0.8)
    ticks, labels = level_ticks(L)
    ax.set_xticks(ticks, labels, fontsize=6, rotation=90 if len(ticks) > 12 else 0)
    ax.set_xlabel("book level (bid: deepest ... best 1 | ask: best 1 ... deepest)", fontsize=8)
    ax.set_ylabel("time in window (s)")
    ax.set_title(title, fontsize=9)
    ax.figure.colorbar(im, ax=ax, label="shares")


def fig_swa_series(series: np.ndarray, dt: float, start: int, window: int, horizon: int, path: str | os.PathLike,
                   title: str = "SWA with the input window and the label point", context: int | None = None) -> Path:
    """Fig. 3.1: the SWA around one snippet, the input window in green and the label point as a green dot."""
    plt = _plt()
    series = np.asarray(series, dtype=np.float64)
    ctx = window if context is None else context
    lo, hi = max(start - ctx, 0), min(start + window + horizon + ctx, series.shape[0])
    t = np.arange(lo, hi) * dt
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(t, series[lo:hi], color="0.4", lw=0.8, label="SWA")
    w = np.arange(start, start + window)
    ax.plot(w * dt, series[w], color="green", lw=1.4, label="input window")
    end = start + window + horizon - 1
    if end < series.shape[0]:
        ax.plot([end * dt], [series[end]], "o", color="green", label="label point")
    ax.set_xlabel("time in the day's grid (s from the grid start)")
    ax.set_ylabel("SWA ($)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def fig_attack_heatmaps(sizes: np.ndarray, orders: np.ndarray, delta: np.ndarray, dt: float,
                        path: str | os.PathLike, title: str = "") -> Path:
    """Fig. 3.3: clean book, perturbed book (shared scale), unpropagated orders and propagated perturbation."""
    plt = _plt()
    clean, pert = book_image(sizes), book_image(np.asarray(sizes) + np.asarray(delta))
    vmin, vmax = float(min(clean.min(), pert.min())), float(max(clean.max(), pert.max()))
    fig, axes = plt.subplots(2, 2, figsize=(10, 8))
    _heat(axes[0, 0], clean, "clean book", dt, vmin, vmax)
    _heat(axes[0, 1], pert, "perturbed book", dt, vmin, vmax)
    _heat(axes[1, 0], book_image(orders), f"unpropagated orders (max {int(np.max(orders))})", dt, cmap="magma")
    _heat(axes[1, 1], book_image(delta), f"propagated perturbation (max {int(np.max(delta))})", dt, cmap="magma")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_universal_patterns(patterns: Mapping[str, np.ndarray], dt: float, path: str | os.PathLike,
                           title: str = "") -> Path:
    """Fig. 3.2: universal patterns side by side (e.g. without and with the relative-size penalty)."""
    plt = _plt()
    n = len(patterns)
    if n == 0:
        raise ValueError("fig_universal_patterns: no patterns")
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 5), squeeze=False)
    for ax, (name, p) in zip(axes[0], patterns.items()):
        _heat(ax, book_image(p), f"{name} (total {int(np.sum(p))} shares)", dt, cmap="magma")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def fig_capital_curves(budgets: Sequence[float], curves: Mapping[str, Sequence[float]], path: str | os.PathLike,
                       clean: Mapping[str, float] | None = None, title: str = "Accuracy under attack vs capital"
                       ) -> Path:
    """Accuracy-vs-capital curves (one line per model, log-scaled capital axis), clean accuracy dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if len(budgets) < 2:
        raise ValueError("fig_capital_curves: a curve needs at least two budgets")
    for name, acc in curves.items():
        line = ax.plot(budgets, 100 * np.asarray(acc, dtype=np.float64), "o-", ms=3, label=f"{name} under attack")[0]
        if clean and name in clean:
            ax.axhline(100 * clean[name], ls="--", lw=0.8, color=line.get_color(), label=f"{name} clean (no attack)")
    ax.axhline(100 / 3, color="k", lw=0.6, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("capital budget ($)")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
