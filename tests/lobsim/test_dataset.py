"""The Market: split without leakage, sampling, SWA windows and labels against independent computations."""

from __future__ import annotations

import numpy as np
import pytest

from lobsim.dataset import FeatureConfig, Market, session_window
from lobsim.features import FLAT, LabelConfig, swa
from lobsim.grid import EMPTY_ASK, GridBook


def make_book(
    T: int,
    L: int = 5,
    seed: int = 0,
    regime_switch: float = 0.0,
    dt: float = 0.01,
    ticker: str = "TEST",
    date: str = "2020-01-02",
) -> GridBook:
    """A random-walk book with a realistic ladder (1-cent ticks, spread 1 tick) and a few executions.

    With ``regime_switch > 0`` the walk has a persistent drift (+-) that flips with that probability per step:
    a planted, learnable momentum signal.
    """
    rng = np.random.default_rng(seed)
    move = rng.random(T) < 0.5
    if regime_switch > 0:
        flips = rng.random(T) < regime_switch
        regime = np.where(np.cumsum(flips) % 2 == 0, 1, -1) * (1 if rng.random() < 0.5 else -1)
        direction = np.where(rng.random(T) < 0.85, regime, -regime)
    else:
        direction = np.where(rng.random(T) < 0.5, 1, -1)
    bid = 500_000 + 100 * np.cumsum(move * direction)
    j = np.arange(L)
    prices = np.empty((T, 2, L), np.int64)
    prices[:, 0] = bid[:, None] - 100 * j
    prices[:, 1] = bid[:, None] + 100 * (j + 1)
    sizes = rng.integers(50, 150, size=(T, 2, L)).astype(np.int64)
    prices[::7, 1, L - 1] = EMPTY_ASK  # some empty deep levels
    sizes[::7, 1, L - 1] = 0
    n_exec = rng.poisson(0.2, size=T)
    exec_ptr = np.concatenate([[0], np.cumsum(n_exec)]).astype(np.int64)
    E = int(exec_ptr[-1])
    steps = np.repeat(np.arange(T), n_exec)
    side = rng.integers(0, 2, size=E).astype(np.int8)
    return GridBook(
        ticker=ticker,
        date=date,
        dt=dt,
        times=34200.0 + dt * np.arange(T),
        prices=prices,
        sizes=sizes,
        exec_ptr=exec_ptr,
        exec_side=side,
        exec_price=prices[steps, side, 0],
        exec_volume=rng.integers(1, 100, size=E).astype(np.int64),
        exec_hidden=rng.random(E) < 0.1,
    )


FEATS = FeatureConfig(dt=0.01, window_s=0.5, horizon_s=0.2)  # W = 50, H = 20 steps


def spans(market: Market, refs: tuple[np.ndarray, np.ndarray]) -> list[tuple[int, int, int]]:
    W, H = market.window, market.horizon
    return [(int(d), int(s), int(s) + W + H) for d, s in zip(*refs)]


def test_feature_config_steps() -> None:
    f = FeatureConfig()
    assert (f.window, f.horizon) == (6000, 1000)
    assert (FEATS.window, FEATS.horizon) == (50, 20)
    assert FeatureConfig.from_dict(f.to_dict()) == f
    assert FeatureConfig.from_dict({"dt": 0.1, "labels": {"relative": True}}).labels == LabelConfig(relative=True)


def test_time_split_has_no_leakage_and_a_gap() -> None:
    book = make_book(1000, seed=1)
    m = Market([book], FEATS)
    assert m.split == "time"
    W, H = m.window, m.horizon
    train = spans(m, m.all_train_starts())
    test = spans(m, m.test_refs(10**9))
    assert len(train) == m.n_train and len(test) == m.n_test > 0
    last_train_end = max(e for _, _, e in train)
    first_test_start = min(s for _, s, _ in test)
    # Every train span [s, s+W+H) is disjoint from every test span, with at least W+H unused steps between.
    assert first_test_start - last_train_end >= W + H
    assert last_train_end <= 800 and max(e for _, _, e in test) <= 1000
    # Random samples obey the same bounds.
    d, s = m.sample_train(5000, np.random.default_rng(0))
    assert s.min() >= 0 and s.max() + W + H <= last_train_end
    with pytest.raises(ValueError, match="gap"):
        Market([book], FEATS, gap=W + H - 1)


