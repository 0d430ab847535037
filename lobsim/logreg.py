"""Logistic-regression baseline on the same inputs as a valuation model: a check that training finds the signal.

The input windows ``(B, W, C)`` of the chosen adapters are normalised like the models' inputs
(:class:`lobsim.features.InputNormalizer`), average-pooled over time into ``W // pool`` steps per channel, then
standardised; a multinomial L2-regularised logistic regression (scikit-learn, L-BFGS) is fitted on snippets drawn
from the fit part of the training split, and its regularisation strength ``C`` is chosen on the time-held-out
validation split (never on test snippets). If a torch model scores clearly below this baseline on the same
inputs, its training is at fault, not the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lobsim.adapters import parse_inputs, price_like_channels
from lobsim.dataset import Market
from lobsim.features import InputNormalizer

C_GRID = (1e-3, 1e-2, 1e-1, 1.0)


@dataclass
class LogisticBaseline:
    """A fitted baseline: ``predict(market, day, start)`` like :meth:`lobsim.train.TrainedModel.predict`."""

    inputs: tuple[str, ...]
    pool: int
    tau: float
    normalizer: InputNormalizer
    mean: np.ndarray
    std: np.ndarray
    model: Any
    info: dict[str, Any] = field(default_factory=dict)

    def features(self, market: Market, day: np.ndarray, start: np.ndarray, chunk: int = 2048) -> np.ndarray:
        """Pooled, normalised windows flattened to ``(B, (W // pool) x C)``."""
        out = []
        for i in range(0, len(day), chunk):
            x = self.normalizer.numpy(market.windows(self.inputs, day[i:i + chunk], start[i:i + chunk]))
            keep = (x.shape[1] // self.pool) * self.pool
            x = x[:, x.shape[1] - keep:].reshape(x.shape[0], keep // self.pool, self.pool, x.shape[2]).mean(2)
            out.append(x.reshape(x.shape[0], -1))
        return np.concatenate(out)

    def predict(self, market: Market, day: np.ndarray, start: np.ndarray) -> np.ndarray:
        x = (self.features(market, np.asarray(day), np.asarray(start)) - self.mean) / self.std
        return self.model.predict(x).astype(np.int64)


def fit_logistic(
    market: Market,
    inputs: str | tuple[str, ...] = ("swa",),
    tau: float | None = None,
    pool: int | None = None,
    n_train: int = 20_000,
    val_fraction: float = 0.2,
    val_n: int = 4000,
    seed: int = 0,
    c_grid: tuple[float, ...] = C_GRID,
) -> LogisticBaseline:
    """Fit the baseline on ``n_train`` training snippets; ``pool`` defaults to one value per second of window (at
    least 10 values per channel)."""
    from sklearn.linear_model import LogisticRegression

    inputs = parse_inputs(inputs)
    tau = market.fit_tau() if tau is None else float(tau)
    pool = pool or max(1, min(int(round(1.0 / market.features.dt)), market.window // 10))
    if not 1 <= pool <= market.window:
        raise ValueError(f"fit_logistic: pool must be in [1, window={market.window}], got {pool}")
    fit_regions, val_regions = market.validation_split(val_fraction)
    rng = np.random.default_rng([seed, 11])
    tr = Market.sample_regions(fit_regions, n_train, rng)
    va = Market.refs_in(val_regions, val_n, seed=seed)
    norm = InputNormalizer.fit(market.windows(inputs, *Market.sample_regions(fit_regions, 4096, rng)),
                               price_like_channels(inputs, market.books[0].levels), inputs)
    base = LogisticBaseline(inputs, pool, tau, norm, np.zeros(1), np.ones(1), None)
    xtr, xva = base.features(market, *tr), base.features(market, *va)
    base.mean, base.std = xtr.mean(0), xtr.std(0) + 1e-9
    xtr, xva = (xtr - base.mean) / base.std, (xva - base.mean) / base.std
    ytr, yva = market.labels(*tr, tau), market.labels(*va, tau)
    scores = {}
    best = None
    for c in c_grid:
        m = LogisticRegression(C=c, max_iter=300).fit(xtr, ytr)
        scores[c] = float(np.mean(m.predict(xva) == yva))
        if best is None or scores[c] > scores[best[0]]:
            best = (c, m)
    base.model = best[1]
    base.info = {"C": best[0], "val_accuracy": scores, "train_accuracy": float(np.mean(best[1].predict(xtr) == ytr)),
                 "n_train": int(n_train), "pool": pool}
    return base
