"""A spoofing-pattern detector baseline: a statistical test on resting-size anomalies of the visible book.

Market surveillance sees the book the model sees. The attacker's orders show up there as resting size that the
clean flow does not have: unusually large sizes at a level, and unusually large jumps of the size at one price
between two snapshots (a placement). The detector is fitted on clean books only:

- per (side, level), the median and the median absolute deviation (MAD) of ``log(1 + size)`` over the real levels
  of the fitting snapshots;
- per (side, level), the same of ``log(1 + jump)`` over the positive size jumps at an unchanged price between
  consecutive snapshots.

A snippet's score is the largest robust z-score ``(x - median) / (1.4826 MAD)`` of either kind over its snapshots
and levels. The threshold is the ``1 - fpr`` quantile of the scores of the clean fitting snippets, so the
false-positive rate on the fitting data is about ``fpr``; what counts is the rate on clean snippets the detector
never saw (:func:`evaluate_detector` measures it on the test split) next to the detection rate on the books the
attacks produce (clean book plus the exactly propagated orders).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lobsim.snippets import SnippetBatch

MAD_SCALE = 1.4826  # MAD of a normal distribution = 0.6745 sigma


def _features(prices: np.ndarray, sizes: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(log sizes with NaN at masked levels, log positive jumps at an unchanged price with NaN elsewhere)."""
    s = np.where(mask, np.log1p(np.maximum(sizes, 0).astype(np.float64)), np.nan)
    same = (prices[:, 1:] == prices[:, :-1]) & mask[:, 1:] & mask[:, :-1]
    jump = sizes[:, 1:].astype(np.float64) - sizes[:, :-1]
    j = np.where(same & (jump > 0), np.log1p(np.maximum(jump, 0)), np.nan)
    return s, j


def _robust(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per (side, level) median and scaled MAD of x (B, T, 2, L) with NaN = missing."""
    flat = x.reshape(-1, *x.shape[-2:])
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            med = np.nanmedian(flat, axis=0)
            mad = np.nanmedian(np.abs(flat - med), axis=0) * MAD_SCALE
    med = np.nan_to_num(med, nan=0.0)
    mad = np.where(np.isfinite(mad) & (mad > 1e-6), mad, 1.0)
    return med, mad


@dataclass
class SizeAnomalyDetector:
    """See the module docstring. ``fit(batches)`` on clean books; ``score(batch, delta)``; ``flag``."""

    fpr: float = 0.01
    size_median: list = field(default_factory=list)
    size_mad: list = field(default_factory=list)
    jump_median: list = field(default_factory=list)
    jump_mad: list = field(default_factory=list)
    threshold: float = float("nan")
    n_fit: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.fpr < 1:
            raise ValueError(f"SizeAnomalyDetector: fpr must be in (0, 1), got {self.fpr}")

    def fit(self, batches: Sequence[SnippetBatch]) -> SizeAnomalyDetector:
        """Fit the per-level statistics and the threshold on clean snippets."""
        if not batches:
            raise ValueError("SizeAnomalyDetector.fit: no clean snippets to fit on")
        feats = [_features(b.prices, b.sizes, b.mask) for b in batches]
        sm, sd = _robust(np.concatenate([f[0] for f in feats]))
        jm, jd = _robust(np.concatenate([f[1] for f in feats]))
        self.size_median, self.size_mad = sm.tolist(), sd.tolist()
        self.jump_median, self.jump_mad = jm.tolist(), jd.tolist()
        scores = np.concatenate([self.score(b) for b in batches])
        self.threshold = float(np.quantile(scores, 1 - self.fpr))
        self.n_fit = int(scores.size)
        return self

    def score(self, batch: SnippetBatch, delta: np.ndarray | None = None) -> np.ndarray:
        """(B,) anomaly score of the book (plus the attacker's resting shares ``delta`` (B, W, 2, L))."""
        if not self.size_median:
            raise ValueError("SizeAnomalyDetector: fit it on clean snippets first")
        sizes = batch.sizes if delta is None else batch.sizes + np.asarray(delta, np.int64)
        s, j = _features(batch.prices, sizes, batch.mask)
        zs = (s - np.asarray(self.size_median)) / np.asarray(self.size_mad)
        zj = (j - np.asarray(self.jump_median)) / np.asarray(self.jump_mad)
        with np.errstate(all="ignore"):
            a = np.nan_to_num(zs, nan=-np.inf).reshape(len(s), -1).max(1)
            b = np.nan_to_num(zj, nan=-np.inf).reshape(len(j), -1).max(1) if j.shape[1] else np.full(len(s), -np.inf)
        return np.maximum(a, b)

    def flag(self, batch: SnippetBatch, delta: np.ndarray | None = None) -> np.ndarray:
        return self.score(batch, delta) > self.threshold

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_detector(detector: SizeAnomalyDetector, clean_test: SnippetBatch, attacked: SnippetBatch | None = None,
                      deltas: np.ndarray | None = None, capitals: np.ndarray | None = None,
                      block: int | None = None, seed: int = 0) -> dict[str, Any]:
    """False-positive rate on clean test snippets the detector never saw (with a block-bootstrap SE when ``block``
    is given) and, with ``attacked`` books and the attacks' resting shares ``deltas``, the detection rate, also
    split at the median ``capitals`` of the attacks (are the cheapest manipulations the least visible?)."""
    from lobsim.stats import block_bootstrap

    flags = detector.flag(clean_test)
    out: dict[str, Any] = {"fpr_target": detector.fpr, "threshold": detector.threshold, "n_fit": detector.n_fit,
                           "fpr_test": float(flags.mean()), "n_test": int(flags.size)}
    if block:
        r = block_bootstrap(flags[:, None].astype(np.float64), clean_test.day, clean_test.start, block, seed=seed)[0]
        out["fpr_test_se"] = r.se
    if attacked is not None and deltas is not None and len(deltas):
        sc = detector.score(attacked, deltas)
        hit = sc > detector.threshold
        out.update(detected=float(hit.mean()), n_attacks=int(hit.size), score_median=float(np.median(sc)))
        if capitals is not None and len(capitals) >= 2:
            c = np.asarray(capitals, np.float64)
            cheap = c <= np.median(c)
            out["detected_cheaper_half"] = float(hit[cheap].mean()) if cheap.any() else float("nan")
            out["detected_dearer_half"] = float(hit[~cheap].mean()) if (~cheap).any() else float("nan")
            if np.ptp(c) > 0 and np.ptp(sc) > 0:
                rc, rs = (np.argsort(np.argsort(v)).astype(np.float64) for v in (c, sc))
                out["spearman_capital_score"] = float(np.corrcoef(rc, rs)[0, 1])
    return out
