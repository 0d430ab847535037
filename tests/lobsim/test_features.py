"""SWA (numpy and torch), the normaliser and the label threshold, against hand and slow references."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lobsim.features import (
    DOWN,
    FLAT,
    UP,
    LabelConfig,
    Normalizer,
    fit_threshold,
    make_labels,
    swa,
    swa_change,
    swa_torch,
)
from lobsim.grid import EMPTY_ASK, EMPTY_BID, level_mask


def random_snapshots(rng: np.random.Generator, n: int, L: int, dummies: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """n snapshots (n, 2, L) with realistic ladders around ~$50 and some empty deep levels."""
    mid = rng.integers(400_000, 600_000, size=n)
    j = np.arange(L)
    prices = np.empty((n, 2, L), np.int64)
    prices[:, 0] = mid[:, None] - 100 * (j + 1)
    prices[:, 1] = mid[:, None] + 100 * (j + 1)
    sizes = rng.integers(1, 500, size=(n, 2, L)).astype(np.int64)
    if dummies:
        depth = rng.integers(1, L + 1, size=(n, 2))
        empty = j[None, None, :] >= depth[:, :, None]
        prices[:, 0][empty[:, 0]] = EMPTY_BID
        prices[:, 1][empty[:, 1]] = EMPTY_ASK
        sizes[empty] = 0
    return prices, sizes


def slow_swa(prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    out = np.empty(prices.shape[0])
    for t in range(prices.shape[0]):
        num = den = 0
        for s in range(2):
            for lvl in range(prices.shape[2]):
                p = int(prices[t, s, lvl])
                if p in (EMPTY_ASK, EMPTY_BID):
                    continue
                num += p * int(sizes[t, s, lvl])
                den += int(sizes[t, s, lvl])
        out[t] = num / den / 10_000
    return out


def test_swa_hand_computation() -> None:
    # bid 10.00 x 100, 9.99 x 300; ask 10.02 x 200, empty level (dummy) must not count.
    prices = np.array([[[100_000, 99_900], [100_200, EMPTY_ASK]]], np.int64)
    sizes = np.array([[[100, 300], [200, 0]]], np.int64)
    expected = (10.00 * 100 + 9.99 * 300 + 10.02 * 200) / 600
    assert swa(prices, sizes)[0] == pytest.approx(expected, abs=1e-12)
    # A dummy level with (bogus) size is ignored as well.
    sizes2 = sizes.copy()
    sizes2[0, 1, 1] = 999
    assert swa(prices, sizes2)[0] == pytest.approx(expected, abs=1e-12)


def test_swa_matches_slow_loop_and_keeps_leading_axes() -> None:
    rng = np.random.default_rng(0)
    prices, sizes = random_snapshots(rng, 60, 10)
    np.testing.assert_allclose(swa(prices, sizes), slow_swa(prices, sizes), rtol=0, atol=1e-12)
    out = swa(prices.reshape(3, 20, 2, 10), sizes.reshape(3, 20, 2, 10))
    assert out.shape == (3, 20) and out.dtype == np.float64
    np.testing.assert_allclose(out.ravel(), slow_swa(prices, sizes), atol=1e-12)


def test_swa_zero_size_names_the_snapshot() -> None:
    rng = np.random.default_rng(1)
    prices, sizes = random_snapshots(rng, 10, 5)
    sizes[7] = 0
    with pytest.raises(ValueError, match=r"snapshot 7 "):
        swa(prices, sizes)
    with pytest.raises(ValueError, match=r"snapshot \(1, 2\)"):
        swa(prices.reshape(2, 5, 2, 5), sizes.reshape(2, 5, 2, 5))
    with pytest.raises(ValueError, match="must both be"):
        swa(prices, sizes[:, :, :3])


def test_swa_torch_equals_numpy_and_is_shift_invariant() -> None:
    rng = np.random.default_rng(2)
    prices, sizes = random_snapshots(rng, 40, 10)
    mask = torch.from_numpy(level_mask(prices))
    p = torch.from_numpy(prices).double() / 10_000
    s = torch.from_numpy(sizes).double()
    got = swa_torch(p, s, mask)
    np.testing.assert_allclose(got.numpy(), swa(prices, sizes), atol=1e-9)
    c = torch.linspace(40.0, 60.0, 40, dtype=torch.float64)[:, None, None]
    shifted = swa_torch(p - c, s, mask)
    np.testing.assert_allclose(shifted.numpy(), got.numpy() - c.ravel().numpy(), atol=1e-9)


def test_swa_torch_gradient_finite_differences_and_closed_form() -> None:
    rng = np.random.default_rng(3)
    prices, sizes = random_snapshots(rng, 4, 5)
    mask = torch.from_numpy(level_mask(prices))
    p = torch.from_numpy(prices).double() / 10_000
    s = torch.from_numpy(sizes).double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: swa_torch(p, x, mask), (s,), eps=1e-4, atol=1e-7)
    out = swa_torch(p, s, mask)
    out.sum().backward()
    total = (s.detach() * mask).sum(dim=(-2, -1))
    closed = torch.where(mask, (p - out.detach()[:, None, None]) / total[:, None, None], torch.zeros(()))
    torch.testing.assert_close(s.grad, closed)
    assert torch.all(s.grad[~mask] == 0)


def test_normalizer_fit_numpy_torch_and_json() -> None:
    rng = np.random.default_rng(4)
    w = 50.0 + np.cumsum(rng.normal(0, 0.01, size=(64, 30)), axis=1)
    norm = Normalizer.fit(w)
    d = w - w[:, -1:]
    assert norm.scale == pytest.approx(np.sqrt(np.mean(d**2)))
    x = norm.numpy(w)
    assert x.dtype == np.float32 and np.all(x[:, -1] == 0)
    assert np.mean(x.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-5)
    xt = norm.torch(torch.from_numpy(w))
    np.testing.assert_allclose(xt.numpy(), x, rtol=1e-5, atol=1e-5)
    # Shift-invariant: a per-window shift (the attack centres prices) changes nothing.
    shifted = norm.torch(torch.from_numpy(w - w[:, :1]).float())
    np.testing.assert_allclose(shifted.numpy(), x, atol=1e-4)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again == norm
    with pytest.raises(ValueError, match="positive"):
        Normalizer(scale=0.0)


def test_fit_threshold_gives_one_third_flat() -> None:
    rng = np.random.default_rng(5)
    for n in (3, 10, 1000, 30001):
        changes = rng.standard_t(3, size=n) + 0.3  # skewed: up and down end up unbalanced, flat stays 1/3
        tau = fit_threshold(changes)
        labels = make_labels(changes, tau)
        assert np.sum(labels == FLAT) == int(np.ceil(n / 3))
        assert np.sum(np.abs(changes) <= tau) == np.sum(labels == FLAT)
    tau = fit_threshold(changes, flat_fraction=0.5)
    assert abs(np.mean(make_labels(changes, tau) == FLAT) - 0.5) < 1e-3
    with pytest.raises(ValueError, match="no changes"):
        fit_threshold(np.array([]))


def test_make_labels_classes_and_symmetry() -> None:
    change = np.array([-0.02, -0.01, -0.005, 0.0, 0.005, 0.01, 0.02])
    np.testing.assert_array_equal(make_labels(change, 0.01), [DOWN, FLAT, FLAT, FLAT, FLAT, FLAT, UP])
    np.testing.assert_array_equal(make_labels(-change, 0.01), 2 - make_labels(change, 0.01))
    assert make_labels(change, 0.01).dtype == np.int64


def test_swa_change_absolute_and_relative() -> None:
    assert swa_change(np.array([50.0]), np.array([50.5]))[0] == pytest.approx(0.5)
    assert swa_change(np.array([50.0]), np.array([50.5]), relative=True)[0] == pytest.approx(0.01)
    with pytest.raises(ValueError, match="flat_fraction"):
        LabelConfig(flat_fraction=1.0)


def test_input_normalizer_matches_the_swa_normalizer_and_standardises_other_channels() -> None:
    from lobsim.features import InputNormalizer

    rng = np.random.default_rng(7)
    swa_w = 50 + np.cumsum(rng.normal(0, 0.01, size=(64, 30)), axis=1)
    other = rng.normal(3.0, 2.0, size=(64, 30))
    old = Normalizer.fit(swa_w)
    new = InputNormalizer.fit(swa_w, [True])
    assert new.scale == (old.scale,) and new.kinds == ("last",)
    np.testing.assert_array_equal(new.numpy(swa_w), old.numpy(swa_w))  # bit-identical numbers for SWA alone
    t = torch.from_numpy(swa_w)
    torch.testing.assert_close(new.torch(t), old.torch(t), rtol=0, atol=0)
    both = InputNormalizer.fit(np.stack([swa_w, other], -1), [True, False], ("swa", "imbalance"))
    x = both.numpy(np.stack([swa_w, other], -1))
    assert x.shape == (64, 30, 2) and x.dtype == np.float32
    np.testing.assert_allclose(x[..., 0], old.numpy(swa_w))
    assert abs(x[..., 1].mean()) < 1e-6 and abs(x[..., 1].std() - 1) < 1e-5
    shifted = np.stack([swa_w - 7.0, other], -1)  # price-like channels are shift-invariant, the others are not moved
    np.testing.assert_allclose(both.numpy(shifted), x, atol=1e-5)
    again = InputNormalizer.from_dict(json.loads(json.dumps(both.to_dict())))
    assert again == both
    assert InputNormalizer.from_dict(old.to_dict()) == new  # model files of version 1
    const = InputNormalizer.fit(np.stack([swa_w, np.full_like(other, 0.01)], -1), [True, False])
    assert const.scale[1] == 1.0  # a constant channel is not blown up
    with pytest.raises(ValueError, match="one entry per channel"):
        InputNormalizer(("swa",), ("last", "standard"), (0.0,), (1.0,))
    with pytest.raises(ValueError, match="unknown kind"):
        InputNormalizer(("swa",), ("log",), (0.0,), (1.0,))
