"""Report tables (markdown / CSV / JSON) and figures (PNG) on generated results; build_report on run dirs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from data_loaders.rundir import write_json
from lobsim.report import build_report, collect
from lobsim.report import figures as figs
from lobsim.report.tables import merge_rows, table_32_markdown, table_33_markdown, write_table_32, write_table_33

PNG = b"\x89PNG\r\n\x1a\n"


def _md_cells(md: str) -> list[list[str]]:
    rows = [ln for ln in md.strip().splitlines() if ln.startswith("|")]
    return [[c.strip() for c in r.strip("|").split("|")] for r in rows[2:]]  # skip header and rule


ROWS = [
    {"ticker": "F", "model": "mlp", "a_test": 0.3656, "a_adv": 0.0722, "capital": 24055.4, "size": 0.4, "cost": 0.5,
     "n": 1000},
    {"ticker": "F", "model": "mlp", "a_rand": 0.3312},
    {"ticker": "F", "model": "lstm", "a_test": 0.364, "a_rand": 0.3726, "a_adv": 0.2176, "capital": 10340.0,
     "size": 0.05, "cost": None, "n": 1000},
]

MATRIX = {"linear": {"linear": {"fooled": 19, "eligible": 200, "fool_rate": 0.095, "size_mean": 1.0},
                     "lstm": {"fooled": 62, "eligible": 199, "fool_rate": 62 / 199, "size_mean": 0.9}},
          "mlp": {"lstm": {"fooled": 80, "eligible": 199, "fool_rate": 80 / 199, "size_mean": 0.8}}}


def test_table_32_merge_and_formats(tmp_path):
    rows = merge_rows(ROWS)
    assert len(rows) == 2
    mlp = next(r for r in rows if r["model"] == "mlp")
    assert mlp["a_rand"] == 0.3312 and mlp["a_adv"] == 0.0722  # merged from two partial rows
    cells = _md_cells(table_32_markdown(rows))
    assert cells[0] == ["F", "mlp", "36.56", "33.12", "7.22", "24,055", "0.4", "0.50", "1000"]
    assert cells[1][6] == "< 0.1" and cells[1][7] == "-"  # small size and missing cost
    paths = write_table_32(tmp_path, rows)
    assert [p.name for p in paths] == ["table_3_2.md", "table_3_2.csv", "table_3_2.json"]
    got = list(csv.DictReader((tmp_path / "table_3_2.csv").open()))
    assert float(got[0]["a_adv"]) == 0.0722 and got[1]["cost"] == ""
    assert json.loads((tmp_path / "table_3_2.json").read_text())[1]["capital"] == 10340.0
    with pytest.raises(ValueError, match="ticker/model"):
        merge_rows([{"model": "x"}])


def test_table_33_layout(tmp_path):
    md = table_33_markdown(MATRIX)
    head = md.splitlines()[0]
    assert "U_linear Fooled" in head and "U_mlp Size" in head
    cells = {r[0]: r for r in _md_cells(md)}
    assert cells["linear"][1] == "9.50% (19/200)" and cells["linear"][3] == "-"  # mlp pattern not run on linear
    assert cells["lstm"][3] == f"{100 * 80 / 199:.2f}% (80/199)" and cells["lstm"][4] == "0.80%"
    write_table_33(tmp_path, MATRIX)
    rows = list(csv.DictReader((tmp_path / "table_3_3.csv").open()))
    assert len(rows) == 3 and {r["surrogate"] for r in rows} == {"linear", "mlp"}
    assert json.loads((tmp_path / "table_3_3.json").read_text()) == MATRIX


def test_figures_are_pngs(tmp_path):
    rng = np.random.default_rng(0)
    W, L = 30, 5
    sizes = rng.integers(100, 1000, (W, 2, L))
    orders = np.zeros((W, 2, L), np.int64)
    orders[3, 1, L - 1] = 2
    delta = np.zeros_like(orders)
    delta[3:, 1, L - 1] = 2
    made = [
        figs.fig_swa_series(9 + np.cumsum(rng.normal(0, 0.01, 500)), 0.1, 100, 60, 10, tmp_path / "a.png"),
        figs.fig_attack_heatmaps(sizes, orders, delta, 0.1, tmp_path / "b.png", title="x"),
        figs.fig_universal_patterns({"no penalty": orders, "penalty": orders // 2}, 0.1, tmp_path / "c.png"),
        figs.fig_capital_curves([1e3, 1e4, 1e5], {"mlp": [0.3, 0.2, 0.05]}, tmp_path / "d.png", {"mlp": 0.36}),
    ]
    for p in made:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 1000
    # bids deepest..best then asks best..deepest: the ask far level is the last column
    img = figs.book_image(orders)
    assert img.shape == (W, 2 * L) and img[3, -1] == 2 and img.sum() == 2


def test_build_report_from_runs(tmp_path):
    a, b = tmp_path / "cap", tmp_path / "uni"
    write_json(a / "metrics.json", {"report": {"table_3_2": ROWS[:1], "curves": [
        {"title": "t", "budgets": [1e3, 1e5], "accuracy": {"mlp": [0.3, 0.07]}, "clean": {"mlp": 0.36}}]}})
    write_json(b / "metrics.json",
               {"report": {"table_3_2": ROWS[1:2], "table_3_3": [{"title": "u", "matrix": MATRIX}]}})
    np.savez(b / "fig_3_2.npz", pattern_a=np.ones((4, 2, 3), np.int64), dt=0.1)
    made = {p.name for p in build_report([a, b], tmp_path / "rep")}
    assert {"table_3_2.md", "table_3_3.md", "capital_curve_0.png", "report.md", "uni_fig_3_2_universal.png"} <= made
    rep = collect([a, b])
    assert rep["table_3_2"][0]["a_rand"] == 0.3312 and rep["table_3_2"][0]["a_adv"] == 0.0722
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| 1,000 | 30.00 |" in text and "| 100,000 | 7.00 |" in text
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        collect([tmp_path / "nothing"])
    write_json(tmp_path / "model" / "metrics.json", {"accuracy": 0.4})
    with pytest.raises(ValueError, match="no 'report' entry"):
        collect([tmp_path / "model"])
