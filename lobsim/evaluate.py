"""Evaluation of a trained valuation model on a fixed seeded set of test snippets (thesis Table 3.1).

Accuracy comes with a block-bootstrap standard error (``lobsim.stats``: overlapping snippets of one day are not
independent) next to chance, the majority class of training and the best constant answer on the same snippets,
with paired differences. The binomial standard error is kept, labelled as such.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from data_loaders.rundir import write_json
from lobsim.features import CLASS_NAMES, make_labels
from lobsim.stats import compare_with_baselines

if TYPE_CHECKING:
    from lobsim.dataset import Market
    from lobsim.train import TrainedModel


@dataclass
class EvalResult:
    """Test accuracy with its block-bootstrap standard error (``stderr``) and its baselines.

    ``stderr``: block bootstrap over ``n_blocks`` time blocks of ``block`` grid steps (window + horizon by
    default; ``"day"``: whole days); ``binomial_se`` = sqrt(a(1-a)/n) treats snippets as independent and
    understates the uncertainty of overlapping snippets. ``majority_class`` is the most common *training* label;
    ``majority_accuracy`` what always predicting it scores here. ``best_constant``: the class that scores best on
    these very test snippets (``{"class", "accuracy", "se"}``); ``vs_best_constant`` / ``vs_majority``: paired
    difference of accuracy (``{"diff", "se", "z"}``, block bootstrap). ``confusion[i][j]`` counts true class i
    predicted as j. ``train_accuracy`` / ``val_accuracy``: on the fit / validation part of training (None if unknown).
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
    binomial_se: float = float("nan")
    se_kind: str = "block bootstrap"
    n_blocks: int = 0
    block: int | str = 0
    majority_se: float = float("nan")
    best_constant: dict[str, Any] = field(default_factory=dict)
    vs_best_constant: dict[str, float] = field(default_factory=dict)
    vs_majority: dict[str, float] = field(default_factory=dict)
    train_accuracy: float | None = None
    val_accuracy: float | None = None
    inputs: list[str] = field(default_factory=lambda: ["swa"])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def skill(self) -> bool:
        """True when the accuracy beats the best constant answer by more than 2 paired block SEs."""
        v = self.vs_best_constant
        return bool(v) and v["se"] > 0 and v["diff"] > 2 * v["se"]

    def summary(self) -> str:
        cm = "\n".join(
            f"  {CLASS_NAMES[i]:>5}: " + " ".join(f"{v:7d}" for v in row) for i, row in enumerate(self.confusion)
        )
        bc, vs = self.best_constant, self.vs_best_constant
        train = "" if self.train_accuracy is None else f"train accuracy {100 * self.train_accuracy:.2f}%"
        if self.val_accuracy is not None:
            train += f", validation {100 * self.val_accuracy:.2f}%"
        lines = [
            f"accuracy {100 * self.accuracy:.2f}% +- {100 * self.stderr:.2f} (block bootstrap over {self.n_blocks} "
            f"blocks of {self.block} steps; binomial +- {100 * self.binomial_se:.2f}) on {self.n} test snippets "
            f"[inputs: {','.join(self.inputs)}]",
            f"baselines on the same snippets: chance {100 * self.chance:.2f}%, majority class of training "
            f"'{CLASS_NAMES[self.majority_class]}' {100 * self.majority_accuracy:.2f}% +- {100 * self.majority_se:.2f}"
            + (f", best constant '{CLASS_NAMES[bc['class']]}' {100 * bc['accuracy']:.2f}% +- {100 * bc['se']:.2f}"
               if bc else ""),
        ]
        if vs:
            verdict = ("above the best constant by more than 2 SE" if self.skill
                       else "NOT clearly above the best constant (within 2 SE)")
            lines.append(f"vs best constant: {100 * vs['diff']:+.2f} points +- {100 * vs['se']:.2f} (paired, z = "
                         f"{vs['z']:.1f}): {verdict}")
        if train:
            lines.append(train)
        lines.append(f"confusion (rows true, columns predicted: down flat up):\n{cm}")
        return "\n".join(lines)


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, k: int = 3) -> np.ndarray:
    """``(k, k)`` int64 counts of true class i predicted as j."""
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return cm


