"""The resting-size detector (issue 13): its threshold holds the target rate on the fitting snippets, its
false-positive rate is measured on clean snippets it never saw, it flags a visible spoofing order, and the
`lob defend` run and `lob report` put the defense table, certified capital and detection together."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lobsim.dataset import FeatureConfig, Market
from lobsim.defenses.detection import SizeAnomalyDetector, evaluate_detector
from tests.lobsim.test_dataset import make_book


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def market() -> Market:
    books = [make_book(3000, seed=40 + i, date=f"2020-01-0{i + 1}") for i in range(3)]
    return Market(books, FeatureConfig(dt=0.01, window_s=0.3, horizon_s=0.1))


def test_detector_rates_on_unseen_clean_books_and_on_spoofing(market: Market) -> None:
    fit = market.batch(*market.sample_train(200, np.random.default_rng(0)))
    det = SizeAnomalyDetector(fpr=0.05).fit([fit])
    assert np.mean(det.flag(fit)) <= 0.05  # the threshold is the 95% quantile of the fitting scores
    test = market.batch(*market.test_refs(150, seed=1))
    assert set(test.day) <= set(market.test_days) and not set(fit.day) & set(test.day)  # never seen (day split)
    res = evaluate_detector(det, test, block=market.window + market.horizon)
    assert res["fpr_test"] == pytest.approx(np.mean(det.score(test) > det.threshold))
    assert res["n_test"] == 150 and res["fpr_test_se"] >= 0
    # a spoofing order: 20 times the usual size resting at the best bid for the last 10 steps of each snippet
    delta = np.zeros(test.prices.shape, np.int64)
    delta[:, -10:, 0, 0] = 20 * int(np.median(test.sizes[:, :, 0, 0]))
    small = np.zeros_like(delta)
    small[:, -10:, 0, 0] = 1  # one share is invisible
    caps = np.where(np.arange(150) % 2 == 0, 1e3, 1e5)
    both = np.concatenate([small[:75], delta[75:]])
    res = evaluate_detector(det, test, test, both, caps)
    assert res["detected"] == pytest.approx(np.mean(det.flag(test, both)))
    assert np.mean(det.flag(test, delta)) == 1.0
    assert np.mean(det.flag(test, small)) <= res["fpr_test"] + 0.05
    with pytest.raises(ValueError, match="fit it on clean snippets first"):
        SizeAnomalyDetector().score(test)


def test_defend_run_and_report_render_the_defense_table(tmp_path: Path) -> None:
    from cli import main

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
    for x in rows:
        assert x["certified_above_attack"] == 0
        assert x["train_seconds"] > 0 and set(x["fooled_at"]) == {"10000", "100000"}
    assert m["detection"]["clean"]["n_test"] >= 6
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
    bad = CliRunner().invoke(main, ["lob", "defend", "--model", "lstm", "--defenses", "certified", "--out",
                                    str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "needs a Linear or MLP model" in bad.output
