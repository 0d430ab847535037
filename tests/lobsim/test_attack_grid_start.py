"""The grid the models train and are attacked on: the default start is the session grid 09:30 + k dt (the first
point at or after the first message), so two loads of one day (or two users) get the same grid times."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from lobsim.book import SESSION_OPEN, grid_window
from lobsim.dataset import FeatureConfig, Market, session_window


def fake_day(times):
    return SimpleNamespace(time=np.asarray(times, np.float64), n_rows=len(times), source="day.csv")


@pytest.mark.parametrize("dt", [0.01, 0.1, 0.07, 1.0])
def test_default_start_is_on_the_session_grid(dt):
    for t0 in (34200.0, 34200.015, 34213.3333, 35000.5, 34100.25):
        g = grid_window(fake_day([t0, t0 + 50.0]), dt, None, None)
        k = (g[0] - SESSION_OPEN) / dt
        assert abs(k - round(k)) < 1e-6 and g[0] >= t0 and g[0] - dt < t0  # first lattice point >= t0
        assert np.allclose(np.diff(g), dt)


def test_two_loads_of_one_day_share_grid_times():
    full = grid_window(fake_day([34200.015, 36000.0]), 0.01, None, None)
    later = grid_window(fake_day([34512.3456, 36000.0]), 0.01, None, None)  # e.g. a file cut later in the day
    i = int(np.searchsorted(full, later[0]))
    assert np.array_equal(full[i : i + len(later)], later)  # bit-identical times on the overlap
    explicit = grid_window(fake_day([34200.015, 36000.0]), 0.01, 34300.005, None)  # an explicit start is kept
    assert explicit[0] == 34300.005


def test_session_window_defaults():
    full = np.array([34199.5, 40000.0, 57599.8])  # messages before 09:30: the first hour from 09:30 sharp
    assert session_window(full, None, None) == (34200.0, 37800.0)
    late = np.array([34200.015, 40000.0, 57599.8])  # first message after 09:30: resample picks 09:30 + k dt
    assert session_window(late, None, None) == (None, 37800.0)
    short = np.array([34300.0, 35000.0])
    assert session_window(short, None, None) == (None, 35000.0)
    assert session_window(late, 36000.0, 36600.0) == (36000.0, 36600.0)
    assert session_window(late, 30000.0, None) == (34200.015, 57599.8)  # never before the first message


def test_market_grid_of_a_synthetic_day_is_round(tmp_path):
    from data_loaders.synthetic import write_days

    paths = write_days(tmp_path, "thick", days=1, hours=0.05, seed=1)
    m = Market.from_paths([str(p) for p in paths], dt=0.1, features=FeatureConfig(dt=0.1, window_s=5.0, horizon_s=1.0))
    t = m.books[0].times
    k = (t - SESSION_OPEN) / 0.1
    assert np.allclose(k, np.round(k), atol=1e-6)
