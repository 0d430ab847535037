"""Pieces every study shares: data subsets, optimisers, training through the shared loop, evaluation helpers,
tables (markdown, CSV, JSON) and figures (PNG).

Training reuses :func:`vision.defenses.loop.train_epoch` (device-side batching, augmentation, per-iteration
schedules); a *defense* is any callable ``defense(model, x, y) -> (loss, logits)``.
"""

from __future__ import annotations

import csv
import functools
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from data_loaders.images import ImageSet, load_images
from data_loaders.rundir import _jsonable, atomic_write_bytes, atomic_write_text, read_json, write_json
from vision.defenses.loop import lr_factor, train_epoch

OPTIMIZERS = ("sgd", "adam", "rmsprop")


def load_subset(dataset: str, root: str | None, split: str, n: int | None, seed: int | None = 0,
                device: str = "cpu") -> ImageSet:
    """``n`` images of ``split``: a seeded shuffle of the training set, the first ``n`` of the test set."""
    data = _load_cached(dataset, root, split)
    if n is not None and n <= 0:
        raise ValueError(f"need a positive number of {split} images, got {n}")
    if split == "train" and seed is not None:
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))
        data = data.subset(perm)
    if n is not None:
        data = data.subset(slice(0, int(n)))
    return data.to(device)


@functools.lru_cache(maxsize=4)
def _load_cached(dataset: str, root: str | None, split: str) -> ImageSet:
    """The whole split, read once per process (studies take several seeded subsets of it)."""
    return load_images(dataset, root, split)


