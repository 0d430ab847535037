"""Propagation: exact Numba engine vs the plain-Python reference, hand-checked cases, and the torch operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lobsim.grid import EMPTY_ASK, EMPTY_BID, level_mask
from lobsim.propagation import (
    TouchPropagator,
    propagate,
    propagate_reference,
    universal_orders,
)
from lobsim.snippets import SnippetBatch

TICK = 100


def batch_from(prices, sizes, execs, W):
    """A one-snippet batch; execs = list of (step, side, price, volume, hidden)."""
    execs = sorted(execs, key=lambda e: e[0])
    ptr = np.searchsorted([e[0] for e in execs], np.arange(W + 1), side="left").astype(np.int64)
    return SnippetBatch(
        day=np.zeros(1, np.int64),
        start=np.zeros(1, np.int64),
        prices=np.asarray(prices, np.int64)[None],
        sizes=np.asarray(sizes, np.int64)[None],
        exec_ptr=ptr[None],
        exec_side=np.array([e[1] for e in execs], np.int8),
        exec_price=np.array([e[2] for e in execs], np.int64),
        exec_volume=np.array([e[3] for e in execs], np.int64),
        exec_hidden=np.array([e[4] for e in execs], bool),
        labels=np.full(1, -1, np.int64),
    )


def make_batch(rng, B=3, W=40, L=4, exec_rate=0.6, p_masked=0.1, hidden_rate=0.3, move=0.3):
    """Random ladders (a drifting mid, random spread, some empty deep levels) and random executions, some at
    prices off the visible book, some repeated within a step, some hidden."""
    prices = np.empty((B, W, 2, L), np.int64)
    sizes = rng.integers(1, 400, (B, W, 2, L)).astype(np.int64)
    ptr = np.zeros((B, W + 1), np.int64)
    es, ep, ev, eh = [], [], [], []
    n = 0
    for b in range(B):
        mid = 1000 * TICK * (b + 1)
        ptr[b, 0] = n
        for t in range(W):
            if rng.random() < move:
                mid += int(rng.integers(-2, 3)) * TICK
            gap = int(rng.integers(1, 3))
            prices[b, t, 0] = mid - TICK * (np.arange(L) + gap)
            prices[b, t, 1] = mid + TICK * (np.arange(L) + gap)
            for s, dummy in ((0, EMPTY_BID), (1, EMPTY_ASK)):
                if rng.random() < p_masked:
                    k = int(rng.integers(0, L))
                    prices[b, t, s, k:] = dummy
                    sizes[b, t, s, k:] = 0
            for _ in range(rng.poisson(exec_rate)):
                s = int(rng.integers(0, 2))
                es.append(s)
                ep.append(mid + (1 if s else -1) * TICK * int(rng.integers(1, L + 2)))
                ev.append(int(rng.integers(1, 300)))
                eh.append(bool(rng.random() < hidden_rate))
                n += 1
            ptr[b, t + 1] = n
    return SnippetBatch(
        day=np.zeros(B, np.int64),
        start=np.zeros(B, np.int64),
        prices=prices,
        sizes=sizes,
        exec_ptr=ptr,
        exec_side=np.array(es, np.int8),
        exec_price=np.array(ep, np.int64),
        exec_volume=np.array(ev, np.int64),
        exec_hidden=np.array(eh, bool),
        labels=np.full(B, -1, np.int64),
    )


def random_orders(rng, batch, density=0.2, high=4):
    o = rng.integers(0, high, batch.prices.shape) * (rng.random(batch.prices.shape) < density)
    return (o * level_mask(batch.prices)).astype(np.int64)


def assert_same(a, r):
    np.testing.assert_array_equal(a.delta, r.delta)
    for f in ("snippet", "step", "side", "price", "shares"):
        np.testing.assert_array_equal(getattr(a.fills, f), getattr(r.fills, f), err_msg=f)


# ----------------------------------------------------------------------------------------------------------------
# hand-checked cases (they check the reference and the engine against numbers computed by hand)
# ----------------------------------------------------------------------------------------------------------------

P = [[[100, 99], [101, 102]]] * 5  # W=5, L=2: bids 100, 99; asks 101, 102 (constant book)


@pytest.mark.parametrize("engine", [propagate, propagate_reference])
def test_touch_hand_case(engine):
    prices = np.array(P)
    prices[2, 0] = [99, 98]  # at t=2 the bid 100 leaves the book (invisible but still resting)
    sizes = np.full((5, 2, 2), 50)
    execs = [(1, 0, 100, 5, False), (3, 0, 100, 1, True), (4, 1, 101, 7, False)]
    bt = batch_from(prices, sizes, execs, 5)
    a = np.zeros((1, 5, 2, 2), np.int64)
    a[0, 1, 0, 0] = 3  # bid 100 at t=1: the execution of step 1 happened before -> not filled
    a[0, 2, 0, 0] = 2  # bid 99 (level 0 at t=2)
    a[0, 0, 1, 0] = 4  # ask 101 at t=0, filled at step 4
    a[0, 4, 1, 0] = 1  # ask 101 at t=4, after the fill of step 4
    res = engine(a, bt)
    d = res.delta[0]
    assert d[:, 0, 0].tolist() == [0, 3, 2, 0, 0]  # level 0: 100, 100, 99, 100 (filled at step 3), 100
    assert d[:, 0, 1].tolist() == [0, 0, 0, 2, 2]  # level 1: 99, 99, 98, 99, 99
    assert d[:, 1, 0].tolist() == [4, 4, 4, 4, 1]
    assert res.fills.step.tolist() == [3, 4]
    assert res.fills.side.tolist() == [0, 1]
    assert res.fills.price.tolist() == [100, 101]
    assert res.fills.shares.tolist() == [3, 4]
    # excluding hidden executions: the bid 100 survives to the end
    res2 = engine(a, bt, include_hidden=False)
    assert res2.delta[0, 4, 0, 0] == 3 and res2.fills.shares.tolist() == [4]


@pytest.mark.parametrize("engine", [propagate, propagate_reference])
def test_queue_hand_case(engine):
    prices = np.array(P)
    sizes = np.full((5, 2, 2), 10)
    sizes[1, 0, 0] = 4  # clean size at bid 100 when the second order joins
    # step 1: 6 traded at 100 (clean queue 10 -> 4 ahead of the first order)
    # step 2: 6 more: 4 clean ahead, then 2 of the first order (5 shares)
    # step 4: 20: rest of the first (3), the 4 clean shares ahead of the second, its 7 shares; 6 left over
    execs = [(1, 0, 100, 6, False), (2, 0, 100, 6, False), (4, 0, 100, 20, False)]
    bt = batch_from(prices, sizes, execs, 5)
    a = np.zeros((1, 5, 2, 2), np.int64)
    a[0, 0, 0, 0] = 5  # joins behind 10 clean shares
    a[0, 1, 0, 0] = 7  # joins behind max(4 - 4 still counted ahead of order 1, 0) = 0 new clean + 5 attacker
    res = engine(a, bt, fill_model="queue")
    assert res.delta[0, :, 0, 0].tolist() == [5, 12, 10, 10, 0]
    assert res.fills.step.tolist() == [2, 4] and res.fills.shares.tolist() == [2, 10]
    # touch model on the same data: everything is filled at the first execution after placement
    res_t = engine(a, bt)
    assert res_t.delta[0, :, 0, 0].tolist() == [5, 7, 0, 0, 0]
    assert res_t.fills.shares.tolist() == [5, 7]


def test_queue_gap_counts_new_clean_shares():
    """The second order's clean queue ahead is the visible size when it is placed (12 > 10 counted before)."""
    sizes = np.full((5, 2, 2), 10)
    sizes[1, 0, 0] = 12
    bt = batch_from(np.array(P), sizes, [(3, 0, 100, 14, False)], 5)
    a = np.zeros((1, 5, 2, 2), np.int64)
    a[0, 0, 0, 0] = 3
    a[0, 1, 0, 0] = 4
    for engine in (propagate, propagate_reference):
        res = engine(a, bt, fill_model="queue")
        # queue: 10 clean | 3 attacker | 2 clean | 4 attacker; 14 traded: 10 clean, 3 attacker, 1 clean
        assert res.fills.shares.tolist() == [3]
        assert res.delta[0, 4, 0, 0] == 4


