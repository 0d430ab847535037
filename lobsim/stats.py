"""Honest error bars for accuracies on overlapping snippets: block bootstrap, baselines, paired differences.

Snippets cut from one day overlap (a 60 s window sampled every 0.01 s), so their outcomes are strongly
correlated and the binomial standard error ``sqrt(a (1 - a) / n)`` understates the uncertainty. Here the
snippets are grouped into **blocks**: consecutive time blocks of ``block`` grid steps of one day (at least
window + horizon, so snippets in blocks two apart never share a grid step), or whole days (``block="day"``, for
markets of independent days). Blocks are resampled with replacement (``n_boot`` times); the standard error is the
standard deviation of the resampled accuracy (a ratio estimator: blocks may hold different numbers of
snippets). The binomial figure is kept, labelled as such.

Baselines on the same snippets: chance (1/3), the majority class of the *training* labels, and the best constant
answer (the single class that scores best on these very snippets: an optimistic baseline a model must beat).
Differences to them are *paired* (per snippet) and bootstrapped over the same blocks.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

N_CLASSES = 3
DEFAULT_BOOT = 1000


@dataclass
class BootstrapResult:
    """Mean of per-snippet values with its block-bootstrap standard error (``se``) and a 95% percentile interval."""

    mean: float
    se: float
    n: int
    n_blocks: int
    block: int | str
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def binomial_se(p: float, n: int) -> float:
    """The binomial standard error ``sqrt(p (1 - p) / n)``: right only for independent snippets."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def block_ids(day: np.ndarray, start: np.ndarray, block: int | str) -> np.ndarray:
    """int64 block id per snippet: ``(day, start // block)``, or the day when ``block == "day"``."""
    day = np.asarray(day, np.int64).ravel()
    start = np.asarray(start, np.int64).ravel()
    if day.shape != start.shape:
        raise ValueError(f"block_ids: day {day.shape} and start {start.shape} must have equal length")
    if block == "day":
        key = day
    else:
        if not isinstance(block, (int, np.integer)) or int(block) < 1:
            raise ValueError(f"block_ids: block must be a positive number of grid steps or 'day', got {block!r}")
        key = day * (1 << 40) + start // int(block)
    _, ids = np.unique(key, return_inverse=True)
    return ids.astype(np.int64)


