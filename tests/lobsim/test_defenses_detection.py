"""The resting-size detector (issue 13): its threshold holds the target rate on the fitting snippets, its
false-positive rate is measured on clean snippets it never saw, and it flags a visible spoofing order."""

from __future__ import annotations

import numpy as np
import pytest

from lobsim.dataset import FeatureConfig, Market
from lobsim.defenses.detection import SizeAnomalyDetector, evaluate_detector
from tests.lobsim.test_dataset import make_book


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