# ----------------------------------------------------------------------------------------------------------------
# exact engine == plain-Python reference on random books (property tests)
# ----------------------------------------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    B=st.integers(1, 3),
    W=st.integers(1, 40),
    L=st.integers(1, 4),
    exec_rate=st.floats(0.0, 2.0),
    density=st.floats(0.0, 1.0),
    fill_model=st.sampled_from(["touch", "queue"]),
    include_hidden=st.booleans(),
)
def test_engine_matches_reference(seed, B, W, L, exec_rate, density, fill_model, include_hidden):
    rng = np.random.default_rng(seed)
    bt = make_batch(rng, B=B, W=W, L=L, exec_rate=exec_rate)
    a = random_orders(rng, bt, density=density)
    assert_same(propagate(a, bt, fill_model, include_hidden), propagate_reference(a, bt, fill_model, include_hidden))


def test_engine_matches_reference_long_snippets():
    rng = np.random.default_rng(7)
    bt = make_batch(rng, B=4, W=400, L=10, exec_rate=1.0, move=0.5)
    a = random_orders(rng, bt, density=0.05, high=50)
    for fm in ("touch", "queue"):
        assert_same(propagate(a, bt, fm), propagate_reference(a, bt, fm))


def test_queue_never_fills_more_than_touch_and_equals_it_with_huge_volumes():
    rng = np.random.default_rng(3)
    bt = make_batch(rng, B=3, W=80, L=5, exec_rate=1.5)
    a = random_orders(rng, bt, density=0.3)
    touch, queue = propagate(a, bt, "touch"), propagate(a, bt, "queue")
    assert (queue.delta >= touch.delta).all() and (queue.delta > touch.delta).any()
    bt.exec_volume = np.full_like(bt.exec_volume, 10**9)
    touch, queue = propagate(a, bt, "touch"), propagate(a, bt, "queue")
    assert_same(touch, queue)


