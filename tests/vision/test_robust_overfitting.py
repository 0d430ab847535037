"""Robust overfitting: the curve summary (best / final / validation-selected) on hand-made curves, and a tiny run on
digits that writes every file and keeps the validation-selected weights."""

from __future__ import annotations

import pytest
import torch

from data_loaders.rundir import load_weights, read_json
from vision.robust_overfitting import RobustOverfittingConfig, preset_config, run_robust_overfitting, summarise_curve


def _row(epoch, test, val, clean=0.1):
    return {"epoch": epoch, "test_robust_err": test, "val_robust_err": val, "test_clean_err": clean}


def test_summary_picks_best_final_and_validation_epochs():
    rows = [_row(1, 0.6, 0.62), _row(2, 0.45, 0.50), _row(3, 0.40, 0.47), _row(4, 0.48, 0.46), _row(5, 0.55, 0.58)]
    s = summarise_curve(rows)
    assert (s["best_test_epoch"], s["final_epoch"], s["val_selected_epoch"]) == (3, 5, 4)
    assert s["final_minus_best"] == pytest.approx(0.15)
    assert s["val_selected_minus_best"] == pytest.approx(0.08)
    tie = summarise_curve([_row(1, 0.5, 0.4), _row(2, 0.5, 0.4)])
    assert tie["best_test_epoch"] == 1 and tie["val_selected_epoch"] == 1  # ties: the earliest epoch
    with pytest.raises(ValueError, match="empty"):
        summarise_curve([])


def test_presets_and_bad_settings(tmp_path):
    paper = preset_config("paper")
    assert (paper.dataset, paper.model, paper.epochs, paper.val_size) == ("cifar10", "preact18", 200, 1000)
    assert paper.eps == pytest.approx(8 / 255) and paper.alpha == pytest.approx(2 / 255)
    assert preset_config("cpu", epochs=3, eps=None).epochs == 3 and preset_config("cpu").eps == 0.1
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(ValueError, match="unknown robust-overfitting settings"):
        preset_config("cpu", colour="red")
    with pytest.raises(ValueError, match="--val-size"):
        run_robust_overfitting(RobustOverfittingConfig(val_size=0), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_tiny_run_writes_the_curve_and_keeps_the_validation_selected_weights(tmp_path):
    cfg = RobustOverfittingConfig(dataset="digits", eps=0.1, epochs=3, n_train=300, val_size=100, n_test=100,
                                  n_train_eval=100, attack_steps=2, eval_steps=3, batch_size=50, device="cpu")
    m = run_robust_overfitting(cfg, tmp_path / "ro", progress=False)
    out = tmp_path / "ro"
    for f in ("config.json", "metrics.json", "curve.csv", "curve.md", "robust_overfitting.png",
              "weights-final.safetensors", "weights.safetensors"):
        assert (out / f).is_file(), f
    rows = read_json(out / "metrics.json")["curve"]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[0]["lr"] == pytest.approx(0.05) and rows[2]["lr"] < rows[0]["lr"]  # piecewise decay
    assert m["val_selected_epoch"] == min(rows, key=lambda r: (r["val_robust_err"], r["epoch"]))["epoch"]
    assert (out / "robust_overfitting.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "curve.csv").read_text().splitlines()) == 4
    final = load_weights(out / "weights-final.safetensors")
    best = load_weights(out / "weights.safetensors")
    assert final.keys() == best.keys()
    same = all(torch.equal(final[k], best[k]) for k in final)
    assert same == (m["val_selected_epoch"] == 3)
    from vision.evaluate import load_run_model

    model, _ = load_run_model(out)  # the run directory is also an evaluable run (validation-selected weights)
    assert all(torch.equal(model.state_dict()[k], best[k]) for k in best)
