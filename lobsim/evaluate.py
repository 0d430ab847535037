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


_KIND_TITLES = {"linear": "Linear", "mlp": "MLP", "lstm": "LSTM"}


def accuracy_table(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Table 3.1 layout (rows tickers, columns models, cells ``acc (+-se)`` in %) from run records.

    Each record: ``{"run": path, "ticker": str, "kind": str, "preset": str, "eval": EvalResult dict}``.
    Returns the markdown and the JSON rows (one per run). Two runs for one cell are an error.
    """
    presets = {r["preset"] for r in runs}

    def column(r: dict[str, Any]) -> str:
        title = _KIND_TITLES.get(r["kind"], r["kind"])
        return title if len(presets) == 1 else f"{title} ({r['preset']})"

    order = {k: i for i, k in enumerate(_KIND_TITLES)}
    cols = sorted({(order.get(r["kind"], 9), r["preset"], column(r)) for r in runs})
    columns = list(dict.fromkeys(c for *_, c in cols))
    tickers = list(dict.fromkeys(r["ticker"] for r in runs))
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        key = (r["ticker"], column(r))
        if key in cells:
            raise ValueError(f"table: runs {cells[key]['run']} and {r['run']} both fill {key[0]} / {key[1]}")
        cells[key] = r
    lines = ["| Ticker | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for t in tickers:
        row = []
        for c in columns:
            r = cells.get((t, c))
            row.append("-" if r is None else f"{100 * r['eval']['accuracy']:.2f} (±{100 * r['eval']['stderr']:.2f})")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    n = sorted({r["eval"]["n"] for r in runs})
    lines.append("")
    lines.append(f"Test accuracy in % (± one standard error) on {', '.join(map(str, n))} test snippets; chance 33.33%.")
    records = [
        {"ticker": r["ticker"], "model": column(r), "kind": r["kind"], "preset": r["preset"], "run": str(r["run"]),
         "accuracy": r["eval"]["accuracy"], "stderr": r["eval"]["stderr"], "n": r["eval"]["n"],
         "majority_accuracy": r["eval"]["majority_accuracy"]}
        for r in runs
    ]
    return "\n".join(lines) + "\n", records


def run_record(run_dir: str | Path) -> dict[str, Any]:
    """The table record of a finished run directory (model.json + metrics.json)."""
    from data_loaders.rundir import read_json

    run_dir = Path(run_dir)
    for name in ("model.json", "metrics.json"):
        if not (run_dir / name).is_file():
            hint = "train it first" if name == "model.json" else "run `advsim lob evaluate` on it first"
            raise FileNotFoundError(f"{run_dir / name}: missing ({hint})")
    meta, metrics = read_json(run_dir / "model.json"), read_json(run_dir / "metrics.json")
    try:
        days = metrics.get("days") or meta["info"]["market"]["days"]
        ticker = "/".join(dict.fromkeys(d["ticker"] for d in days))
        return {"run": str(run_dir), "ticker": ticker, "kind": meta["model"]["kind"],
                "preset": meta["model"]["preset"], "eval": metrics["eval"]}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir}: model.json / metrics.json lack a field the table needs: {exc}") from exc
