"""Result tables in the thesis' layouts (Table 3.2 and Table 3.3) as markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_text, write_json

# Table 3.2: one row per (ticker, model). Values are fractions (accuracies) / dollars / percent.
# capital: mean over the successes of each snippet's minimal capital (cheapest fooling orders found);
# capital_first: mean capital at the winning attack's first success; winners: successes per attack member;
# masking: snippets only the gradient-free member fooled (possible gradient masking).
TABLE_32_COLUMNS = ("ticker", "model", "a_test", "a_rand", "a_adv", "capital", "capital_first", "size", "cost",
                    "winners", "masking", "n")
_HEAD_32 = ("Ticker", "Model", "A_test (%)", "A_rand (%)", "A_adv (%)", "Capital ($)", "First success ($)",
            "Size (%)", "Cost ($)", "Won by", "Masking", "n")
_KINDS_32 = ("str", "str", "pct", "pct", "pct", "money", "money", "size", "cost", "str", "int", "int")
_OPTIONAL_32 = ("capital_first", "winners", "masking")
# Block-bootstrap standard errors of the accuracies (lobsim.stats), shown as "acc ± se" when present.
TABLE_32_ERRORS = ("a_test_se", "a_rand_se", "a_adv_se")


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _fmt(x: Any, kind: str) -> str:
    v = _num(x)
    if v is None:
        return "-"
    if kind == "pct":
        return f"{100 * v:.2f}"
    if kind == "money":
        return f"{v:,.0f}"
    if kind == "size":
        return "< 0.1" if 0 < v < 0.1 else f"{v:.1f}"
    if kind == "cost":
        return f"{v:.2f}"
    return str(int(v)) if kind == "int" else f"{v:g}"


def merge_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Merge partial Table 3.2 rows with the same (ticker, model): later non-missing values win."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        if "ticker" not in row or "model" not in row:
            raise ValueError(f"Table 3.2 row without ticker/model: {dict(row)}")
        key = (str(row["ticker"]), str(row["model"]))
        cur = merged.setdefault(key, {c: None for c in TABLE_32_COLUMNS} | {"ticker": key[0], "model": key[1]})
        for k, v in row.items():
            if (k in TABLE_32_COLUMNS or k in TABLE_32_ERRORS) and v is not None:
                cur[k] = v
    return list(merged.values())


def table_32_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 3.2 as markdown: accuracies in percent (± block-bootstrap SE when the row holds one), capital/size/cost
    means over successful attacks."""
    # the attack-ensemble columns only when some row has them (a random-orders-only report has none)
    show = [i for i, c in enumerate(TABLE_32_COLUMNS)
            if c not in _OPTIONAL_32 or any(r.get(c) is not None for r in rows)]
    cols = [TABLE_32_COLUMNS[i] for i in show]
    kinds = [_KINDS_32[i] for i in show]
    head = [_HEAD_32[i] for i in show]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [(str(r.get(c)) if r.get(c) is not None else "-") if k == "str" else _fmt(r.get(c), k)
                 for c, k in zip(cols, kinds)]
        for i, c in enumerate(cols):
            se = _num(r.get(f"{c}_se"))
            if kinds[i] == "pct" and se is not None and cells[i] != "-":
                cells[i] += f" ± {100 * se:.1f}"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table_33_rows(matrix: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Flatten ``matrix[surrogate][victim]`` into rows (victim, surrogate, fooled, eligible, fool_rate, size)."""
    rows = []
    for s, per_victim in matrix.items():
        for v, res in per_victim.items():
            rows.append({"victim": v, "surrogate": s, "fooled": res.get("fooled"), "eligible": res.get("eligible"),
                         "fool_rate": res.get("fool_rate"), "size": res.get("size_mean"),
                         "capital": res.get("capital_mean")})
    return rows


def table_33_markdown(matrix: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Table 3.3 layout: one row per victim, a (Fooled, Size) column pair per surrogate pattern."""
    surrogates = list(matrix)
    victims: list[str] = []
    for s in surrogates:
        victims += [v for v in matrix[s] if v not in victims]
    head = ["Victim model"]
    for s in surrogates:
        head += [f"U_{s} Fooled", f"U_{s} Size"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in victims:
        cells = [v]
        for s in surrogates:
            res = matrix[s].get(v)
            if res is None:
                cells += ["-", "-"]
                continue
            rate = _num(res.get("fool_rate"))
            cells.append("-" if rate is None else f"{100 * rate:.2f}% ({res.get('fooled')}/{res.get('eligible')})")
            size = _num(res.get("size_mean"))
            cells.append("-" if size is None else f"{size:.2f}%")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rows_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain CSV of rows (raw values; missing as empty)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if _num(r.get(c)) is None and not isinstance(r.get(c), str) else r.get(c) for c in columns])
    return buf.getvalue()


def write_table_32(out: str | os.PathLike, rows: Sequence[Mapping[str, Any]], title: str = "") -> list[Path]:
    """table_3_2.md / .csv / .json in ``out``."""
    out = Path(out)
    md = (f"{title}\n\n" if title else "") + table_32_markdown(rows)
    return [atomic_write_text(out / "table_3_2.md", md),
            atomic_write_text(out / "table_3_2.csv", rows_csv(rows, TABLE_32_COLUMNS + TABLE_32_ERRORS)),
            write_json(out / "table_3_2.json", list(rows))]


def write_table_33(out: str | os.PathLike, matrix: Mapping[str, Mapping[str, Mapping[str, Any]]], title: str = "",
                   stem: str = "table_3_3") -> list[Path]:
    """``stem``.md / .csv / .json in ``out`` (a second Table 3.3 of one report is ``table_3_3_2``, ...)."""
    out = Path(out)
    md = (f"{title}\n\n" if title else "") + table_33_markdown(matrix)
    cols = ("victim", "surrogate", "fooled", "eligible", "fool_rate", "size", "capital")
    return [atomic_write_text(out / f"{stem}.md", md),
            atomic_write_text(out / f"{stem}.csv", rows_csv(table_33_rows(matrix), cols)),
            write_json(out / f"{stem}.json", matrix)]


def transfer_markdown(matrix: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> str:
    """Transfer of per-snippet orders: one row per model the orders were crafted on, one column per model they
    were replayed on; cells ``accuracy % (clean %)``."""
    victims: list[str] = []
    for per_victim in matrix.values():
        victims += [v for v in per_victim if v not in victims]
    head = ["Orders crafted on \\ replayed on"] + victims
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for src, per_victim in matrix.items():
        cells = [src]
        for v in victims:
            res = per_victim.get(v)
            acc = _num(res.get("accuracy")) if res else None
            clean = _num(res.get("clean_accuracy")) if res else None
            cells.append("-" if acc is None else f"{100 * acc:.2f}" + ("" if clean is None else
                                                                      f" (clean {100 * clean:.2f})"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
