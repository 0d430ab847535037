"""The demo pipeline end to end on a tiny config: files, tables, figures, determinism; the attack/report CLI."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from cli import main
from lobsim.attacks.records import read_jsonl
from lobsim.experiments import ExperimentConfig, preset_config, run_experiment

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "run"
    res = CliRunner().invoke(main, ["lob", "demo", "--preset", "tiny", "--out", str(out), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_demo_writes_tables_and_figures(tiny_run):
    out, output = tiny_run
    for name in ("config.json", "metrics.json", "report.md", "table_3_2.md", "table_3_2.csv", "table_3_2.json",
                 "table_3_3.md", "table_3_3.csv", "table_3_3.json", "records_mlp.jsonl", "universal_mlp.npy",
                 "models/mlp/weights.safetensors", "models/linear/model.json"):
        assert (out / name).is_file(), name
    for png in ("fig_3_1_swa.png", "fig_3_2_universal.png", "capital_curve_0.png"):
        assert (out / png).read_bytes()[:8] == PNG
    m = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader((out / "table_3_2.csv").open()))
    assert {r["model"] for r in rows} == {"linear", "mlp"}
    for r, jr in zip(rows, m["report"]["table_3_2"]):
        assert float(r["a_adv"]) == pytest.approx(jr["a_adv"])
        assert 0.0 <= float(r["a_adv"]) <= float(r["a_test"]) <= 1.0  # an attack never raises accuracy
    recs = read_jsonl(out / "records_mlp.jsonl")
    assert len(recs) == m["models"]["mlp"]["summary"]["n"]
    assert "dt = 0.1 s" in m["grid"] and "dt = 0.1 s" in output  # the coarse demo grid is stated
    assert set(m["transfer"]) == {"linear", "mlp"}
    assert m["transfer"]["mlp"]["mlp"]["accuracy"] == pytest.approx(m["models"]["mlp"]["curve"][-1])


def test_same_seed_same_numbers(tiny_run, tmp_path):
    out, _ = tiny_run
    again = run_experiment(preset_config("tiny", device="cpu"), tmp_path / "again", progress=False)
    first = json.loads((out / "metrics.json").read_text())
    assert again["report"]["table_3_2"] == first["report"]["table_3_2"]
    assert json.loads(json.dumps(again["report"]["table_3_3"])) == first["report"]["table_3_3"]


def test_attack_and_report_cli(tiny_run, tmp_path):
    out, _ = tiny_run
    r = CliRunner()
    cap = tmp_path / "cap"
    res = r.invoke(main, ["lob", "attack", "capital", "--model", str(out / "models" / "mlp"), "--victims",
                          str(out / "models" / "linear"), "--n", "6", "--budgets", "1e4,1e6", "--max-iter", "15",
                          "--step-shares", "3", "--out", str(cap), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "transfer to linear" in res.output
    rnd = tmp_path / "rnd"
    res = r.invoke(main, ["lob", "attack", "random", "--model", str(out / "models" / "mlp"), "--n", "6",
                          "--out", str(rnd), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    row = json.loads((rnd / "metrics.json").read_text())["report"]["table_3_2"][0]
    assert 0 <= row["a_rand"] <= 1 and row["n"] == 6
    uni = tmp_path / "uni"
    res = r.invoke(main, ["lob", "attack", "universal", "--model", str(out / "models" / "mlp"), "--victims",
                          str(out / "models" / "linear"), "--n", "6", "--steps", "3", "--train-n", "8",
                          "--target", "up", "--out", str(uni), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    rep = tmp_path / "rep"
    res = r.invoke(main, ["lob", "report", str(cap), str(rnd), str(uni), "--out", str(rep)])
    assert res.exit_code == 0, res.output
    assert (rep / "table_3_2.md").is_file() and (rep / "table_3_3.md").is_file()
    assert (rep / "capital_curve_0.png").read_bytes()[:8] == PNG
    res = r.invoke(main, ["lob", "report", str(tmp_path), "--out", str(rep)])
    assert res.exit_code != 0 and "metrics.json" in res.output
    res = r.invoke(main, ["lob", "attack", "universal", "--model", str(out / "models" / "mlp"), "--target", "sideways",
                          "--out", str(tmp_path / "x")])
    assert res.exit_code != 0


def test_config_errors():
    with pytest.raises(ValueError, match="either synthetic"):
        ExperimentConfig(synthetic=None)
    with pytest.raises(ValueError, match="surrogate"):
        ExperimentConfig(models=["linear"], surrogates=["mlp"])
    with pytest.raises(ValueError, match="unknown experiment preset"):
        preset_config("huge")
    cfg = preset_config("tiny", data=["day.csv"])  # real data replace the synthetic market
    assert cfg.synthetic is None and cfg.data == ["day.csv"]
