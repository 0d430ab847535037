"""Capital, cost (mark-to-market) and relative size against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobsim.grid import EMPTY_ASK, level_mask
from lobsim.metrics import capital, cost, mark_prices, relative_size
from lobsim.propagation import propagate
from tests.lobsim.test_propagation import batch_from, make_batch, random_orders

D = 10_000  # LOBSTER price units per dollar


def book(W=4):
    """Bids $100.00, $99.99; asks $100.02, $100.03 until the last step, where the book moves up by $0.50."""
    prices = np.tile(np.array([[100_0000, 99_9900], [100_0200, 100_0300]]), (W, 1, 1))
    prices[-1] += 5000
    sizes = np.tile(np.array([[10, 30], [20, 40]]), (W, 1, 1))
    return prices, sizes


def test_capital_hand():
    prices, sizes = book()
    bt = batch_from(prices, sizes, [], 4)
    a = np.zeros((1, 4, 2, 2), np.int64)
    a[0, 0, 0, 0] = 3  # 3 x $100.00
    a[0, 2, 0, 1] = 2  # 2 x $99.99
    a[0, 3, 1, 1] = 1  # 1 x $100.53
    assert capital(a, bt.prices)[0] == pytest.approx(300 + 199.98 + 100.53, abs=1e-9)
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    c = capital(at, bt.prices)
    assert c.item() == pytest.approx(600.51, abs=1e-9)
    c.sum().backward()
    np.testing.assert_allclose(at.grad.numpy(), bt.prices / D)


def test_capital_errors():
    prices, _ = book()
    prices[1, 1, 1] = EMPTY_ASK
    a = np.zeros((1, 4, 2, 2), np.int64)
    a[0, 1, 1, 1] = 1
    with pytest.raises(ValueError, match="snippet 0, step 1, side 1, level 1"):
        capital(a, prices[None])
    with pytest.raises(ValueError, match="non-negative"):
        capital(-np.ones((1, 4, 2, 2), np.int64), book()[0][None])
    # torch orders at an empty level are ignored, not priced at the dummy
    assert capital(torch.tensor(a, dtype=torch.float64), prices[None]).item() == 0


@pytest.mark.parametrize("fill_model", ["touch", "queue"])
def test_cost_hand(fill_model):
    """Buy 5 at $100.00 (filled at step 1), sell 4 at $100.02 (filled at step 2); the end mid is $100.51."""
    prices, sizes = book()
    execs = [(1, 0, 100_0000, 100, False), (2, 1, 100_0200, 100, False)]
    bt = batch_from(prices, sizes, execs, 4)
    a = np.zeros((1, 4, 2, 2), np.int64)
    a[0, 0, 0, 0] = 5
    a[0, 0, 1, 0] = 4
    a[0, 1, 1, 1] = 7  # ask $100.03: never filled, cancelled at the end for free
    prop = propagate(a, bt, fill_model=fill_model)
    assert prop.fills.shares.tolist() == [5, 4]
    cash = -5 * 100.00 + 4 * 100.02
    mid = (100.50 + 100.52) / 2
    assert mark_prices(bt)[0] == pytest.approx(mid)
    assert cost(a, bt, prop)[0] == pytest.approx(-(cash + 1 * mid), abs=1e-9)
    swa = (100.50 * 10 + 100.49 * 30 + 100.52 * 20 + 100.53 * 40) / 100
    assert mark_prices(bt, "swa")[0] == pytest.approx(swa)
    assert cost(a, bt, prop, mark="swa")[0] == pytest.approx(-(cash + swa), abs=1e-9)


def test_cost_short_sale_and_no_fill():
    prices, sizes = book()
    bt = batch_from(prices, sizes, [(3, 1, 100_0300, 1, True)], 4)
    a = np.zeros((1, 4, 2, 2), np.int64)
    a[0, 0, 1, 1] = 10  # sell 10 at $100.03, filled at step 3 (hidden execution); the end mid is $100.51
    prop = propagate(a, bt)
    assert cost(a, bt, prop)[0] == pytest.approx(-(10 * 100.03 - 10 * 100.51), abs=1e-9)  # lost $4.80
    prop = propagate(a, bt, include_hidden=False)
    assert cost(a, bt, prop)[0] == 0.0


def test_mid_falls_back_to_last_two_sided_snapshot():
    prices, sizes = book()
    prices[-1, 1, :] = EMPTY_ASK
    sizes[-1, 1, :] = 0
    bt = batch_from(prices, sizes, [], 4)
    assert mark_prices(bt)[0] == pytest.approx((100.00 + 100.02) / 2)


def test_cost_matches_slow_sum_on_random_books():
    rng = np.random.default_rng(0)
    bt = make_batch(rng, B=4, W=100, L=4, exec_rate=1.5)
    a = random_orders(rng, bt, density=0.3)
    prop = propagate(a, bt)
    marks = mark_prices(bt)
    expect = np.zeros(4)
    for b, s, p, q in zip(prop.fills.snippet, prop.fills.side, prop.fills.price, prop.fills.shares):
        sign = 1 if s == 0 else -1  # bought on the bid, sold on the ask
        expect[b] -= -sign * p * q / D + sign * q * marks[b]
    assert len(prop.fills) > 5
    np.testing.assert_allclose(cost(a, bt, prop), expect, rtol=1e-12, atol=1e-9)


def test_relative_size_hand():
    sizes = np.array([[[[10, 30], [20, 0]], [[10, 30], [20, 40]]]])  # (1, 2, 2, 2), one empty ask level at t=0
    mask = np.ones(sizes.shape, bool)
    mask[0, 0, 1, 1] = False
    delta = np.zeros(sizes.shape, np.int64)
    delta[0, 0, 0, 0] = 6
    delta[0, 1, 1, 1] = 9
    assert relative_size(delta, sizes, mask)[0] == pytest.approx(100 * 15 / 160)
    out = relative_size(torch.tensor(delta, dtype=torch.float64), sizes, mask)
    assert out.item() == pytest.approx(100 * 15 / 160)
    assert np.isnan(relative_size(delta, np.zeros_like(sizes), mask)[0])


def test_relative_size_of_propagated_orders():
    rng = np.random.default_rng(1)
    bt = make_batch(rng, B=3, W=50, L=3)
    a = random_orders(rng, bt)
    delta = propagate(a, bt).delta
    mask = level_mask(bt.prices)
    got = relative_size(delta, bt.sizes, mask)
    for b in range(3):
        assert got[b] == pytest.approx(100 * delta[b][mask[b]].sum() / bt.sizes[b][mask[b]].sum())
