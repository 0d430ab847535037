"""Universal targeted attack: fool-rate bookkeeping on a hand example, deployment equals the exact engine,
optimisation moves a planted model into the target class, the size penalty shrinks the pattern."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobsim.attacks.capital import evaluate_orders
from lobsim.attacks.universal import UniversalAttack, evaluate_universal, fool_counts, transfer_matrix
from lobsim.metrics import relative_size
from lobsim.propagation import propagate, universal_orders
from tests.lobsim.test_capital_attack import TinyModel, label_batch, random_batch


class TrendModel:
    """Predicts up when SWA rose by more than theta over the last quarter of the window, down when it fell."""

    def __init__(self, theta: float) -> None:
        self.theta = theta

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        q = s.shape[1] // 4
        d = (s[:, -1] - s[:, -q:].mean(dim=1)) / self.theta
        return torch.stack([-d - 1.0, torch.zeros_like(d), d - 1.0], dim=1)


def test_fool_counts_hand_example():
    labels = np.array([0, 0, 1, 2, 2, 1, 2, 0])
    clean = np.array([0, 1, 1, 2, 2, 1, 0, 0])  # correct: 0, 2, 3, 4, 5, 7
    adv = np.array([2, 2, 2, 2, 1, 1, 2, 0])
    # target 2: eligible = correct and label != 2 -> indices 0, 2, 5, 7; moved into 2: 0 and 2.
    assert fool_counts(clean, adv, labels, 2) == (2, 4)
    # target 0: eligible = 2, 3, 4, 5; none moved into 0.
    assert fool_counts(clean, adv, labels, 0) == (0, 4)
    # target 1: eligible = 0, 3, 4, 7; moved into 1: index 4.
    assert fool_counts(clean, adv, labels, 1) == (1, 4)


def test_evaluate_universal_equals_exact_engine():
    batch = random_batch(B=12, W=16, L=4, seed=7)
    model = TinyModel(16, "mlp", seed=2)
    label_batch(batch, model, wrong_every=4)
    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 3, size=(16, 2, 4)) * (rng.random((16, 2, 4)) < 0.3)
    res = evaluate_universal(pattern, model, batch, target=1)
    orders = universal_orders(pattern, batch)
    prop = propagate(orders, batch)
    clean, _ = evaluate_orders(model, batch, None)
    adv, delta = evaluate_orders(model, batch, orders)
    assert np.array_equal(delta, prop.delta)
    eligible = (clean == batch.labels) & (batch.labels != 1)
    assert res["eligible"] == eligible.sum()
    assert res["fooled"] == (eligible & (adv == 1)).sum()
    assert res["size_mean"] == pytest.approx(relative_size(prop.delta, batch.sizes, batch.mask)[eligible].mean())
    with pytest.raises(ValueError, match="non-negative integers"):
        evaluate_universal(pattern - 1, model, batch, target=1)
    with pytest.raises(ValueError, match="does not fit"):
        evaluate_universal(pattern[:3], model, batch, target=1)


def test_fit_moves_planted_model_and_penalty_shrinks_pattern():
    W, L = 24, 4
    train = [random_batch(B=16, W=W, L=L, seed=s, exec_rate=0.1, move_prob=0) for s in (10, 11)]
    test = random_batch(B=32, W=W, L=L, seed=12, exec_rate=0.1, move_prob=0)
    model = TrendModel(theta=0.001)
    label_batch(test, model, wrong_every=0)
    plain = UniversalAttack(target=2, gamma=0.0, steps=80, lr=10.0).fit(model, train, seed=0)
    small = UniversalAttack(target=2, gamma=2.0, steps=80, lr=10.0).fit(model, train, seed=0)
    assert plain.pattern.dtype == np.int64 and plain.pattern.min() >= 0 and plain.pattern.sum() > 0
    assert np.array_equal(plain.pattern, np.floor(plain.continuous + 0.5).astype(np.int64))
    r0 = evaluate_universal(plain.pattern, model, test, target=2)
    r1 = evaluate_universal(small.pattern, model, test, target=2)
    assert r0["eligible"] > 5
    assert r0["fool_rate"] > 0.8  # the pattern pushes the planted model up on unseen books
    assert r1["fool_rate"] > 0.3
    assert r1["size_mean"] < 0.1 * r0["size_mean"]  # the penalty makes the pattern far smaller on the book
    # With the penalty the shares sit where they move SWA[last] most: deep ask levels at the last steps.
    assert small.pattern[-2:, 1, -2:].sum() > 0.7 * small.pattern.sum()
    # Raising the SWA at the end needs ask-side size: the pattern's last quarter is mostly asks.
    q = W // 4
    assert plain.pattern[-q:, 1].sum() > plain.pattern[-q:, 0].sum()
    assert plain.history["ce"][-1] < plain.history["ce"][0]
    m = transfer_matrix({"a": plain.pattern, "b": small.pattern}, {"trend": model}, test, target=2)
    assert m["a"]["trend"] == r0 and m["b"]["trend"] == r1


def test_bad_settings():
    with pytest.raises(ValueError, match="target"):
        UniversalAttack(target=3)
    with pytest.raises(ValueError, match="gamma"):
        UniversalAttack(gamma=-1)
    with pytest.raises(ValueError, match="no training batches"):
        UniversalAttack().fit(TrendModel(0.01), [])
