"""Reports from run directories: Table 3.2, Table 3.3, accuracy-vs-capital curves and the thesis' figures.

Every attack / demo run directory holds a ``metrics.json`` whose ``report`` entry has any of

- ``table_3_2``: list of (partial) Table 3.2 rows ``{ticker, model, a_test, a_rand, a_adv, capital, size, cost, n}``
  (rows of several runs with the same ticker and model are merged, e.g. a random run and a capital run);
- ``table_3_3``: list of ``{title, target, gamma, matrix}`` with ``matrix[surrogate][victim]`` results;
- ``curves``: list of ``{title, budgets, accuracy: {model: [...]}, clean: {model: a}}``;

and figure sources ``fig_3_1.npz`` (series, dt, start, window, horizon), ``fig_3_2.npz`` (patterns named
``pattern_<name>``, dt) and ``fig_3_3.npz`` (sizes, orders, delta, dt), all loaded without pickle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_loaders.rundir import atomic_write_text, read_json, write_json
from lobsim.report import figures as figs
from lobsim.report import tables


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a figure data file (npz without pickle expected): {exc}") from exc


def figures_from_run(run: str | os.PathLike, out: str | os.PathLike, prefix: str = "") -> list[Path]:
    """(Re)draw the figures whose sources (fig_3_*.npz) the run directory holds."""
    run, out = Path(run), Path(out)
    made = []
    if (run / "fig_3_1.npz").is_file():
        d = _load_npz(run / "fig_3_1.npz")
        made.append(figs.fig_swa_series(d["series"], float(d["dt"]), int(d["start"]), int(d["window"]),
                                        int(d["horizon"]), out / f"{prefix}fig_3_1_swa.png"))
    if (run / "fig_3_2.npz").is_file():
        d = _load_npz(run / "fig_3_2.npz")
        pats = {k[len("pattern_"):]: v for k, v in d.items() if k.startswith("pattern_")}
        made.append(figs.fig_universal_patterns(pats, float(d["dt"]), out / f"{prefix}fig_3_2_universal.png",
                                                title=str(d["title"]) if "title" in d else ""))
    if (run / "fig_3_3.npz").is_file():
        d = _load_npz(run / "fig_3_3.npz")
        made.append(figs.fig_attack_heatmaps(d["sizes"], d["orders"], d["delta"], float(d["dt"]),
                                             out / f"{prefix}fig_3_3_heatmaps.png",
                                             title=str(d["title"]) if "title" in d else ""))
    return made


def collect(run_dirs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Read the ``report`` entries of the runs' metrics.json files."""
    rows: list[dict] = []
    t33: list[dict] = []
    curves: list[dict] = []
    for run in run_dirs:
        path = Path(run) / "metrics.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics.json (is {run} a finished advsim run directory?)")
        rep = read_json(path).get("report")
        if not isinstance(rep, dict):
            raise ValueError(f"{path}: no 'report' entry: this run has no attack results to report")
        rows += rep.get("table_3_2", [])
        t33 += rep.get("table_3_3", [])
        curves += rep.get("curves", [])
    return {"table_3_2": tables.merge_rows(rows), "table_3_3": t33, "curves": curves}


def write_report(out: str | os.PathLike, rep: dict[str, Any], title: str = "") -> list[Path]:
    """Write tables (md/csv/json), curve figures and a summary report.md into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    parts = [f"# {title or 'advsim attack report'}\n"]
    if rep["table_3_2"]:
        made += tables.write_table_32(out, rep["table_3_2"])
        parts += ["## Table 3.2: clean, random-orders and adversarial accuracy\n",
                  "Capital, size and cost are means over the successful attacks.\n",
                  tables.table_32_markdown(rep["table_3_2"])]
    for i, entry in enumerate(rep["table_3_3"]):
        sub = out if i == 0 else out / f"table_3_3_{i}"
        made += tables.write_table_33(sub, entry["matrix"], entry.get("title", ""))
        parts += [f"## Table 3.3: {entry.get('title', 'universal transfer attack')}\n",
                  tables.table_33_markdown(entry["matrix"])]
    for i, c in enumerate(rep["curves"]):
        p = figs.fig_capital_curves(c["budgets"], c["accuracy"], out / f"capital_curve_{i}.png", c.get("clean"),
                                    title=c.get("title", "Accuracy under attack vs capital"))
        made.append(p)
        head = ["Budget ($)"] + list(c["accuracy"])
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for k, b in enumerate(c["budgets"]):
            lines.append("| " + " | ".join([f"{b:,.0f}"] + [f"{100 * c['accuracy'][m][k]:.2f}"
                                                             for m in c["accuracy"]]) + " |")
        parts += [f"## {c.get('title', 'Accuracy under attack vs capital')} (%)\n", "\n".join(lines) + "\n",
                  f"![capital curve]({p.name})\n"]
    made.append(write_json(out / "report.json", rep))
    made.append(atomic_write_text(out / "report.md", "\n".join(parts)))
    return made


def build_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """``advsim lob report``: tables and figures of several runs merged into ``out``."""
    rep = collect(run_dirs)
    made = write_report(out, rep)
    for run in run_dirs:
        made += figures_from_run(run, out, prefix=f"{Path(run).name}_" if len(run_dirs) > 1 else "")
    return made