def train_majority(market: Market, tau: float) -> tuple[int, np.ndarray]:
    """(most common training label, training class fractions) of ``market`` at threshold ``tau``."""
    train_y = make_labels(market.changes(*market.all_train_starts()), tau)
    frac = np.bincount(train_y, minlength=3) / max(train_y.size, 1)
    return int(np.argmax(frac)), frac


def score(
    y: np.ndarray, pred: np.ndarray, day: np.ndarray, start: np.ndarray, block: int | str, majority: int,
    train_frac: np.ndarray, tau: float, n_boot: int = 1000, seed: int = 0, **extra: Any,
) -> EvalResult:
    """An EvalResult from labels and predictions of the snippets ``(day, start)`` (block bootstrap ``block``)."""
    m = int(y.shape[0])
    cmp = compare_with_baselines(y, pred, day, start, block, majority, n_boot=n_boot, seed=seed)
    a = cmp["accuracy"]
    return EvalResult(
        accuracy=a["accuracy"], stderr=a["se"], n=m, chance=cmp["chance"], majority_class=majority,
        majority_accuracy=cmp["majority"]["accuracy"], confusion=confusion_matrix(y, pred).tolist(),
        test_class_fractions=(np.bincount(y, minlength=3) / m).tolist(), train_class_fractions=list(train_frac),
        tau=float(tau), binomial_se=a["binomial_se"], n_blocks=a["n_blocks"], block=a["block"],
        majority_se=cmp["majority"]["se"], best_constant=cmp["best_constant"],
        vs_best_constant=cmp["vs_best_constant"], vs_majority=cmp["vs_majority"], **extra,
    )


def evaluate(
    trained: TrainedModel,
    market: Market,
    n: int = 10_000,
    seed: int = 0,
    run_dir: str | Path | None = None,
    block: int | str | None = None,
    n_boot: int = 1000,
) -> EvalResult:
    """Accuracy of ``trained`` on ``market.test_refs(n, seed)``; written to ``metrics.json`` of the run dir.

    ``block``: bootstrap block in grid steps (default and minimum sensible value: window + horizon) or ``"day"``.
    ``run_dir`` defaults to the model's own run directory (when it was saved or loaded from one).
    """
    day, start = market.test_refs(n, seed)
    y = market.labels(day, start, trained.tau)
    pred = trained.predict(market, day, start)
    majority, train_frac = train_majority(market, trained.tau)
    block = market.window + market.horizon if block is None else block
    info = getattr(trained, "info", {}) or {}
    es = info.get("early_stopping") or {}
    result = score(y, pred, day, start, block, majority, train_frac, trained.tau, n_boot=n_boot, seed=seed,
                   train_accuracy=info.get("train_accuracy"), val_accuracy=es.get("val_accuracy"),
                   inputs=list(getattr(trained, "inputs", ("swa",))))
    out = Path(run_dir) if run_dir is not None else trained.run_dir
    if out is not None:
        write_json(Path(out) / "metrics.json", {"eval": result.to_dict(), "eval_seed": seed,
                                                 "model": trained.config.model.resolved().to_dict(),
                                                 "days": [{"ticker": b.ticker, "date": b.date} for b in market.books]})
    return result


_KIND_TITLES = {"linear": "Linear", "mlp": "MLP", "lstm": "LSTM"}


