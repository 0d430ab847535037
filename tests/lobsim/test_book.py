"""The Numba book engine: rebuild/check against independent books, mismatch reporting, resampling vs slow loops."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from data_loaders.lobster import EMPTY_ASK, EMPTY_BID, LobsterDay, level_mask, load_day
from lobsim.book import BookMismatchError, rebuild, resample
from tests.conftest import shared_path
from tests.data_loaders.test_lobster import simulate_day, write_day


@pytest.fixture(scope="module")
def sim_day(tmp_path_factory) -> LobsterDay:
    msgs, rows = simulate_day(seed=7, n=1500, levels=3)
    return load_day(write_day(tmp_path_factory.mktemp("sim"), msgs, rows), use_cache=False)


def _revealed_reference(day: LobsterDay) -> int:
    """Levels on row k deeper than every level of row k-1, on a side that was full (L real levels) on row k-1."""
    p = day.book_prices
    real = level_mask(p)
    full_prev = real[:-1].all(axis=2)  # (N-1, 2)
    worst = p[:-1, :, -1]
    deeper_bid = (p[1:, 0, :] < worst[:, 0, None]) & real[1:, 0, :]
    deeper_ask = (p[1:, 1, :] > worst[:, 1, None]) & real[1:, 1, :]
    return int((deeper_bid.sum(axis=1) * full_prev[:, 0]).sum() + (deeper_ask.sum(axis=1) * full_prev[:, 1]).sum())


def _with_book(day: LobsterDay, prices=None, sizes=None, **msg) -> LobsterDay:
    fields = {"book_prices": day.book_prices.copy() if prices is None else prices,
              "book_sizes": day.book_sizes.copy() if sizes is None else sizes}
    for k, v in msg.items():
        fields[k] = v
    return dataclasses.replace(day, **fields)


def test_rebuild_generated_days_match_and_count_revealed(sim_day):
    rep = rebuild(sim_day)
    assert rep.mismatches == 0 and rep.rows_checked == sim_day.n_rows - 1
    assert rep.levels_revealed == _revealed_reference(sim_day) > 0


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_rebuild_more_seeds_and_depths(tmp_path, seed):
    msgs, rows = simulate_day(seed=seed, n=600, levels=1 + seed % 3)
    day = load_day(write_day(tmp_path, msgs, rows), use_cache=False)
    assert rebuild(day).levels_revealed == _revealed_reference(day)


def test_mismatch_in_orderbook_size_names_row(sim_day):
    sizes = sim_day.book_sizes.copy()
    k = 700
    j = int(np.flatnonzero(level_mask(sim_day.book_prices[k, 1]))[0])
    sizes[k, 1, j] += 1
    with pytest.raises(BookMismatchError, match=rf"row {k + 1}: rebuilt ask side differs .* at level {j + 1}"):
        rebuild(_with_book(sim_day, sizes=sizes))


def test_mismatch_in_message_names_row(sim_day):
    side = np.where(sim_day.direction == 1, 0, 1)
    visible = (sim_day.book_prices[np.arange(sim_day.n_rows), side] == sim_day.price[:, None]).any(axis=1)
    k = int(np.flatnonzero((sim_day.event_type == 1) & visible)[300])  # a submit that shows in the top L
    size = sim_day.size.copy()
    size[k] += 100
    with pytest.raises(BookMismatchError, match=rf"row {k + 1}:"):
        rebuild(_with_book(sim_day, size=size))


def test_mismatch_wrong_side_and_absent_price(sim_day):
    k = int(np.flatnonzero(sim_day.event_type == 4)[50])
    d = sim_day.direction.copy()
    d[k] = -d[k]
    with pytest.raises(BookMismatchError, match=rf"row {k + 1}:"):
        rebuild(_with_book(sim_day, direction=d))
    k = int(np.flatnonzero(sim_day.event_type == 3)[50])
    p = sim_day.price.copy()
    side = 0 if sim_day.direction[k] == 1 else 1
    p[k] = sim_day.book_prices[k - 1, side, 0] + (1 if side == 0 else -1)  # inside the spread: never a level
    with pytest.raises(BookMismatchError, match=rf"row {k + 1}: .*not in the known book"):
        rebuild(_with_book(sim_day, price=p))


def test_level_may_not_appear_on_a_fully_known_side():
    # 2 levels; the bid side holds only one level (so is fully known); a type-5 message changes nothing,
    # yet the file shows a second bid level: that level cannot come from anywhere.
    L = 2
    bp = np.array([[[100, EMPTY_BID], [200, 210]], [[100, 90], [200, 210]]], np.int64)
    bs = np.array([[[5, 0], [1, 1]], [[5, 7], [1, 1]]], np.int64)
    day = LobsterDay("X", "2012-06-21", L, "x.csv", np.array([1.0, 2.0]), np.array([1, 5]), np.array([1, 0]),
                     np.array([5, 3]), np.array([100, 150]), np.array([1, 1]), bp, bs)
    with pytest.raises(BookMismatchError, match=r"row 2: rebuilt bid side .* at level 2: a level appeared"):
        rebuild(day)
    # the same new level is fine when the side was full before and a level emptied
    bp2 = np.array([[[100, 95], [200, 210]], [[95, 90], [200, 210]]], np.int64)
    bs2 = np.array([[[5, 2], [1, 1]], [[2, 7], [1, 1]]], np.int64)
    day2 = dataclasses.replace(day, event_type=np.array([1, 3]), size=np.array([5, 5]), price=np.array([100, 100]),
                               book_prices=bp2, book_sizes=bs2)
    assert rebuild(day2).levels_revealed == 1


# --------------------------------------------------------------------------- resampling


def _resample_reference(day: LobsterDay, times: np.ndarray, dt: float):
    """Slow merge loops: last row at or before each time; executions in (times[t-1], times[t]] (step 0 from
    times[0] - dt), walking messages and grid times together."""
    prices, sizes, execs = [], [], []
    k = -1
    i = 0
    while i < day.n_rows and day.time[i] <= times[0] - dt:
        i += 1
    for t, g in enumerate(times):
        while k + 1 < day.n_rows and day.time[k + 1] <= g:
            k += 1
        prices.append(day.book_prices[k])
        sizes.append(day.book_sizes[k])
        while i < day.n_rows and day.time[i] <= g:
            if day.event_type[i] in (4, 5):
                execs.append((t, 1 if day.direction[i] == -1 else 0, int(day.price[i]), int(day.size[i]),
                              bool(day.event_type[i] == 5)))
            i += 1
    return np.array(prices), np.array(sizes), execs


def _grid_execs(g):
    out = []
    for t in range(g.n_steps):
        side, price, vol, hid = g.executions_at(t)
        out += [(t, int(a), int(b), int(c), bool(d)) for a, b, c, d in zip(side, price, vol, hid)]
    return out


@pytest.mark.parametrize("dt, start, end", [(0.01, None, None), (0.1, None, 34230.0), (1.0, 34205.5, 34250.0)])
def test_resample_matches_slow_reference(sim_day, dt, start, end):
    g = resample(sim_day, dt=dt, start=start, end=end)
    t0 = sim_day.time[0]
    if start is None:
        assert g.times[0] >= t0 and g.times[0] - t0 < dt + 1e-9
    else:
        assert g.times[0] == start
    np.testing.assert_allclose(np.diff(g.times), dt, rtol=0, atol=1e-7)
    assert g.times[-1] <= (sim_day.time[-1] if end is None else end) + 1e-9
    p, s, ex = _resample_reference(sim_day, g.times, dt)
    np.testing.assert_array_equal(g.prices, p)
    np.testing.assert_array_equal(g.sizes, s)
    assert _grid_execs(g) == ex
    assert g.exec_side.dtype == np.int8 and g.exec_hidden.dtype == np.bool_


def test_resample_window_errors(sim_day):
    with pytest.raises(ValueError, match="before the first message"):
        resample(sim_day, start=sim_day.time[0] - 0.5)
    with pytest.raises(ValueError, match="end .* before its start"):
        resample(sim_day, start=34210.0, end=34209.0)
    with pytest.raises(ValueError, match="dt must be"):
        resample(sim_day, dt=0.0)


def test_resample_keeps_dummies_masked(sim_day):
    g = resample(sim_day, dt=0.05)
    assert (~g.mask).any()  # the simulated day has empty levels at times
    assert np.isin(g.prices[~g.mask], [EMPTY_ASK, EMPTY_BID]).all()
    assert (g.sizes[~g.mask] == 0).all()


# --------------------------------------------------------------------------- real files


REAL = [
    ("lobster-goog-l10-2012-06-21",),
    ("lobster-aapl-l1-2012-06-21",),
    ("lobster-amzn-l1-2012-06-21",),
    ("lobster-goog-l1-2012-06-21",),
    ("lobster-aapl-l10-2012-06-21-first999",),
    ("lobster-msft-l50-2012-06-21-1000rows",),
    ("lobster-sample-2012-06-21-zips", "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip"),
    ("lobster-sample-2012-06-21-zips", "LOBSTER_SampleFile_AMZN_2012-06-21_1.zip"),
    ("lobster-sample-2012-06-21-zips", "LOBSTER_SampleFile_GOOG_2012-06-21_1.zip"),
    ("lobster-sample-2012-06-21-zips", "LOBSTER_SampleFile_GOOG_2012-06-21_10.zip"),
]


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.mark.parametrize("parts", REAL, ids=lambda p: p[-1])
def test_real_files_rebuild_row_for_row(parts, real_cache):
    day = load_day(shared_path(*parts), cache_dir=real_cache)
    rep = rebuild(day)
    assert rep.mismatches == 0 and rep.rows_checked == day.n_rows - 1
    assert rep.levels_revealed == _revealed_reference(day)


def test_real_goog_first_minute_resample(real_cache):
    day = load_day(shared_path("lobster-goog-l10-2012-06-21"), cache_dir=real_cache)
    g = resample(day, dt=0.01, end=34260.0)
    assert g.times[0] == pytest.approx(34200.02)
    p, s, ex = _resample_reference(_head(day, 3000), g.times, 0.01)
    np.testing.assert_array_equal(g.prices, p)
    np.testing.assert_array_equal(g.sizes, s)
    assert _grid_execs(g) == ex
    full = resample(day)
    assert full.n_steps == 2_339_986  # 34200.02 .. 57599.87 every 0.01 s
    n_exec = int(((day.event_type == 4) | (day.event_type == 5)).sum())
    late = int((((day.event_type == 4) | (day.event_type == 5)) & (day.time > full.times[-1])).sum())
    assert full.exec_ptr[-1] == n_exec - late


def _head(day: LobsterDay, n: int) -> LobsterDay:
    cut = {f.name: getattr(day, f.name)[:n] for f in dataclasses.fields(day) if isinstance(getattr(day, f.name),
                                                                                        np.ndarray)}
    assert day.time[n - 1] > 34260.0
    return dataclasses.replace(day, **cut)
