"""The defense commands end to end at a tiny size (issue 13): `lob defend` + `lob report` render the defense table
with certified capital and detection, `lob certify` writes per-snippet certificates, `lob train --defense` trains
a defended model, and bad settings fail with one-line errors before any work."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from cli import main


def test_defend_run_and_report_render_the_defense_table(tmp_path: Path) -> None:
    out = tmp_path / "def"
    args = ["lob", "defend", "--synthetic", "thick", "--days", "2", "--hours", "0.1", "--model", "linear",
            "--window", "5", "--horizon", "2", "--steps", "8", "--batch", "32", "--adv-batch", "8",
            "--attack-n", "6", "--max-iter", "5", "--search-iter", "10", "--defenses", "none,fast,certified",
            "--budgets", "1e4,1e5", "--threads", "1", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    rows = m["report"]["defense_table"]
    assert [x["defense"] for x in rows] == ["none", "fast", "certified"]
    assert "vs_none" not in rows[0] and rows[1]["vs_none"]["n"] <= rows[1]["attacked"]
    for x in rows:
        assert x["certified_above_attack"] == 0
        assert x["train_seconds"] > 0 and set(x["fooled_at"]) == {"10000", "100000"}
    assert m["detection"]["clean"]["n_test"] >= 6
    csv = (out / "snippets_linear-certified.csv").read_text().splitlines()
    assert csv[0].startswith("index,day,start,label,attacked,attack_capital,certified_linear") and len(csv) == 7
    rep = CliRunner().invoke(main, ["lob", "report", str(out), "--out", str(tmp_path / "rep")])
    assert rep.exit_code == 0, rep.output
    md = (tmp_path / "rep" / "defense_table.md").read_text()
    assert "| linear | fast ($10,000) |" in md and "false-positive rate" in md
    assert "Defenses: one table per market" in (tmp_path / "rep" / "report.md").read_text()
    # certified capital of a trained run on its own test snippets, next to nothing (no attack run given)
    c = CliRunner().invoke(main, ["lob", "certify", str(out / "models" / "linear-none"), "--n", "3",
                                  "--iterations", "4", "--threads", "1"])
    assert c.exit_code == 0, c.output
    assert (out / "models" / "linear-none" / "certificate-n3-seed0.json").is_file()
    # next to an attack on the same snippets (the defend run's records play the `lob attack capital` run)
    att = tmp_path / "att"
    att.mkdir()
    (att / "records.jsonl").write_text((out / "records_linear-none.jsonl").read_text())
    c = CliRunner().invoke(main, ["lob", "certify", str(out / "models" / "linear-none"), "--n", "6", "--attack",
                                  str(att), "--out", str(tmp_path / "cert.json"), "--threads", "1"])
    assert c.exit_code == 0, c.output
    snips = json.loads((tmp_path / "cert.json").read_text())["snippets"]
    fooled = [x for x in snips if x["attack_fooled"]]
    assert fooled and all(x["certified_linear"] <= x["attack_capital"] for x in fooled)
    bad = CliRunner().invoke(main, ["lob", "defend", "--model", "lstm", "--defenses", "certified", "--out",
                                    str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "needs a Linear or MLP model" in bad.output


def test_lob_train_with_a_defense_and_its_errors(tmp_path: Path) -> None:
    out = tmp_path / "t"
    args = ["lob", "train", "--synthetic", "thick", "--days", "2", "--hours", "0.1", "--dt", "0.1", "--window", "5",
            "--horizon", "2", "--model", "linear", "--steps", "6", "--batch", "16", "--eval-n", "50",
            "--defense", "fast", "--defense-budget", "20000", "--threads", "1", "--out", str(out)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["defense"]["kind"] == "fast" and cfg["defense"]["budget"] == 20000.0
    assert json.loads((out / "train_log.json").read_text())["defense"]["defense_seconds"] > 0
    bad = CliRunner().invoke(main, args[:-4] + ["--defense-budget", "-5", "--out", str(tmp_path / "b")])
    assert bad.exit_code == 1 and "--defense-budget must be a positive dollar amount" in bad.output
    assert not (tmp_path / "b" / "config.json").exists()


def test_paired_comparison_of_minimal_capitals() -> None:
    import numpy as np

    from lobsim.defenses.experiment import paired_comparison

    plain = np.array([1.0, 2.0, np.inf, np.nan, 5.0, np.inf])  # nan: not attacked, inf: not fooled
    defended = np.array([2.0, 1.0, 3.0, 4.0, np.inf, np.inf])
    # snippets 0, 1, 2, 4 count (3 not attacked under plain, 5 fooled by neither); ratios 2, 0.5, 0, inf
    assert paired_comparison(plain, defended) == {"n": 4, "higher": 0.5, "median_ratio": 0.5}
    assert paired_comparison(plain[3:4], defended[3:4])["n"] == 0
