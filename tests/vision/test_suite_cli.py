"""The issue-15 commands on digits: ``evaluate --suite standard``, the l1 default attack, ``robust-overfitting``
and ``fast-ablation`` (clear errors included)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite") / "run"
    res = CliRunner().invoke(main, ["vision", "train", "--dataset", "digits", "--defense", "standard", "--eps", "0.1",
                                    "--optimizer", "adam", "--lr-max", "5e-3", "--epochs", "3", "--batch-size", "64",
                                    "--n-test", "50", "--device", "cpu", "--quiet", "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def test_evaluate_suite_writes_worst_case_members_and_flags(run):
    res = CliRunner().invoke(main, ["vision", "evaluate", str(run), "--suite", "standard", "--eps", "0.05",
                                    "--steps", "5", "--queries", "40", "--n", "60", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "worst case robust" in res.output and "apgd-t" in res.output
    rec = json.loads((run / "eval-suite-standard-linf-0.05.json").read_text())
    assert [m["name"] for m in rec["members"]] == ["apgd-ce", "apgd-t", "square"]
    assert rec["robust_acc"] <= min(m["robust_acc_after"] for m in rec["members"]) <= rec["clean_acc"]
    assert len(rec["per_image"]["robust"]) == 60 and set(rec["flags"]) == {"gradient_free_beats_gradient",
                                                                           "more_steps_weaker"}
    bad = CliRunner().invoke(main, ["vision", "evaluate", str(run), "--suite", "standard", "--attack", "pgd"])
    assert bad.exit_code != 0 and "leave out --attack" in bad.output


def test_l1_evaluation_defaults_to_apgd(run):
    res = CliRunner().invoke(main, ["vision", "evaluate", str(run), "--norm", "l1", "--eps", "1", "--steps", "10",
                                    "--n", "40", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    rec = json.loads((run / "eval-apgd-l1-1.json").read_text())
    assert rec["attack"] == "apgd" and rec["restarts"] == 1 and "norm='l1'" in rec["attack_repr"]


def test_robust_overfitting_and_fast_ablation_commands(tmp_path):
    r = CliRunner()
    res = r.invoke(main, ["vision", "robust-overfitting", "--dataset", "digits", "--epochs", "2", "--n-train", "200",
                          "--val-size", "60", "--n-test", "60", "--eval-steps", "2", "--attack-steps", "2",
                          "--device", "cpu", "--quiet", "--out", str(tmp_path / "ro")])
    assert res.exit_code == 0, res.output
    assert "validation-selected" in res.output and (tmp_path / "ro" / "robust_overfitting.png").is_file()
    res = r.invoke(main, ["vision", "robust-overfitting", "--preset", "huge", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "huge" in res.output
    res = r.invoke(main, ["vision", "fast-ablation", "--seeds", "a,b", "--out", str(tmp_path / "abl")])
    assert res.exit_code == 2 and "comma-separated integers" in res.output
    res = r.invoke(main, ["vision", "fast-ablation", "--rows", "nope", "--out", str(tmp_path / "abl2")])
    assert res.exit_code == 1 and "unknown ablation row" in res.output and "Traceback" not in res.output
