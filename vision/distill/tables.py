"""Result tables (markdown, CSV, JSON) and a clean-vs-robust bar chart, shared by the distillation and few-shot
studies."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_bytes, atomic_write_text, write_json

__all__ = ["fmt_pct", "binomial_se", "markdown_table", "write_tables", "accuracy_bars"]


def binomial_se(p: float | None, n: int | None) -> float | None:
    """Standard error ``sqrt(p (1 - p) / n)`` of an accuracy measured on ``n`` independent examples."""
    if p is None or not n:
        return None
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def fmt_pct(v: Any, se: Any = None) -> str:
    """``v`` (a fraction) in percent with two decimals, ``+- se`` when given; ``-`` when missing."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    text = f"{100 * float(v):.2f}"
    return text if se is None else f"{text} ± {100 * float(se):.2f}"


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], headers: Sequence[str]) -> str:
    """Rows as a markdown table (cells already formatted as strings, or anything ``str`` accepts)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for r in rows:
        lines.append("| " + " | ".join("-" if r.get(c) is None else str(r.get(c)) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_tables(out_dir: str | Path, stem: str, rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                 markdown: str) -> list[Path]:
    """Write ``<stem>.md`` (the given markdown), ``<stem>.csv`` (raw values of ``columns``) and ``<stem>.json``."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow(["" if r.get(c) is None else r.get(c) for c in columns])
    return [atomic_write_text(out_dir / f"{stem}.md", markdown), atomic_write_text(out_dir / f"{stem}.csv",
            buf.getvalue()), write_json(out_dir / f"{stem}.json", list(rows))]


def accuracy_bars(path: str | Path, labels: Sequence[str], clean: Sequence[float | None],
                  robust: Sequence[float | None], title: str, robust_label: str = "PGD-20") -> Path:
    """A horizontal grouped bar chart of clean and robust accuracy (percent) per row, as PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(labels)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * n + 1.2))
    ys = list(range(n))
    c = [100 * (v or 0.0) for v in clean]
    r = [100 * (v or 0.0) for v in robust]
    ax.barh([y - 0.2 for y in ys], c, height=0.4, label="clean", color="#4c72b0")
    ax.barh([y + 0.2 for y in ys], r, height=0.4, label=robust_label, color="#dd8452")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(loc="lower right")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
