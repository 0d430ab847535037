"""The random-orders baseline: budget respected, seeded-deterministic, documented distribution."""

from __future__ import annotations

import numpy as np
import pytest

from lobsim.attacks.random import RandomOrders
from lobsim.grid import level_mask
from lobsim.metrics import capital, cost, relative_size
from lobsim.propagation import propagate, propagate_reference
from tests.lobsim.test_propagation import make_batch


@pytest.mark.parametrize("budget", [0.0, 50.0, 12_345.67, 2_000_000.0])
def test_budget_never_exceeded_and_mostly_used(budget):
    rng = np.random.default_rng(0)
    bt = make_batch(rng, B=4, W=60, L=4, p_masked=0.3)
    atk = RandomOrders(budget=budget, max_shares=20)
    for seed in range(5):
        orders = atk(bt, np.random.default_rng(seed))
        cap = capital(orders, bt.prices)  # also checks: integer, >= 0, never at a masked level
        assert (cap <= budget).all()
        biggest = atk.max_shares * bt.prices[level_mask(bt.prices)].max() / 10_000
        assert (budget - cap < biggest).all()  # stopped only when the next order did not fit


def test_seeded_deterministic():
    bt = make_batch(np.random.default_rng(1), B=3, W=40, L=3)
    atk = RandomOrders(budget=30_000)
    a1 = atk(bt, np.random.default_rng(42))
    a2 = atk(bt, np.random.default_rng(42))
    a3 = atk(bt, np.random.default_rng(43))
    np.testing.assert_array_equal(a1, a2)
    assert not np.array_equal(a1, a3)


def test_distribution_is_uniform_over_real_levels():
    bt = make_batch(np.random.default_rng(2), B=1, W=50, L=4, p_masked=0.0)
    atk = RandomOrders(budget=2_000_000, max_shares=1)  # one share per order: counts = number of draws
    a = atk(bt, np.random.default_rng(0))
    n = a.sum()
    assert n > 15_000
    per_side = a.sum(axis=(0, 1, 3))
    per_level = a.sum(axis=(0, 1, 2))
    assert abs(per_side[0] / n - 0.5) < 0.02  # binomial sd ~ 0.004
    np.testing.assert_allclose(per_level / n, 0.25, atol=0.02)
    sizes = RandomOrders(budget=2_000_000, max_shares=9, lot=100)(bt, np.random.default_rng(1))
    assert (sizes % 100 == 0).all() and sizes.max() >= 900


def test_random_orders_propagate_and_evaluate():
    bt = make_batch(np.random.default_rng(3), B=2, W=80, L=3, exec_rate=1.0)
    a = RandomOrders(budget=20_000)(bt, np.random.default_rng(0))
    for fm in ("touch", "queue"):
        prop = propagate(a, bt, fm)
        ref = propagate_reference(a, bt, fm)
        np.testing.assert_array_equal(prop.delta, ref.delta)
        assert np.isfinite(cost(a, bt, prop)).all()
        assert (relative_size(prop.delta, bt.sizes, level_mask(bt.prices)) > 0).all()


def test_bad_settings():
    with pytest.raises(ValueError):
        RandomOrders(budget=-1)
    with pytest.raises(ValueError):
        RandomOrders(max_shares=0)