def test_bad_orders_are_errors():
    rng = np.random.default_rng(0)
    bt = make_batch(rng, B=2, W=10, L=3, p_masked=0.5)
    a = np.zeros(bt.prices.shape, np.int64)
    with pytest.raises(ValueError, match="shape"):
        propagate(a[:, :5], bt)
    with pytest.raises(ValueError, match="integer"):
        propagate(a.astype(float), bt)
    a[1, 2, 0, 1] = -1
    with pytest.raises(ValueError, match="snippet 1, step 2, side 0, level 1"):
        propagate(a, bt)
    a[:] = 0
    b, t, s, j = np.argwhere(~level_mask(bt.prices))[0]
    a[b, t, s, j] = 1
    with pytest.raises(ValueError, match=f"snippet {b}, step {t}, side {s}, level {j}"):
        propagate(a, bt)
    with pytest.raises(ValueError, match="fill_model"):
        propagate(np.zeros_like(a), bt, fill_model="pro-rata")


# ----------------------------------------------------------------------------------------------------------------
# the differentiable operator
# ----------------------------------------------------------------------------------------------------------------

BACKENDS = ["numba", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_equals_exact_engine(backend):
    rng = np.random.default_rng(11)
    for it in range(12):
        bt = make_batch(rng, B=3, W=int(rng.integers(1, 60)), L=int(rng.integers(1, 5)), exec_rate=rng.random() * 2)
        a = random_orders(rng, bt, density=rng.random(), high=20)
        for hidden in (True, False):
            op = TouchPropagator(bt, include_hidden=hidden, backend=backend)
            expect = propagate(a, bt, include_hidden=hidden).delta
            for dtype in (torch.float32, torch.float64):
                got = op(torch.as_tensor(a, dtype=dtype))
                np.testing.assert_array_equal(got.numpy(), expect, err_msg=f"iteration {it}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_linear_and_adjoint(backend):
    rng = np.random.default_rng(5)
    bt = make_batch(rng, B=2, W=50, L=3)
    op = TouchPropagator(bt, backend=backend)
    x, y = (torch.rand(op.shape, dtype=torch.float64) for _ in range(2))  # orders are >= 0
    torch.testing.assert_close(op(2.5 * x + 0.5 * y), 2.5 * op(x) + 0.5 * op(y))
    x.requires_grad_(True)
    g = torch.randn(op.shape, dtype=torch.float64)
    out = op(x)
    (grad,) = torch.autograd.grad(out, x, g)
    torch.testing.assert_close((out * g).sum(), (x * grad).sum())  # <P x, g> == <x, P^T g>
    mask = torch.as_tensor(level_mask(bt.prices))
    assert (grad[~mask] == 0).all() and (out[~mask] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_gradcheck(backend):
    rng = np.random.default_rng(2)
    bt = make_batch(rng, B=2, W=8, L=2, exec_rate=1.0, p_masked=0.2)
    op = TouchPropagator(bt, backend=backend, dtype=torch.float64)
    x = torch.rand(op.shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_gradient_vs_finite_differences(backend):
    rng = np.random.default_rng(9)
    bt = make_batch(rng, B=2, W=60, L=4, exec_rate=1.0)
    op = TouchPropagator(bt, backend=backend, dtype=torch.float64)
    w = torch.randn(op.shape, dtype=torch.float64)

    def loss(x):
        return (torch.sin(op(x)) * w).sum()

    x = torch.rand(op.shape, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(x), x)
    real = np.argwhere(level_mask(bt.prices))
    eps = 1e-6
    for b, t, s, j in real[rng.choice(len(real), 25, replace=False)]:
        e = torch.zeros_like(x)
        e[b, t, s, j] = eps
        fd = (loss(x.detach() + e) - loss(x.detach() - e)) / (2 * eps)
        assert abs(fd.item() - grad[b, t, s, j].item()) < 1e-5 * max(1.0, abs(fd.item()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_operator_select_matches_fresh_build(backend):
    rng = np.random.default_rng(4)
    bt = make_batch(rng, B=5, W=30, L=3)
    op = TouchPropagator(bt, backend=backend)
    idx = [4, 1, 2]
    sub, fresh = op.select(idx), TouchPropagator(bt.select(idx), backend=backend)
    a = torch.as_tensor(random_orders(rng, bt.select(idx)), dtype=torch.float32, device=op.device)
    torch.testing.assert_close(sub(a), fresh(a))
    keep = np.zeros(5, bool)
    keep[[1, 2]] = True
    torch.testing.assert_close(op.select(keep)(a[1:]), op.select(torch.tensor([1, 2]))(a[1:]))
    x = a.clone().requires_grad_(True)
    y = a.clone().requires_grad_(True)
    g = torch.randn(sub.shape)
    torch.testing.assert_close(torch.autograd.grad(sub(x), x, g)[0], torch.autograd.grad(fresh(y), y, g)[0])


def test_operator_rejects_duplicate_prices_and_bad_backend():
    rng = np.random.default_rng(0)
    bt = make_batch(rng, B=2, W=10, L=3, p_masked=0.0)
    bt.prices[1, 4, 1, 2] = bt.prices[1, 4, 1, 1]
    with pytest.raises(ValueError, match="snippet 1, step 4"):
        TouchPropagator(bt)
    with pytest.raises(ValueError, match="backend"):
        TouchPropagator(make_batch(rng), backend="triton-please")


def test_exact_engine_rejects_duplicate_prices():
    rng = np.random.default_rng(3)
    bt = make_batch(rng, B=3, W=12, L=4, p_masked=0.0)
    a = np.zeros(bt.prices.shape, np.int64)
    propagate(a, bt)  # distinct prices: fine
    bt.prices[2, 7, 0, 3] = bt.prices[2, 7, 0, 1]
    for fn in (propagate, propagate_reference):
        for fm in ("touch", "queue"):
            with pytest.raises(ValueError, match="duplicate price .* side 0 at snippet 2, step 7 .levels 1 and 3."):
                fn(a, bt, fm)
    bt = make_batch(rng, B=1, W=6, L=3, p_masked=1.0)  # empty levels share the dummy price: not a duplicate
    propagate(np.zeros(bt.prices.shape, np.int64), bt)


def test_operator_on_cuda(cuda_device):
    rng = np.random.default_rng(1)
    bt = make_batch(rng, B=4, W=100, L=5)
    a = random_orders(rng, bt, high=10)
    op = TouchPropagator(bt, device=cuda_device)
    x = torch.as_tensor(a, dtype=torch.float32, device=cuda_device).requires_grad_(True)
    out = op(x)
    np.testing.assert_array_equal(out.detach().cpu().numpy(), propagate(a, bt).delta)
    g = torch.randn(op.shape, device=cuda_device)
    (grad,) = torch.autograd.grad(out, x, g)
    cpu = TouchPropagator(bt)
    xc = x.detach().cpu().requires_grad_(True)
    torch.testing.assert_close(grad.cpu(), torch.autograd.grad(cpu(xc), xc, g.cpu())[0], rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------------------------------
# universal (level-relative) orders
# ----------------------------------------------------------------------------------------------------------------


def test_universal_orders_numpy_and_torch():
    rng = np.random.default_rng(6)
    bt = make_batch(rng, B=3, W=20, L=3, p_masked=0.3)
    pattern = rng.integers(0, 3, (15, 2, 3))
    orders = universal_orders(pattern, bt)
    mask = level_mask(bt.prices)
    for b in range(3):
        for t in range(20):
            for s in range(2):
                for j in range(3):
                    expect = pattern[t, s, j] if (t < 15 and mask[b, t, s, j]) else 0
                    assert orders[b, t, s, j] == expect
    propagate(orders, bt)  # valid orders: never at a masked level
    pt = torch.tensor(pattern, dtype=torch.float64, requires_grad=True)
    out = universal_orders(pt, bt)
    np.testing.assert_array_equal(out.detach().numpy(), orders)
    out.sum().backward()
    np.testing.assert_array_equal(pt.grad.numpy(), mask[:, :15].sum(0))
    with pytest.raises(ValueError, match="pattern"):
        universal_orders(np.zeros((21, 2, 3), np.int64), bt)


# ----------------------------------------------------------------------------------------------------------------
# real data: the GOOG 10-level LOBSTER sample (skips when ../shared/data is absent)
# ----------------------------------------------------------------------------------------------------------------


def test_real_goog_snippets(shared_data):
    from data_loaders.lobster import load_day
    from lobsim.book import resample
    from lobsim.snippets import cut_snippets

    folder = shared_data / "lobster-goog-l10-2012-06-21"
    if not folder.is_dir():
        pytest.skip(f"real data not found: {folder}")
    day = load_day(folder, use_cache=False)
    grid = resample(day, dt=0.01, start=34200 + 600, end=34200 + 720)
    bt = cut_snippets([grid], np.zeros(2, np.int64), np.array([0, 6000]), 6000)
    assert int(bt.exec_ptr[:, -1].max() - bt.exec_ptr[:, 0].min()) > 20  # the window holds real executions
    rng = np.random.default_rng(0)
    a = random_orders(rng, bt, density=0.02, high=3)
    for fm in ("touch", "queue"):
        assert_same(propagate(a, bt, fm), propagate_reference(a, bt, fm))
    exact = propagate(a, bt)
    assert len(exact.fills) > 0
    for backend in BACKENDS:
        got = TouchPropagator(bt, backend=backend)(torch.as_tensor(a, dtype=torch.float32))
        np.testing.assert_array_equal(got.numpy(), exact.delta)