def test_day_split_first_days_train() -> None:
    books = [make_book(300, seed=i, date=f"2020-01-0{i + 1}") for i in range(5)]
    m = Market(books, FEATS)
    assert m.split == "day" and m.train_days == [0, 1, 2, 3] and m.test_days == [4]
    d, _ = m.sample_train(2000, np.random.default_rng(0))
    assert set(np.unique(d)) == {0, 1, 2, 3}
    assert set(np.unique(m.test_refs(100)[0])) == {4}
    m2 = Market(books[:2], FEATS)
    assert (m2.train_days, m2.test_days) == ([0], [1])
    m20 = Market([make_book(100, seed=i) for i in range(20)], FEATS)  # thesis: 16 train, 4 test
    assert (len(m20.train_days), len(m20.test_days)) == (16, 4)


def test_sampling_is_uniform_over_valid_starts() -> None:
    books = [make_book(200, seed=0), make_book(300, seed=1), make_book(200, seed=2)]
    m = Market(books, FEATS, split="day", train_fraction=0.67)
    assert m.train_days == [0, 1]
    d, s = m.sample_train(60_000, np.random.default_rng(1))
    counts = np.bincount(d, minlength=2)
    # valid starts: 200-70+1 = 131 on day 0, 231 on day 1: proportions follow the counts
    assert abs(counts[0] / counts.sum() - 131 / 362) < 0.01
    assert s[d == 0].max() == 130 and s[d == 1].max() == 230 and s.min() == 0
    ref1, ref2 = m.test_refs(50, seed=3), m.test_refs(50, seed=3)
    np.testing.assert_array_equal(ref1[1], ref2[1])
    assert len(set(zip(*ref1))) == 50  # distinct
    assert not np.array_equal(m.test_refs(50, seed=4)[1], ref1[1])


def test_windows_labels_and_batch_match_direct_computation() -> None:
    books = [make_book(400, seed=5), make_book(400, seed=6)]
    m = Market(books, FEATS)
    day = np.array([0, 0, 1, 0])
    start = np.array([0, 17, 100, 330])
    w = m.swa_windows(day, start)
    for b in range(4):
        bk = books[day[b]]
        sl = slice(start[b], start[b] + 50)
        np.testing.assert_allclose(w[b], swa(bk.prices[sl], bk.sizes[sl]), atol=1e-12)
    change = m.changes(day, start)
    for b in range(4):
        bk = books[day[b]]
        e = start[b] + 49
        direct = swa(bk.prices[e + 20], bk.sizes[e + 20]) - swa(bk.prices[e], bk.sizes[e])
        assert change[b] == pytest.approx(direct, abs=1e-12)
    tau = 0.004
    lab = m.labels(day, start, tau)
    np.testing.assert_array_equal(lab, np.where(change > tau, 2, np.where(change < -tau, 0, 1)))
    batch = m.batch(day, start, tau)
    np.testing.assert_array_equal(batch.labels, lab)
    np.testing.assert_allclose(swa(batch.prices, batch.sizes), w, atol=1e-12)
    assert m.batch(day, start).labels.tolist() == [-1] * 4
    with pytest.raises(ValueError, match="leaves the day"):
        m.labels(np.array([0]), np.array([340]), tau)


def test_fit_tau_makes_one_third_of_training_flat() -> None:
    m = Market([make_book(3000, seed=7)], FEATS)
    tau = m.fit_tau()
    lab = m.labels(*m.all_train_starts(), tau)
    assert abs(np.mean(lab == FLAT) - 1 / 3) < 0.02  # ties in a tick-grid SWA may push flat slightly above
    rel = Market([make_book(3000, seed=7)], FeatureConfig(dt=0.01, window_s=0.5, horizon_s=0.2,
                                                          labels=LabelConfig(relative=True)))
    assert rel.fit_tau() < tau  # relative changes are ~1/50 of dollar changes at ~$50


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="too short"):
        Market([make_book(60)], FEATS)
    bk = make_book(300)
    bk.sizes[123] = 0
    with pytest.raises(ValueError, match="snapshot 123"):
        Market([bk], FEATS)
    with pytest.raises(ValueError, match="dt="):
        Market([make_book(300, dt=0.1)], FEATS)


