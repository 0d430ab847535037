"""Evaluation of a trained valuation model on a fixed seeded set of test snippets (thesis Table 3.1)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_loaders.rundir import write_json
from lobsim.features import CLASS_NAMES, make_labels

if TYPE_CHECKING:
    from lobsim.dataset import Market
    from lobsim.train import TrainedModel


@dataclass
class EvalResult:
    """Test accuracy +- one standard error (binomial, sqrt(a(1-a)/n)) with its baselines.

    ``majority_class`` is the most common *training* label; ``majority_accuracy`` is what always predicting
    it scores on these test snippets. ``confusion[i][j]`` counts true class i predicted as j.
    The standard error treats snippets as independent; overlapping snippets of one day are not, so it
    understates the real uncertainty.
    """

    accuracy: float
    stderr: float
    n: int
    chance: float
    majority_class: int
    majority_accuracy: float
    confusion: list[list[int]]
    test_class_fractions: list[float]
    train_class_fractions: list[float]
    tau: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        cm = "\n".join(
            f"  {CLASS_NAMES[i]:>5}: " + " ".join(f"{v:7d}" for v in row) for i, row in enumerate(self.confusion)
        )
        return (
            f"accuracy {100 * self.accuracy:.2f}% (+-{100 * self.stderr:.2f}) on {self.n} test snippets; "
            f"chance {100 * self.chance:.2f}%, majority class '{CLASS_NAMES[self.majority_class]}' "
            f"{100 * self.majority_accuracy:.2f}%\nconfusion (rows true, columns predicted: down flat up):\n{cm}"
        )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = 3) -> np.ndarray:
    """``(k, k)`` int64 counts of true class i predicted as j."""
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def evaluate(
    trained: TrainedModel,
    market: Market,
    n: int = 10_000,
    seed: int = 0,
    run_dir: str | Path | None = None,
) -> EvalResult:
    """Accuracy of ``trained`` on ``market.test_refs(n, seed)``; written to ``metrics.json`` of the run dir.

    ``run_dir`` defaults to the model's own run directory (when it was saved or loaded from one).
    """
    day, start = market.test_refs(n, seed)
    y = market.labels(day, start, trained.tau)
    pred = trained.predict(market, day, start)
    m = int(y.shape[0])
    acc = float(np.mean(pred == y))
    train_y = make_labels(market.changes(*market.all_train_starts()), trained.tau)
    train_frac = np.bincount(train_y, minlength=3) / max(train_y.size, 1)
    majority = int(np.argmax(train_frac))
    result = EvalResult(
        accuracy=acc,
        stderr=math.sqrt(acc * (1.0 - acc) / m),
        n=m,
        chance=1.0 / 3.0,
        majority_class=majority,
        majority_accuracy=float(np.mean(y == majority)),
        confusion=confusion_matrix(y, pred).tolist(),
        test_class_fractions=(np.bincount(y, minlength=3) / m).tolist(),
        train_class_fractions=train_frac.tolist(),
        tau=float(trained.tau),
    )
    out = Path(run_dir) if run_dir is not None else trained.run_dir
    if out is not None:
        write_json(Path(out) / "metrics.json", {"eval": result.to_dict(), "eval_seed": seed,
                                                 "model": trained.config.model.resolved().to_dict(),
                                                 "days": [{"ticker": b.ticker, "date": b.date} for b in market.books]})
    return result
