"""Block bootstrap against closed forms: binomial on independent snippets, larger on overlapping ones."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lobsim.stats import accuracy_se, binomial_se, block_bootstrap, block_ids, compare_with_baselines


def test_independent_snippets_give_the_binomial_error() -> None:
    """One snippet per block (starts far apart): the bootstrap SE is the binomial SE."""
    rng = np.random.default_rng(0)
    n = 4000
    correct = rng.random(n) < 0.4
    day, start = np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * 1000  # every snippet in its own block
    r = accuracy_se(correct, day, start, block=700, n_boot=4000, seed=1)
    assert r["n_blocks"] == n
    binom = binomial_se(r["accuracy"], n)
    assert r["binomial_se"] == pytest.approx(binom)
    # Monte Carlo error of an SD from 4,000 replicates is about 1.1%.
    assert r["se"] == pytest.approx(binom, rel=0.05)


def test_overlapping_snippets_give_a_larger_error_equal_to_the_block_formula() -> None:
    """Outcomes that persist over 50 consecutive starts (as overlapping windows do) are 50x less informative."""
    rng = np.random.default_rng(2)
    nb, per = 200, 50
    block_outcome = rng.random(nb) < 0.4
    correct = np.repeat(block_outcome, per)
    day = np.zeros(nb * per, np.int64)
    start = np.arange(nb * per, dtype=np.int64)  # consecutive starts: blocks of 50 steps hold 50 snippets
    r = accuracy_se(correct, day, start, block=per, n_boot=4000, seed=3)
    p = r["accuracy"]
    assert r["n_blocks"] == nb
    # Equal blocks: the ideal bootstrap variance is the population variance of the block means over nb.
    ideal = math.sqrt(block_outcome.astype(float).var() / nb)
    assert r["se"] == pytest.approx(ideal, rel=0.05)
    assert r["se"] > 5 * binomial_se(p, nb * per)  # sqrt(50) ~ 7 times the binomial figure


def test_unequal_blocks_and_days_against_a_slow_bootstrap() -> None:
    """Vectorised replicate weights give the same distribution as a plain loop over resampled blocks."""
    rng = np.random.default_rng(4)
    n = 600
    day = rng.integers(0, 3, n)
    start = rng.integers(0, 5000, n)
    values = (rng.random(n) < 0.3 + 0.1 * day).astype(float)
    r = block_bootstrap(values, day, start, block=400, n_boot=3000, seed=5)
    ids = block_ids(day, start, 400)
    nb = ids.max() + 1
    sums, counts = np.bincount(ids, weights=values), np.bincount(ids)
    slow_rng = np.random.default_rng(99)
    reps = []
    for _ in range(3000):
        pick = slow_rng.integers(0, nb, nb)
        reps.append(sums[pick].sum() / counts[pick].sum())
    assert r.mean == pytest.approx(values.mean())
    assert r.se == pytest.approx(np.std(reps, ddof=1), rel=0.08)
    assert r.ci_low < r.mean < r.ci_high
    # By day: three blocks.
    assert block_bootstrap(values, day, start, block="day", n_boot=200).n_blocks == 3
    # Same seed, same numbers; 2-D values give one result per column.
    again = block_bootstrap(values, day, start, block=400, n_boot=3000, seed=5)
    assert again.se == r.se
    cols = block_bootstrap(np.stack([values, 1 - values], 1), day, start, block=400, n_boot=3000, seed=5)
    assert cols[0].se == pytest.approx(r.se) and cols[1].se == pytest.approx(r.se)


def test_baselines_and_paired_differences() -> None:
    rng = np.random.default_rng(6)
    n = 3000
    y = rng.choice(3, size=n, p=[0.3, 0.45, 0.25])
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, 3, n))  # a model with skill
    day, start = np.zeros(n, np.int64), np.arange(n, dtype=np.int64) * 10
    out = compare_with_baselines(y, pred, day, start, block=100, train_majority=0, n_boot=2000, seed=0)
    acc = float(np.mean(pred == y))
    assert out["accuracy"]["accuracy"] == pytest.approx(acc)
    assert out["best_constant"]["class"] == 1 and out["best_constant"]["accuracy"] == pytest.approx(np.mean(y == 1))
    assert out["majority"]["class"] == 0 and out["majority"]["accuracy"] == pytest.approx(np.mean(y == 0))
    d = out["vs_best_constant"]
    assert d["diff"] == pytest.approx(acc - np.mean(y == 1))
    assert d["z"] == pytest.approx(d["diff"] / d["se"]) and d["z"] > 10
    assert out["vs_majority"]["diff"] == pytest.approx(acc - np.mean(y == 0))
    # A constant predictor has no skill: paired difference exactly 0 against itself.
    const = compare_with_baselines(y, np.ones(n, np.int64), day, start, block=100, train_majority=1, n_boot=200)
    assert const["vs_best_constant"]["diff"] == 0 and const["vs_best_constant"]["se"] == 0


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="block must be a positive"):
        block_ids(np.zeros(3), np.arange(3), 0)
    with pytest.raises(ValueError, match="3 values but 2"):
        block_bootstrap(np.ones(3), np.zeros(2), np.arange(2), 10)
    with pytest.raises(ValueError, match="n >= 1"):
        block_bootstrap(np.ones(0), np.zeros(0), np.arange(0), 10)
    with pytest.raises(ValueError, match="2 labels but 3"):
        compare_with_baselines(np.zeros(2), np.zeros(3), np.zeros(2), np.arange(2), 10, 0)
