"""Figures of the theory experiments that the shared line/bar plots do not cover: overlaid histograms and a
scatter with the identity line (PNG, written atomically)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vision.studies.common import _save_figure

__all__ = ["histograms", "scatter_identity", "xy_lines"]


def histograms(path: str | Path, series: dict[str, Sequence[float]], title: str = "", xlabel: str = "",
               bins: int = 40, range_: tuple[float, float] | None = None) -> Path:
    """Overlaid step histograms (shared bins, densities) of several samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arrays = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    allv = np.concatenate([a[np.isfinite(a)] for a in arrays.values()]) if arrays else np.zeros(1)
    lo, hi = range_ if range_ is not None else (float(allv.min()), float(allv.max()) + 1e-12)
    edges = np.linspace(lo, hi, bins + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, a in arrays.items():
        ax.hist(a, bins=edges, density=True, histtype="step", linewidth=1.4, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)


def scatter_identity(path: str | Path, x: Sequence[float], y: Sequence[float], title: str = "", xlabel: str = "",
                     ylabel: str = "") -> Path:
    """Points (x_i, y_i) with the line y = x (points below it: y smaller)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.scatter(list(x), list(y), s=14)
    lo = float(min(min(x, default=0.0), min(y, default=0.0)))
    hi = float(max(max(x, default=1.0), max(y, default=1.0)))
    ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)


def xy_lines(path: str | Path, curves: dict[str, tuple[Sequence[float], Sequence[float]]], title: str = "",
             xlabel: str = "", ylabel: str = "", logx: bool = False) -> Path:
    """Named curves, each with its own x values (e.g. one per network family over its widths)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, (xs, ys) in curves.items():
        ax.plot(list(xs), list(ys), marker="o", markersize=3, label=name)
    if logx:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)