def test_session_window() -> None:
    # A defaulted start is None (resample starts at the first 09:30 + k dt after the first message) unless the day
    # has a message at or before 09:30 (then 09:30 itself).
    full = np.array([34200.015, 40000.0, 57599.8])
    assert session_window(full, None, None) == (None, 37800.0)
    assert session_window(np.array([34199.5, 40000.0]), None, None) == (34200.0, 37800.0)
    short = np.array([34300.0, 35000.0])
    assert session_window(short, None, None) == (None, 35000.0)
    assert session_window(full, 36000.0, 36600.0) == (36000.0, 36600.0)


def test_real_goog_day_swa_matches_the_orderbook_file() -> None:
    """GOOG l10, 20 minutes: the Market's SWA equals a hand computation from LOBSTER's own orderbook rows."""
    import bisect
    import itertools

    from tests.conftest import shared_path

    folder = shared_path("lobster-goog-l10-2012-06-21")
    msg = folder / "GOOG_2012-06-21_34200000_57600000_message_10.csv"
    ob = folder / "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv"
    m = Market.from_paths([folder], start=36000.0, end=37200.0)
    assert m.split == "time" and m.books[0].n_steps == 120001 and m.n_test > 0
    times = [float(line.split(",", 1)[0]) for line in msg.read_text().splitlines()]
    series = m.series[0]
    for k in (0, 12345, 120000):
        t = 36000.0 + 0.01 * k
        row = bisect.bisect_right(times, t + 1e-9) - 1
        with ob.open() as fh:
            vals = [int(v) for v in next(itertools.islice(fh, row, None)).split(",")]
        p, s = vals[0::2], vals[1::2]  # ask price, ask size, bid price, bid size per level
        assert series[k] == pytest.approx(sum(a * b for a, b in zip(p, s)) / sum(s) / 10_000, abs=1e-9)
    assert 570 < series.min() < series.max() < 590
    tau = m.fit_tau()
    assert abs(np.mean(m.labels(*m.all_train_starts(), tau) == FLAT) - 1 / 3) < 0.05


def test_multichannel_windows_match_the_adapters() -> None:
    from lobsim.adapters import features_numpy

    books = [make_book(400, seed=8), make_book(400, seed=9)]
    m = Market(books, FEATS)
    day, start = np.array([1, 0, 1]), np.array([5, 200, 330])
    inputs = ("imbalance", "swa", "depth")
    x = m.windows(inputs, day, start)
    assert x.shape == (3, 50, 4)
    for b in range(3):
        bk = books[day[b]]
        sl = slice(start[b], start[b] + 50)
        np.testing.assert_allclose(x[b], features_numpy(inputs, bk.prices[sl], bk.sizes[sl]), atol=1e-12)
    np.testing.assert_array_equal(m.windows(("swa",), day, start)[..., 0], m.swa_windows(day, start))


@pytest.mark.parametrize("n_days", [1, 3])
def test_validation_split_is_held_out_in_time_with_a_gap(n_days: int) -> None:
    books = [make_book(2000, seed=i, date=f"2020-01-0{i + 1}") for i in range(n_days)]
    m = Market(books, FEATS)
    W, H = m.window, m.horizon
    fit, val = m.validation_split(0.25)
    for f, v, r in zip(fit, val, m.train_regions):
        assert f.day == v.day == r.day and f.lo == r.lo and v.hi == r.hi
        # every fit span [s, s + W + H) ends at least `gap` steps before the first validation start
        assert (f.hi - 1) + W + H + m.gap <= v.lo
        assert 0.15 < v.count / r.count < 0.3
    d, s = Market.sample_regions(fit, 3000, np.random.default_rng(0))
    assert all(s[d == r.day].max() < r.hi for r in fit)
    vd, vs = Market.refs_in(val, 100, seed=1)
    assert len(set(zip(vd, vs))) == 100 and all(vs[vd == r.day].min() >= r.lo for r in val)
    with pytest.raises(ValueError, match="--val-fraction"):
        m.validation_split(1.0)
    with pytest.raises(ValueError, match="no validation snippet"):
        Market([make_book(800)], FEATS).validation_split(0.05)
