"""CLI round trips on the built-in digits: certified-train -> run directory -> certify (clean <= PGD <= certified
error), a two-stage cascade, a Wasserstein attack and a short Wasserstein training; the tightness study; one-line
errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from cli import main


def _ok(res):
    assert res.exit_code == 0, res.output
    return res


def test_certified_train_certify_and_cascade(tmp_path):
    r = CliRunner()
    base = ["vision", "certified-train", "--dataset", "digits", "--eps", "0.05", "--eps-start", "0.01",
            "--ramp-epochs", "1", "--epochs", "2", "--lr-step", "0", "--lr", "3e-3", "--n-test", "0",
            "--n-train", "500", "--device", "cpu", "--quiet", "--threads", "1"]
    out = tmp_path / "cert"
    _ok(r.invoke(main, base + ["--proj", "10", "--out", str(out)]))
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["proj"] == 10 and cfg["eps"] == pytest.approx(0.05) and (out / "weights.safetensors").is_file()
    res = _ok(r.invoke(main, ["vision", "certify", str(out), "--n", "50", "--pgd-steps", "10", "--pgd-restarts", "1",
                              "--device", "cpu", "--quiet", "--threads", "1"]))
    rec = json.loads((out / "certify-linf-0.05.json").read_text())["stages"][0]
    assert rec["clean_err"] <= rec["pgd_err"] <= rec["certified_err"] and rec["certified_err"] < 1.0
    assert "certified robust error" in res.output
    # a standard run from `vision train` is certified too (here: far worse than the certified-trained one)
    std = tmp_path / "std"
    _ok(r.invoke(main, ["vision", "train", "--dataset", "digits", "--epochs", "2", "--optimizer", "adam",
                        "--lr-max", "3e-3", "--n-train", "500", "--n-test", "10", "--device", "cpu", "--quiet",
                        "--out", str(std), "--threads", "1"]))
    _ok(r.invoke(main, ["vision", "certify", str(std), "--eps", "0.05", "--n", "50", "--pgd-steps", "0",
                        "--device", "cpu", "--quiet", "--threads", "1"]))
    srec = json.loads((std / "certify-linf-0.05.json").read_text())["stages"][0]
    assert srec["certified_err"] > rec["certified_err"]
    # cascade of two stages: stage 2 trains only on what stage 1 cannot certify
    cas = tmp_path / "cascade"
    _ok(r.invoke(main, base + ["--epochs", "1", "--proj", "10", "--cascade", "2", "--n-train", "200",
                               "--out", str(cas)]))
    meta = json.loads((cas / "metrics.json").read_text())["cascade"]
    assert meta[1]["n_train"] == meta[0]["n_train"] - meta[0]["train_certified"]
    _ok(r.invoke(main, ["vision", "certify", str(cas), "--n", "40", "--pgd-steps", "0", "--device", "cpu",
                        "--quiet", "--threads", "1"]))
    crec = json.loads((cas / "certify-linf-0.05.json").read_text())
    prefixes = crec["cascade"]["prefixes"]
    assert prefixes[0]["robust_err"] == pytest.approx(crec["stages"][0]["certified_err"])
    assert prefixes[1]["robust_err"] <= prefixes[0]["robust_err"]


def test_wasserstein_attack_and_training_commands(tmp_path):
    r = CliRunner()
    run = tmp_path / "wat"
    _ok(r.invoke(main, ["vision", "wasserstein", "train", "--dataset", "digits", "--n-train", "128", "--epochs", "1",
                        "--batch-size", "64", "--attack-steps", "3", "--sinkhorn-iters", "10", "--device", "cpu",
                        "--quiet", "--out", str(run), "--threads", "1"]))
    res = _ok(r.invoke(main, ["vision", "wasserstein", "attack", str(run), "--n", "20", "--steps", "12",
                              "--eps-every", "3", "--eps", "0.1", "--eps-factor", "1.5", "--sinkhorn-iters", "15",
                              "--device", "cpu", "--quiet", "--threads", "1"]))
    rec = json.loads((run / "wasserstein-k5-lam1000.json").read_text())
    succ = [row["success"] for row in rec["curve"]]
    assert succ == sorted(succ) and rec["n"] == 20 and "success within" in res.output
    assert (run / "wasserstein-k5-lam1000.png").read_bytes()[:4] == b"\x89PNG"


def test_tightness_study_and_errors(tmp_path):
    r = CliRunner()
    out = tmp_path / "tight"
    res = _ok(r.invoke(main, ["vision", "certify-study", "tightness", "--set", "n_examples=1",
                              "--set", "alpha_steps=40", "--set", "grid=101", "--set", "train_iters=80",
                              "--out", str(out), "--quiet", "--threads", "1"]))
    m = json.loads((out / "metrics.json").read_text())
    for rec in m["margins"]:
        assert rec["dual_fixed"] <= rec["lp_same_bounds"] + 1e-7 <= rec["lp_tightened"] + 2e-7
        assert rec["lp_tightened"] <= rec["true_min_grid"] + 1e-7
    fig = m["fig34"]
    for k in range(2):
        assert fig["interval"][k][0] <= fig["dual"][k][0] <= fig["grid_range"][k][0]
        assert fig["grid_range"][k][1] <= fig["dual"][k][1] <= fig["interval"][k][1]
    assert "LP (same layer bounds)" in res.output
    bad = r.invoke(main, ["vision", "certify", str(tmp_path)])
    assert bad.exit_code == 1 and "config.json" in bad.output and "Traceback" not in bad.output
    bad = r.invoke(main, ["vision", "certify-study", "toy", "--set", "oops", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "KEY=VALUE" in bad.output
    bad = r.invoke(main, ["vision", "certified-train", "--dataset", "digits", "--model", "nope", "--out",
                          str(tmp_path / "y"), "--quiet"])
    assert bad.exit_code == 1 and "unknown model" in bad.output


def test_toy_points_separation_rules():
    from vision.certify.studies import toy_points

    for norm, sep in (("linf", 0.16), ("l1", 0.32)):
        x, _ = toy_points(12, sep, seed=1, norm=norm)
        d = (x[:, None] - x[None]).abs()
        d = d.amax(-1) if norm == "linf" else d.sum(-1)
        assert float((d + 10 * torch.eye(12)).min()) >= sep
    # the l1 rule is not the l_inf rule at the same distance: some pair is closer than 0.32 along both axes
    linf = (x[:, None] - x[None]).abs().amax(-1) + 10 * torch.eye(12)
    assert float(linf.min()) < 0.32
    with pytest.raises(ValueError, match="norm"):
        toy_points(4, 0.1, norm="l2")


@pytest.mark.slow
def test_toy_study_reaches_zero_certified_robust_error(tmp_path):
    """C8: with the thesis' point rule (l1 > 4 eps) the robust loss certifies all 12 points at eps = 0.08."""
    out = tmp_path / "toy"
    _ok(CliRunner().invoke(main, ["vision", "certify-study", "toy", "--seed", "0", "--set", "iters=1000",
                                  "--out", str(out), "--quiet", "--threads", "1"]))
    m = json.loads((out / "metrics.json").read_text())
    assert m["certified_err"] == 0.0 and m["pgd_err"] == 0.0 and m["min_margin"] > 0
