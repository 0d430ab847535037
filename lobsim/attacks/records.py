"""Per-snippet attack results: the record, JSONL storage, dense orders and the accuracy-vs-capital curve."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from data_loaders.rundir import atomic_write_text

CLASS_NAMES = ("down", "flat", "up")

STATUSES = ("misclassified_before", "not_eligible", "success", "budget", "max_iter", "zero_gradient")


def class_index(name: str | int) -> int:
    """``down``/``flat``/``up`` (or 0/1/2) -> the class index 0/1/2."""
    if isinstance(name, (int, np.integer)) or (isinstance(name, str) and name.isdigit()):
        k = int(name)
        if k not in (0, 1, 2):
            raise ValueError(f"class must be 0, 1 or 2, got {k}")
        return k
    try:
        return CLASS_NAMES.index(str(name).lower())
    except ValueError:
        raise ValueError(f"class must be one of {CLASS_NAMES} or 0/1/2, got {name!r}") from None


@dataclass
class AttackRecord:
    """What an attack did to one snippet.

    ``orders`` is sparse: one ``[t, side, level, shares]`` per nonzero entry of the returned integer orders: for a
    success the cheapest fooling orders found (after minimisation), verified on the exact engine. ``capital`` /
    ``cost`` / ``relative_size`` describe the returned orders (exactly propagated). A successful snippet is fooled
    at budget c iff ``capital <= c`` (the curves and Table 3.2 read it so).

    ``first_capital``: capital of the winning member's first success (before minimisation). ``winner``: the member
    that found the returned orders (``greedy``, ``gradient``, ``thesis``, ``search``). ``member_capital``: the
    cheapest capital each member that ran found (None: not fooled). ``masking``: a gradient-free member fooled the
    snippet where every gradient member failed (possible gradient masking). ``peak_capital``: the largest capital
    along the winning member's path up to its first success (thesis rule: the whole path).
    """

    index: int
    day: int
    start: int
    label: int
    pred_before: int
    pred_after: int
    attacked: bool
    success: bool
    status: str
    iterations: int = 0
    capital: float = 0.0
    peak_capital: float = 0.0
    cost: float = 0.0
    relative_size: float = 0.0
    orders: list[list[int]] = field(default_factory=list)
    model: str = ""
    first_capital: float = 0.0
    winner: str = ""
    member_capital: dict[str, float | None] = field(default_factory=dict)
    masking: bool = False
    objective: str = "untargeted"

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"AttackRecord: unknown status {self.status!r}; expected one of {STATUSES}")


def sparse_orders(orders: np.ndarray) -> list[list[int]]:
    """(W, 2, L) int orders -> ``[[t, side, level, shares], ...]`` for the nonzero entries."""
    orders = np.asarray(orders)
    idx = np.argwhere(orders != 0)
    return [[int(t), int(s), int(j), int(orders[t, s, j])] for t, s, j in idx]


def dense_orders(records: Sequence[AttackRecord], window: int, levels: int) -> np.ndarray:
    """The records' orders as one (B, W, 2, L) int64 array (zeros where a record placed nothing)."""
    out = np.zeros((len(records), window, 2, levels), np.int64)
    for b, rec in enumerate(records):
        for t, s, j, q in rec.orders:
            if not (0 <= t < window and s in (0, 1) and 0 <= j < levels) or q < 0:
                raise ValueError(f"record {rec.index}: order {[t, s, j, q]} outside (W={window}, 2, L={levels})")
            out[b, t, s, j] = q
    return out


def write_jsonl(path: str | os.PathLike, records: Iterable[AttackRecord]) -> Path:
    """Write one JSON object per record (atomically)."""
    lines = [json.dumps(asdict(r), separators=(",", ":")) for r in records]
    return atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def read_jsonl(path: str | os.PathLike) -> list[AttackRecord]:
    """Read records written by :func:`write_jsonl`; a bad line gets an error naming the file and line."""
    path = Path(path)
    names = {f.name for f in fields(AttackRecord)}
    out = []
    with path.open(encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {n}: not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict) or set(obj) - names:
                raise ValueError(f"{path}: line {n}: not an attack record (unexpected keys)")
            try:
                out.append(AttackRecord(**obj))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: line {n}: {exc}") from exc
    return out


