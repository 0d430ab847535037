"""Reports that explain themselves (issue 19): definitions in words, no one-point curve, transfer tables, the
verdict against the best constant answer, level numbers on heat-maps, legends for the clean-accuracy lines,
one folder for every table, incomplete runs refused."""

from __future__ import annotations

import numpy as np
import pytest

from data_loaders.rundir import write_json
from lobsim.report import collect, constant_verdict, write_report
from lobsim.report import figures as figs

ROW = {"ticker": "F", "model": "mlp", "a_test": 0.4, "a_rand": 0.38, "a_adv": 0.1, "capital": 1e4, "size": 0.5,
       "cost": -1.5, "n": 10}
MATRIX = {"mlp": {"mlp": {"fooled": 3, "eligible": 4, "fool_rate": 0.75, "size_mean": 0.2},
                  "lstm": {"fooled": 1, "eligible": 5, "fool_rate": 0.2, "size_mean": 0.3}}}


@pytest.fixture
def captured(monkeypatch):
    """The matplotlib figures the report functions draw (instead of only their PNG bytes)."""
    got = []
    real = figs._save

    def keep(fig, path):
        got.append(fig)
        return real(fig, path)

    monkeypatch.setattr(figs, "_save", keep)
    return got


def test_level_ticks_name_every_level():
    assert figs.level_ticks(3) == ([0, 1, 2, 3, 4, 5], ["b3", "b2", "b1", "a1", "a2", "a3"])
    pos, lab = figs.level_ticks(10)
    assert lab[:2] == ["b10", "b9"] and lab[9:11] == ["b1", "a1"] and lab[-1] == "a10" and pos == list(range(20))
    pos, lab = figs.level_ticks(50)  # every 5th level, always the best one
    assert "b1" in lab and "a1" in lab and len(lab) == 20 and pos[lab.index("b1")] == 49 and pos[lab.index("a1")] == 50


def test_heatmap_axes_show_level_numbers(tmp_path, captured):
    W, L = 6, 4
    figs.fig_attack_heatmaps(np.ones((W, 2, L)), np.zeros((W, 2, L)), np.zeros((W, 2, L)), 0.1, tmp_path / "h.png")
    labels = [t.get_text() for t in captured[0].axes[0].get_xticklabels()]
    assert labels == ["b4", "b3", "b2", "b1", "a1", "a2", "a3", "a4"]
    assert "book level" in captured[0].axes[0].get_xlabel()


def test_curve_legend_names_the_dashed_clean_lines_and_one_budget_is_no_curve(tmp_path, captured):
    figs.fig_capital_curves([1e3, 1e5], {"mlp": [0.3, 0.1]}, tmp_path / "c.png", {"mlp": 0.4})
    labels = captured[0].axes[0].get_legend_handles_labels()[1]
    assert labels == ["mlp under attack", "mlp clean (no attack)", "chance"]
    with pytest.raises(ValueError, match="two budgets"):
        figs.fig_capital_curves([1e5], {"mlp": [0.1]}, tmp_path / "one.png", {"mlp": 0.4})


def _ev(acc, fractions, stderr=0.01, n=1000):
    return {"accuracy": acc, "stderr": stderr, "n": n, "test_class_fractions": fractions}


def test_constant_verdicts():
    # best constant: 'flat' at 50%. 60% +- 1% is clearly better; 45% is not better; 51% +- 1% is within 2 SE.
    assert "better than the best constant answer" in constant_verdict("a", _ev(0.60, [0.2, 0.5, 0.3]))
    assert "'flat' scores 50.00%" in constant_verdict("a", _ev(0.60, [0.2, 0.5, 0.3]))
    assert "**not better than the best constant answer**" in constant_verdict("b", _ev(0.45, [0.2, 0.5, 0.3]))
    assert "**not clearly better**" in constant_verdict("c", _ev(0.51, [0.2, 0.5, 0.3]))
    # the paired block-bootstrap comparison of lobsim.stats wins over the binomial error when stored
    paired = dict(_ev(0.56, [0.2, 0.5, 0.3]), best_constant={"class": 1, "accuracy": 0.5},
                  vs_best_constant={"diff": 0.06, "se": 0.04})
    assert "**not clearly better**" in constant_verdict("d", paired) and "paired" in constant_verdict("d", paired)


def test_report_defines_its_terms_and_keeps_every_table_in_one_folder(tmp_path):
    rep = {"table_3_2": [ROW],
           "table_3_3": [{"title": "main", "matrix": MATRIX}, {"title": "ablation", "matrix": MATRIX}],
           "curves": [{"title": "one budget", "budgets": [1e5], "accuracy": {"mlp": [0.1]}, "clean": {"mlp": 0.4}}],
           "transfer": [{"title": "t", "matrix": {"mlp": {"lstm": {"accuracy": 0.25, "clean_accuracy": 0.5}}}}],
           "baselines": {"mlp": _ev(0.45, [0.2, 0.5, 0.3])}}
    made = {p.name for p in write_report(tmp_path, rep)}
    assert {"table_3_3.md", "table_3_3_2.md", "table_3_3_2.csv"} <= made
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # no table_3_3_1/ folder
    assert not list(tmp_path.glob("capital_curve_*.png"))  # one budget: no one-point "curve"
    text = (tmp_path / "report.md").read_text()
    for words in ("One budget only", "positive = the attacker lost money", "fooled / eligible",
                  "whose true class is not the target", "**down** / **flat** / **up**", "not better than the best",
                  "| mlp | 25.00 (clean 50.00) |", "75.00% (3/4)"):
        assert words in text, words


def test_incomplete_runs_are_refused(tmp_path):
    write_json(tmp_path / "run" / "metrics.json", {"report": {"table_3_2": [ROW]}})
    (tmp_path / "run" / "INCOMPLETE").write_text("x")
    with pytest.raises(ValueError, match="INCOMPLETE"):
        collect([tmp_path / "run"])
    (tmp_path / "run" / "INCOMPLETE").unlink()
    assert collect([tmp_path / "run"])["table_3_2"][0]["a_adv"] == 0.1