def block_bootstrap(
    values: np.ndarray,
    day: np.ndarray,
    start: np.ndarray,
    block: int | str,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> BootstrapResult | list[BootstrapResult]:
    """Block-bootstrap mean and standard error of per-snippet ``values`` (n,) or (n, k) (one result per column).

    ``values`` are e.g. 0/1 correctness, or paired differences of correctness (-1, 0, 1). Deterministic in ``seed``.
    """
    v = np.asarray(values, np.float64)
    one = v.ndim == 1
    v2 = v[:, None] if one else v
    if v2.ndim != 2 or v2.shape[0] == 0:
        raise ValueError(f"block_bootstrap: values must be (n,) or (n, k) with n >= 1, got {v.shape}")
    ids = block_ids(day, start, block)
    if ids.shape[0] != v2.shape[0]:
        raise ValueError(f"block_bootstrap: {v2.shape[0]} values but {ids.shape[0]} (day, start) refs")
    if n_boot < 2:
        raise ValueError(f"block_bootstrap: n_boot must be >= 2, got {n_boot}")
    nb = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=nb).astype(np.float64)
    sums = np.stack([np.bincount(ids, weights=v2[:, j], minlength=nb) for j in range(v2.shape[1])], axis=1)
    rng = np.random.default_rng(seed)
    results = []
    mean = v2.mean(axis=0)
    # Draw blocks in chunks: weights (R, nb) = how often each block is drawn in replicate r.
    reps = np.empty((n_boot, v2.shape[1]))
    chunk = max(1, min(n_boot, 2_000_000 // max(nb, 1)))
    for lo in range(0, n_boot, chunk):
        r = min(chunk, n_boot - lo)
        draws = rng.integers(0, nb, size=(r, nb)) + nb * np.arange(r)[:, None]
        w = np.bincount(draws.ravel(), minlength=r * nb).reshape(r, nb).astype(np.float64)
        reps[lo:lo + r] = (w @ sums) / (w @ counts)[:, None]
    for j in range(v2.shape[1]):
        se = float(reps[:, j].std(ddof=1)) if nb > 1 else float("nan")
        lo_q, hi_q = np.quantile(reps[:, j], [0.025, 0.975])
        results.append(BootstrapResult(float(mean[j]), se, int(v2.shape[0]), nb, block, float(lo_q), float(hi_q)))
    return results[0] if one else results


def accuracy_se(
    correct: np.ndarray, day: np.ndarray, start: np.ndarray, block: int | str, n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """The call for attack code: accuracy of per-snippet 0/1 ``correct`` with its block SE and the binomial SE.

    Returns ``{"accuracy", "se", "se_kind": "block bootstrap", "binomial_se", "n", "n_blocks", "block",
    "ci_low", "ci_high"}``.
    """
    c = np.asarray(correct, np.float64).ravel()
    r = block_bootstrap(c, day, start, block, n_boot, seed)
    assert isinstance(r, BootstrapResult)
    return {"accuracy": r.mean, "se": r.se, "se_kind": "block bootstrap", "binomial_se": binomial_se(r.mean, r.n),
            "n": r.n, "n_blocks": r.n_blocks, "block": r.block, "ci_low": r.ci_low, "ci_high": r.ci_high}


def best_constant(y: np.ndarray, k: int = N_CLASSES) -> int:
    """The class that, answered for every snippet, scores best on labels ``y`` (lowest index on ties)."""
    return int(np.argmax(np.bincount(np.asarray(y, np.int64), minlength=k)))


def compare_with_baselines(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    day: np.ndarray,
    start: np.ndarray,
    block: int | str,
    train_majority: int,
    n_boot: int = DEFAULT_BOOT,
    seed: int = 0,
) -> dict[str, Any]:
    """Accuracy and its baselines on the same snippets, each with a block SE, plus paired differences.

    Keys: ``accuracy`` (accuracy_se dict), ``chance`` (1/3), ``majority`` (class, accuracy, se),
    ``best_constant`` (class, accuracy, se), ``vs_best_constant`` / ``vs_majority`` (diff, se, z = diff / se).
    """
    y = np.asarray(y_true, np.int64).ravel()
    p = np.asarray(y_pred, np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"compare_with_baselines: {y.shape[0]} labels but {p.shape[0]} predictions")
    best = best_constant(y)
    cols = np.stack([p == y, y == train_majority, y == best,
                     (p == y).astype(np.float64) - (y == best), (p == y).astype(np.float64) - (y == train_majority)],
                    axis=1).astype(np.float64)
    acc, maj, const, d_best, d_maj = block_bootstrap(cols, day, start, block, n_boot, seed)

    def diff(r: BootstrapResult) -> dict[str, float]:
        z = r.mean / r.se if r.se and r.se > 0 else float("nan")
        return {"diff": r.mean, "se": r.se, "z": z}

    return {
        "accuracy": {"accuracy": acc.mean, "se": acc.se, "se_kind": "block bootstrap",
                     "binomial_se": binomial_se(acc.mean, acc.n), "n": acc.n, "n_blocks": acc.n_blocks,
                     "block": acc.block, "ci_low": acc.ci_low, "ci_high": acc.ci_high},
        "chance": 1.0 / N_CLASSES,
        "majority": {"class": int(train_majority), "accuracy": maj.mean, "se": maj.se},
        "best_constant": {"class": best, "accuracy": const.mean, "se": const.se},
        "vs_best_constant": diff(d_best),
        "vs_majority": diff(d_maj),
    }