def accuracy_table(runs: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Table 3.1 layout (rows tickers, columns models, cells ``acc ± se`` in %) from run records.

    Each record: ``{"run": path, "ticker": str, "kind": str, "preset": str, "eval": EvalResult dict}`` and
    optionally ``"inputs"`` (list of adapter names; a column names them when it is not SWA alone). ``se`` is the
    block-bootstrap standard error when the evaluation stores one (``se_kind``), else the binomial one, and the
    footnote says which. A last column gives the best constant answer on the ticker's test snippets. Returns the
    markdown and the JSON rows (one per run). Two runs for one cell are an error.
    """
    presets = {r["preset"] for r in runs}

    def column(r: dict[str, Any]) -> str:
        title = _KIND_TITLES.get(r["kind"], r["kind"])
        inputs = list(r.get("inputs") or r["eval"].get("inputs") or ["swa"])
        if inputs != ["swa"]:
            title += f" [{','.join(inputs)}]"
        return title if len(presets) == 1 else f"{title} ({r['preset']})"

    order = {k: i for i, k in enumerate(_KIND_TITLES)}
    cols = sorted({(order.get(r["kind"], 9), r["preset"], len(column(r)), column(r)) for r in runs})
    columns = list(dict.fromkeys(c for *_, c in cols))
    tickers = list(dict.fromkeys(r["ticker"] for r in runs))
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    for r in runs:
        key = (r["ticker"], column(r))
        if key in cells:
            raise ValueError(f"table: runs {cells[key]['run']} and {r['run']} both fill {key[0]} / {key[1]}; "
                             "give one run per ticker and model")
        cells[key] = r
    kinds = {str(r["eval"].get("se_kind", "binomial")) for r in runs}
    lines = ["| Ticker | " + " | ".join(columns) + " | Best constant |", "|---" * (len(columns) + 2) + "|"]
    for t in tickers:
        row = []
        for c in columns:
            r = cells.get((t, c))
            if r is None:
                row.append("-")
                continue
            ev = r["eval"]
            cell = f"{100 * ev['accuracy']:.2f} ± {100 * ev['stderr']:.2f}"
            vs = ev.get("vs_best_constant") or {}
            if vs.get("se"):
                cell += f" ({100 * vs['diff']:+.1f}, z {vs['diff'] / vs['se']:.1f})"
            row.append(cell)
        bcs = [cells[(t, c)]["eval"].get("best_constant") for c in columns if (t, c) in cells]
        bc = next((b for b in bcs if b), None)
        row.append("-" if bc is None else f"{100 * bc['accuracy']:.2f} ({CLASS_NAMES[bc['class']]})")
        lines.append(f"| {t} | " + " | ".join(row) + " |")
    n = sorted({r["eval"]["n"] for r in runs})
    lines.append("")
    if kinds == {"block bootstrap"}:
        blocks = sorted({str(r["eval"].get("block")) for r in runs})
        err = (f"± one block-bootstrap standard error (blocks of {', '.join(blocks)} grid steps = window + horizon); "
               "in brackets the paired difference to the best constant answer on the same snippets, in points, and "
               "z = difference / its block standard error")
    else:
        err = "± one binomial standard error, which treats overlapping snippets as independent and understates " \
              "the uncertainty"
    lines.append(f"Test accuracy in % {err}; {', '.join(map(str, n))} test snippets; chance 33.33%.")
    records = [
        {"ticker": r["ticker"], "model": column(r), "kind": r["kind"], "preset": r["preset"], "run": str(r["run"]),
         "inputs": list(r.get("inputs") or r["eval"].get("inputs") or ["swa"]),
         "accuracy": r["eval"]["accuracy"], "stderr": r["eval"]["stderr"],
         "se_kind": r["eval"].get("se_kind", "binomial"), "binomial_se": r["eval"].get("binomial_se"),
         "n": r["eval"]["n"], "majority_accuracy": r["eval"]["majority_accuracy"],
         "best_constant": r["eval"].get("best_constant"), "vs_best_constant": r["eval"].get("vs_best_constant"),
         "train_accuracy": r["eval"].get("train_accuracy")}
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
                "preset": meta["model"]["preset"], "eval": metrics["eval"], "inputs": meta.get("inputs", ["swa"])}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{run_dir}: model.json / metrics.json lack a field the table needs: {exc}") from exc
