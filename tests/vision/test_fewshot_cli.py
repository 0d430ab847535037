"""The few-shot CLI on a tiny generated Omniglot-layout folder: train (every head and training mode runs),
evaluate, the study table, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cli import main


@pytest.fixture(scope="module")
def omniglot(tmp_path_factory):
    """4 base and 3 novel 'characters' of 5 images each: a distinct random stroke pattern per character."""
    root = tmp_path_factory.mktemp("omniglot")
    rng = np.random.default_rng(0)
    for sub, n in (("images_background", 4), ("images_evaluation", 3)):
        for c in range(n):
            pattern = rng.random((28, 28)) < 0.2
            for j in range(5):
                noisy = pattern ^ (rng.random((28, 28)) < 0.03)
                img = np.where(noisy, 0, 255).astype(np.uint8)
                path = root / sub / "Alpha" / f"character{c:02d}" / f"{j}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(img, "L").save(path)
    return root


TINY = ["--dataset", "omniglot", "--way", "3", "--shot", "1", "--query", "2", "--episodes-per-batch", "2",
        "--batches", "2", "--epochs", "1", "--width", "8", "--eps", "0.1", "--attack-steps", "2", "--maml-steps",
        "2", "--device", "cpu", "--quiet", "--threads", "1"]


@pytest.mark.parametrize("head,training", [("svm", "aq"), ("maml", "trades"), ("proto", "natural")])
def test_train_then_evaluate(tmp_path, omniglot, head, training):
    runner = CliRunner()
    out = tmp_path / "run"
    res = runner.invoke(main, ["vision", "fewshot", "train", "--root", str(omniglot), "--head", head, "--training",
                               training, "--out", str(out), *TINY])
    assert res.exit_code == 0, res.output
    assert f"{training} {head} on omniglot" in res.output
    assert (out / "weights.safetensors").is_file() and json.loads((out / "metrics.json").read_text())["epochs_run"] == 1
    res = runner.invoke(main, ["vision", "fewshot", "evaluate", str(out), "--shots", "1,2", "--query", "2",
                               "--episodes", "3", "--batch", "2", "--steps", "3", "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    recs = [json.loads(p.read_text()) for p in sorted(out.glob("eval-novel-3w*s-*.json"))]
    assert [r["shot"] for r in recs] == [1, 2]
    for r in recs:
        assert r["episodes"] == 3 and 0 <= r["pgd_acc"] <= r["clean_acc"] <= 1 and 0 <= r["mifgsm_acc"] <= 1
    # eps 0: the attacks cannot change anything, robust == clean
    res = runner.invoke(main, ["vision", "fewshot", "evaluate", str(out), "--shots", "1", "--query", "2",
                               "--episodes", "3", "--batch", "3", "--steps", "2", "--eps", "0", "--device", "cpu",
                               "--quiet"])
    assert res.exit_code == 0, res.output
    rec = json.loads(next(out.glob("eval-novel-3w1s-eps0-*.json")).read_text())
    assert rec["pgd_acc"] == rec["clean_acc"] == rec["mifgsm_acc"]


def test_study_table(tmp_path, omniglot):
    runner = CliRunner()
    out = tmp_path / "study"
    args = ["vision", "fewshot", "table", "--dataset", "omniglot", "--root", str(omniglot), "--heads", "ridge,maml",
            "--trades", "3", "--way", "3", "--train-shot", "1", "--train-query", "2", "--episodes-per-batch", "2",
            "--batches", "2", "--epochs", "1", "--width", "8", "--eps", "0.1", "--attack-steps", "2", "--shots",
            "1", "--query", "2", "--episodes", "2", "--steps", "2", "--device", "cpu", "--quiet", "--threads", "1",
            "--out", str(out)]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = json.loads((out / "fewshot_table.json").read_text())
    assert {r["run"] for r in rows} == {"natural-ridge", "aq-ridge", "natural-maml", "aq-maml", "trades3-ridge"}
    assert (out / "fewshot_table.png").read_bytes()[:4] == b"\x89PNG"
    claims = json.loads((out / "claims.json").read_text())
    assert claims[0]["target"] == "Q1" and "holds" in claims[0]
    assert "MI-FGSM" in (out / "fewshot_table.md").read_text()
    res = runner.invoke(main, args)
    assert res.exit_code == 1 and "already holds a finished study" in res.output


def test_one_line_errors(tmp_path, omniglot):
    runner = CliRunner()
    res = runner.invoke(main, ["vision", "fewshot", "train", "--dataset", "cifar-fs", "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "needs --root" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["vision", "fewshot", "train", "--root", str(omniglot), "--training", "aq",
                               "--out", str(tmp_path / "y"), *TINY, "--attack-steps", "0"])
    assert res.exit_code == 1 and "needs --eps > 0 and --attack-steps > 0" in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(main, ["vision", "fewshot", "evaluate", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "not a few-shot run directory" in res.output
    res = runner.invoke(main, ["vision", "fewshot", "table", "--heads", "knn", "--out", str(tmp_path / "z")])
    assert res.exit_code == 1 and "unknown or no heads" in res.output