def adversarial_accuracy(records: Sequence[AttackRecord]) -> float:
    """A_adv: misclassified-before counts as wrong, a failed attack as right."""
    if not records:
        return float("nan")
    return float(np.mean([r.attacked and not r.success for r in records]))


def clean_accuracy(records: Sequence[AttackRecord]) -> float:
    """Accuracy of the model on the attacked snippets before the attack."""
    if not records:
        return float("nan")
    return float(np.mean([r.attacked for r in records]))


def fooled_at(records: Sequence[AttackRecord], budget: float | None, basis: str = "capital") -> np.ndarray:
    """(n,) bool: fooled at ``budget`` (None: any) by the cheapest orders found (``basis="capital"``) or, for
    thesis-rule runs without minimisation, by the path peak (``basis="peak"``: a run with that budget would have
    stopped there)."""
    if basis not in ("capital", "peak"):
        raise ValueError(f"basis must be 'capital' or 'peak', got {basis!r}")
    ok = np.array([r.success for r in records], bool)
    if budget is None:
        return ok
    cost = np.array([r.capital if basis == "capital" else r.peak_capital for r in records], float)
    return ok & (cost <= budget)


def capital_curve(records: Sequence[AttackRecord], budgets: Sequence[float], basis: str = "capital") -> np.ndarray:
    """Accuracy under attack at each budget from one run with a budget >= max(budgets).

    A snippet is fooled at budget c iff its cheapest fooling orders found cost at most c (``basis="capital"``,
    the default): those orders exist and fit the budget. Snippets misclassified before count as wrong.
    """
    if not records:
        return np.full(len(budgets), np.nan)
    attacked = np.array([r.attacked for r in records])
    return np.array([np.mean(attacked & ~fooled_at(records, c, basis)) for c in budgets])


def winner_counts(records: Sequence[AttackRecord], budget: float | None = None) -> dict[str, int]:
    """How many snippets each member won (among the successes at ``budget``)."""
    won = fooled_at(records, budget)
    out: dict[str, int] = {}
    for r, w in zip(records, won):
        if w:
            out[r.winner or "?"] = out.get(r.winner or "?", 0) + 1
    return dict(sorted(out.items()))


def summarize(records: Sequence[AttackRecord], budget: float | None = None, basis: str = "capital") -> dict:
    """A_test, A_adv and the means over successful attacks of capital, relative size and cost (Table 3.2).

    With ``budget``, a success counts only if its cheapest orders cost at most ``budget`` (see
    :func:`capital_curve`). ``capital_mean`` is the mean minimal capital; ``first_capital_mean`` the mean capital
    at the winning member's first success (before minimisation).
    """
    won = fooled_at(records, budget, basis) if records else np.zeros(0, bool)
    ok = [r for r, w in zip(records, won) if w]

    def mean(xs: list[float]) -> float:
        return float(np.mean(xs)) if xs else float("nan")

    def median(xs: list[float]) -> float:
        return float(np.median(xs)) if xs else float("nan")

    return {
        "n": len(records),
        "budget": budget,
        "attacked": int(sum(r.attacked for r in records)),
        "successes": len(ok),
        "a_test": clean_accuracy(records),
        "a_adv": float(np.mean([r.attacked and not w for r, w in zip(records, won)])) if records else float("nan"),
        "capital_mean": mean([r.capital for r in ok]),
        "capital_median": median([r.capital for r in ok]),
        "first_capital_mean": mean([r.first_capital for r in ok]),
        "size_mean": mean([r.relative_size for r in ok]),
        "cost_mean": mean([r.cost for r in ok]),
        "iterations_mean": mean([r.iterations for r in ok]),
        "winners": winner_counts(records, budget),
        "masking": int(sum(r.masking for r in records)),
        "status_counts": {s: int(sum(r.status == s for r in records)) for s in STATUSES},
    }
