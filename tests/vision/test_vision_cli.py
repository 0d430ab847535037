"""The CLI round trip on digits: train -> run directory (no pickle) -> evaluate; fractions as eps; clear errors;
same seed => same numbers."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cli import main
from data_loaders.rundir import load_weights

TRAIN = ["vision", "train", "--dataset", "digits", "--defense", "fast", "--eps", "26/255", "--optimizer", "adam",
         "--lr-max", "5e-3", "--weight-decay", "0", "--epochs", "3", "--batch-size", "64", "--n-test", "200",
         "--device", "cpu", "--quiet"]


def test_train_evaluate_round_trip(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, TRAIN + ["--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "fast mnist_small, 3 epochs" in res.output
    cfg = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert cfg["eps"] == pytest.approx(26 / 255) and cfg["alpha"] == pytest.approx(1.25 * 26 / 255)
    assert cfg["guard"] is True and metrics["epochs_run"] == 3 and len(metrics["history"]) == 3
    assert metrics["input_shape"] == [1, 8, 8] and 0.8 < metrics["test_clean_acc"] <= 1
    assert metrics["test_pgd_acc"] <= metrics["test_clean_acc"]
    state = load_weights(out / "weights.safetensors")
    assert "normalize.mean" in state and (out / "weights.safetensors").read_bytes()[:1] != b"\x80"  # not pickle

    res = runner.invoke(main, ["vision", "evaluate", str(out), "--steps", "10", "--restarts", "2", "--n", "150",
                               "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    rec = json.loads((out / "eval-pgd-linf-0.102.json").read_text())
    assert rec["n"] == 150 and rec["restarts"] == 2 and rec["robust_acc"] <= rec["clean_acc"]
    # a stronger radius cannot leave more robust examples (same seed, same starts scaled)
    res = runner.invoke(main, ["vision", "evaluate", str(out), "--eps", "0.3", "--steps", "10", "--restarts", "1",
                               "--n", "150", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    strong = json.loads((out / "eval-pgd-linf-0.3.json").read_text())
    assert strong["robust_acc"] < rec["robust_acc"]
    for attack in ("fgsm", "apgd"):
        res = runner.invoke(main, ["vision", "evaluate", str(out), "--attack", attack, "--steps", "5",
                                   "--restarts", "1", "--n", "100", "--device", "cpu", "--quiet"])
        assert res.exit_code == 0, res.output
        assert f"{attack} linf eps=0.102" in res.output

    # a finished run is not clobbered
    res = runner.invoke(main, TRAIN + ["--out", str(out)])
    assert res.exit_code != 0 and "already holds a finished run" in res.output


def test_same_seed_same_numbers(tmp_path):
    runner = CliRunner()
    for name in ("a", "b"):
        res = runner.invoke(main, TRAIN + ["--epochs", "2", "--out", str(tmp_path / name)])
        assert res.exit_code == 0, res.output
    ma, mb = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("a", "b"))
    assert [h["loss"] for h in ma["history"]] == [h["loss"] for h in mb["history"]]
    assert ma["test_pgd_acc"] == mb["test_pgd_acc"]


def test_clear_errors(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["vision", "train", "--eps", "8/zero", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "cannot read '8/zero' as a radius" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["vision", "evaluate", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "not a vision run directory (no config.json)" in res.output
    res = runner.invoke(main, ["vision", "train", "--dataset", "mnist", "--root", str(tmp_path / "empty"),
                               "--out", str(tmp_path / "y"), "--quiet"])
    assert res.exit_code == 1 and "empty: none of train-images-idx3-ubyte" in res.output
    res = runner.invoke(main, ["vision", "train", "--model", "vgg", "--out", str(tmp_path / "z"), "--quiet"])
    assert res.exit_code == 1 and "unknown model 'vgg'" in res.output


def test_help_explains_options():
    runner = CliRunner()
    for cmd in ("train", "evaluate"):
        res = runner.invoke(main, ["vision", cmd, "--help"])
        assert res.exit_code == 0
        assert "--device" in res.output and "--eps" in res.output


def test_no_normalize_round_trips_through_the_weights(tmp_path):
    from vision.evaluate import load_run_model

    res = CliRunner().invoke(main, TRAIN + ["--epochs", "1", "--no-normalize", "--out", str(tmp_path / "n")])
    assert res.exit_code == 0, res.output
    model, cfg = load_run_model(tmp_path / "n")
    assert cfg["normalize"] is False
    assert float(model.normalize.mean.abs().max()) == 0.0 and float(model.normalize.std.min()) == 1.0


def test_train_without_final_check(tmp_path):
    """--n-test 0 skips the final test check and says so (it used to crash formatting None)."""
    args = [a for a in TRAIN]
    args[args.index("--n-test") + 1] = "0"
    args[args.index("--epochs") + 1] = "1"
    res = CliRunner().invoke(main, args + ["--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert "no final test check (--n-test 0)" in res.output
