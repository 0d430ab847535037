"""The results table of a sweep: one row per (finished cell, budget), as parquet and CSV.

The table holds results only (no paths, no timings), in the plan's cell order, so the same sweep gives the same
bytes whichever runner ran it and wherever the folder lives. Timings and memory go to ``timings.csv``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_bytes, atomic_write_text
from lobsim.sweep.cell import ROW_FIELDS
from lobsim.sweep.plan import Cell
from lobsim.sweep.store import read_result

CELL_COLUMNS = ("cell", "market", "ticker", "date", "model", "instance", "in_sample", "attack", "kind", "fill_model",
                "defense")
COLUMNS = CELL_COLUMNS + ROW_FIELDS
TIMING_COLUMNS = ("cell", "seconds", "cpu_seconds", "rss_before_mb", "max_rss_mb", "source_bytes", "grid_bytes",
                  "batch_bytes", "steps", "snippets")


def collect_rows(out: Path, cells: Sequence[Cell]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(result rows, timing rows) of the finished cells among ``cells``, in their order."""
    rows, timings = [], []
    for c in cells:
        res = read_result(out, c.id, c.key)
        if res is None:
            continue
        info, resources = res.get("info", {}), res.get("resources", {})
        for r in res["rows"]:
            rows.append({"cell": c.id, "market": c.day.market, "ticker": c.day.ticker, "date": c.day.date,
                         "model": c.model, "instance": c.instance, "in_sample": bool(info.get("in_sample", False)),
                         "attack": c.attack["name"], "kind": c.attack["kind"], "fill_model": c.fill_model,
                         "defense": c.defense, **{k: r.get(k) for k in ROW_FIELDS}})
        timings.append({"cell": c.id, **{k: resources.get(k) for k in TIMING_COLUMNS[1:5]},
                        **{k: info.get(k) for k in TIMING_COLUMNS[5:]}})
    return rows, timings


def _frame(rows: list[dict[str, Any]], columns: Sequence[str]):
    import pandas as pd

    return pd.DataFrame(rows, columns=list(columns))


def write_table(out: Path, cells: Sequence[Cell]) -> list[Path]:
    """Write ``results.parquet``, ``results.csv`` and ``timings.csv`` (atomically) from the finished cells."""
    rows, timings = collect_rows(out, cells)
    df = _frame(rows, COLUMNS)
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    return [atomic_write_bytes(out / "results.parquet", buf.getvalue()),
            atomic_write_text(out / "results.csv", df.to_csv(index=False)),
            atomic_write_text(out / "timings.csv", _frame(timings, TIMING_COLUMNS).to_csv(index=False))]


def read_table(out: Path):
    """The results table of a sweep folder as a pandas DataFrame (from the parquet file)."""
    import pandas as pd

    path = Path(out) / "results.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results table (run the sweep first)")
    return pd.read_parquet(path)