def as_float(x: Tensor) -> Tensor:
    """uint8 images -> float in [0, 1]; float images pass through."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x


def make_optimizer(model: nn.Module, name: str, lr: float, momentum: float = 0.0,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """SGD (``momentum`` 0 = plain SGD), Adam or RMSProp with PyTorch's defaults otherwise."""
    params = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def fit(model: nn.Module, defense: Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, Tensor]], data: ImageSet,
        *, epochs: int, batch_size: int, optimizer: torch.optim.Optimizer, schedule: str = "piecewise",
        augment: bool = False, seed: int = 0, progress: bool = False, desc: str = "train") -> list[dict[str, Any]]:
    """Train ``model`` with ``defense`` for ``epochs`` passes over ``data`` (uint8 images on the model's device).

    The learning rate follows ``schedule`` (see :func:`vision.defenses.loop.lr_factor`; ``piecewise`` divides it
    by 10 at 50% and 75% of training, the thesis' "x0.1 at epochs 100 and 150 of 200"). ``augment``: random crop
    (zero padding 4) and horizontal flip, for colour images. Returns one row per epoch.
    """
    if epochs < 0 or batch_size < 2:
        raise ValueError(f"need epochs >= 0 and batch_size >= 2, got {epochs} and {batch_size}")
    steps = epochs * len(range(0, len(data), batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(schedule, steps))
    gen = torch.Generator(device=data.x.device).manual_seed(int(seed))
    history = []
    for epoch in range(epochs):
        stats = train_epoch(model, defense, data.x, data.y, optimizer, sched, batch_size,
                            pad=4 if augment else 0, flip=augment, generator=gen, progress=progress,
                            desc=f"{desc} {epoch + 1}/{epochs}")
        history.append({"epoch": epoch + 1, **stats})
    model.eval()
    return history


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch_size: int = 500) -> Tensor:
    """Logits of ``model`` (eval mode) on images ``x`` (uint8 or float), batched."""
    was = model.training
    model.eval()
    try:
        out = [model(as_float(x[s: s + batch_size])) for s in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was)
    return torch.cat(out) if out else torch.empty(0)


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy in [0, 1]."""
    if x.shape[0] == 0:
        return 0.0
    return float((predict(model, x, batch_size).argmax(1) == y).float().mean())


def input_gradients(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 500) -> Tensor:
    """Per-example gradient of the cross-entropy with respect to the input pixels (eval mode)."""
    was = model.training
    model.eval()
    out = []
    try:
        for s in range(0, x.shape[0], batch_size):
            xb = as_float(x[s: s + batch_size]).clone().requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(xb), y[s: s + batch_size], reduction="sum")
                (g,) = torch.autograd.grad(loss, xb)
            out.append(g.detach())
    finally:
        model.train(was)
    return torch.cat(out)


def attacked_correct(model: nn.Module, attack: Callable, x: Tensor, y: Tensor,
                     batch_size: int = 250) -> tuple[Tensor, Tensor]:
    """Per example: (correct on the clean input, correct at the attack's point). Eval mode; mode restored."""
    was = model.training
    model.eval()
    clean, robust = [], []
    try:
        for s in range(0, x.shape[0], batch_size):
            xb, yb = as_float(x[s: s + batch_size]), y[s: s + batch_size]
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
            res = attack(model, xb, yb)
            with torch.no_grad():
                ok_adv = model(res.x_adv).argmax(1) == yb
            clean.append(ok)
            robust.append(ok & ok_adv)
    finally:
        model.train(was)
    return torch.cat(clean), torch.cat(robust)


def adversarial_examples(model: nn.Module, attack: Callable, x: Tensor, y: Tensor, batch_size: int = 250) -> Tensor:
    """The attack's points for every example (float images), batched; the model's mode is restored."""
    was = model.training
    model.eval()
    try:
        out = [attack(model, as_float(x[s: s + batch_size]), y[s: s + batch_size]).x_adv.detach()
               for s in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was)
    return torch.cat(out)


def config_matches(out: str | Path, cfg: Any) -> bool:
    """True when ``out``/config.json holds exactly ``cfg`` (then weights already in ``out`` may be reused)."""
    p = Path(out) / "config.json"
    if not p.is_file():
        return False
    try:
        return read_json(p) == json.loads(json.dumps(_jsonable(cfg)))
    except ValueError:
        return False


def pct(v: float | None) -> float | None:
    """A fraction as a percentage rounded to 2 decimals (tables compare with the thesis' percentages)."""
    return None if v is None else round(100.0 * float(v), 2)


# ---------------------------------------------------------------------------------------------------------------------
# tables and figures


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e-2 or abs(v) >= 1e4 else f"{v:.4f}".rstrip("0").rstrip(".")
    return str(v)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a markdown table (columns: the union of the keys in order of appearance)."""
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_table(out: str | Path, name: str, rows: Sequence[dict[str, Any]], title: str = "",
                columns: Sequence[str] | None = None) -> Path:
    """Write ``name``.md (with ``title``), ``name``.csv and ``name``.json into ``out``; returns the .md path."""
    out = Path(out)
    md = (f"# {title}\n\n" if title else "") + markdown_table(rows, columns)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({c: r.get(c) for c in columns})
    atomic_write_text(out / f"{name}.csv", buf.getvalue())
    write_json(out / f"{name}.json", {"title": title, "rows": list(rows)})
    return atomic_write_text(out / f"{name}.md", md)


def _save_figure(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def heatmaps(path: str | Path, maps: dict[str, np.ndarray], title: str = "", log: bool = False,
             cbar_label: str = "", shared_scale: bool = True) -> Path:
    """One heat-map panel per entry of ``maps`` (2-D arrays), side by side, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(4.1 * n, 3.3), squeeze=False, gridspec_kw={"wspace": 0.45})
    arrays = [np.asarray(a, dtype=float) for a in maps.values()]
    pos = np.concatenate([a[a > 0].ravel() for a in arrays]) if log else np.concatenate([a.ravel() for a in arrays])
    vmin = float(pos.min()) if pos.size else 1e-12
    vmax = float(pos.max()) if pos.size else 1.0
    for ax, (name, a) in zip(axes[0], zip(maps, arrays)):
        kw: dict[str, Any] = {}
        if log:
            lo, hi = (vmin, vmax) if shared_scale else (max(a[a > 0].min(initial=vmin), 1e-12), max(a.max(), 1e-12))
            kw["norm"] = LogNorm(vmin=lo, vmax=max(hi, lo * 1.0001))
            a = np.where(a > 0, a, np.nan)
        elif shared_scale:
            kw.update(vmin=vmin, vmax=vmax)
        im = ax.imshow(a, cmap="viridis", **kw)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("DCT column j")
        ax.set_ylabel("DCT row i")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save_figure(fig, path)


def line_plot(path: str | Path, x: Sequence[float], series: dict[str, Sequence[float]], title: str = "",
              xlabel: str = "", ylabel: str = "", logx: bool = False, logy: bool = False) -> Path:
    """Several named curves over the same x values, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", markersize=3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logx:
        ax.set_xscale("log")
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)


def bar_plot(path: str | Path, groups: Sequence[str], series: dict[str, Sequence[float]], title: str = "",
             ylabel: str = "") -> Path:
    """Grouped bars: one group per entry of ``groups``, one bar per series, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(min(13.0, max(5.0, 0.25 * len(groups) * max(len(series), 1) + 2)), 3.8))
    width = 0.8 / max(len(series), 1)
    pos = np.arange(len(groups))
    for i, (name, ys) in enumerate(series.items()):
        ax.bar(pos + i * width - 0.4 + width / 2, list(ys), width, label=name)
    ax.set_xticks(pos)
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save_figure(fig, path)
