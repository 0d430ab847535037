"""Feature adapters: torch twin == numpy twin, gradients == finite differences, against hand/slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobsim import adapters as ad
from lobsim.grid import EMPTY_ASK, EMPTY_BID, level_mask
from tests.lobsim.test_features import random_snapshots

# Issue 11's adapters (others added later carry their own references and tests).
ALL = ("swa", "mid", "microprice", "imbalance", "depth_imbalance", "depth", "spread")


def book(seed: int = 0, T: int = 40, L: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Snapshots with empty deep levels, a few one-sided best quotes and ladders at two price levels."""
    rng = np.random.default_rng(seed)
    prices, sizes = random_snapshots(rng, T, L)
    prices[::2] = np.where(level_mask(prices[::2]), prices[::2] + 5_000_000, prices[::2])  # ~$550 next to ~$50
    prices[3, 1, :], sizes[3, 1, :] = EMPTY_ASK, 0  # no ask at all
    prices[T - 1, 0, :], sizes[T - 1, 0, :] = EMPTY_BID, 0  # no bid at all
    return prices, sizes


def torch_book(prices: np.ndarray, sizes: np.ndarray, shift: float = 0.0, dtype=torch.float64):
    m = level_mask(prices)
    P = torch.as_tensor(np.where(m, prices / 1e4 - shift, 0.0), dtype=dtype)[None]
    S = torch.as_tensor(np.where(m, sizes, 0), dtype=dtype)[None]
    return P, S, torch.as_tensor(m)[None]


def slow(name: str, p: np.ndarray, s: np.ndarray) -> list[float]:
    """Obviously-correct loop version of each adapter for one snapshot (p, s: (2, L))."""
    real = [[(int(p[k, j]) / 1e4, float(s[k, j])) for j in range(p.shape[1]) if p[k, j] not in (EMPTY_BID, EMPTY_ASK)]
            for k in range(2)]
    bid, ask = real
    if name == "swa":
        return [sum(x * q for x, q in bid + ask) / sum(q for _, q in bid + ask)]
    if name == "depth":
        return [sum(q for _, q in bid), sum(q for _, q in ask)]
    if name == "depth_imbalance":
        b, a = sum(q for _, q in bid), sum(q for _, q in ask)
        return [(b - a) / (b + a)]
    if name == "imbalance":
        b, a = (bid[0][1] if bid else 0.0), (ask[0][1] if ask else 0.0)
        return [(b - a) / (b + a) if b + a else 0.0]
    if name == "spread":
        return [ask[0][0] - bid[0][0] if bid and ask else 0.0]
    mid = (bid[0][0] + ask[0][0]) / 2 if bid and ask else (bid or ask)[0][0]
    if name == "mid":
        return [mid]
    if name == "microprice":
        if not (bid and ask):
            return [mid]
        (pb, sb), (pa, sa) = bid[0], ask[0]
        return [(pb * sa + pa * sb) / (sa + sb)]
    raise AssertionError(name)


@pytest.mark.parametrize("name", ALL)
def test_numpy_twin_matches_a_slow_reference(name: str) -> None:
    prices, sizes = book(1)
    got = ad.get(name).numpy(prices, sizes)
    assert got.shape == (prices.shape[0], ad.get(name).channels(prices.shape[2]))
    want = np.array([slow(name, prices[t], sizes[t]) for t in range(prices.shape[0])])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
def test_torch_twin_equals_numpy_and_price_like_channels_shift(name: str) -> None:
    prices, sizes = book(2)
    a = ad.get(name)
    want = a.numpy(prices, sizes)
    got = a.torch(*torch_book(prices, sizes))[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-9)
    # The attack centres prices per snippet: price-like channels move by the shift, the others do not move.
    shifted = a.torch(*torch_book(prices, sizes, shift=123.45))[0].numpy()
    np.testing.assert_allclose(shifted, want - (123.45 if a.price_like else 0.0), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ALL)
def test_gradients_match_finite_differences(name: str) -> None:
    prices, sizes = book(3, T=6, L=3)
    P, S, M = torch_book(prices, sizes)
    a = ad.get(name)
    # in the sizes (what the attacker changes) and in the prices, float64 central differences
    assert torch.autograd.gradcheck(lambda s: a.torch(P, s, M), (S.clone().requires_grad_(True),), eps=1e-3,
                                    atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda p: a.torch(p, S, M), (P.clone().requires_grad_(True),), eps=1e-5,
                                    atol=1e-6, rtol=1e-4)
    # masked levels get zero gradient; price-only channels get zero size-gradient (the attacker cannot move them)
    s = S.clone().requires_grad_(True)
    out = a.torch(P, s, M)
    if name in ("mid", "spread"):
        assert not out.requires_grad or torch.all(torch.autograd.grad(out.sum(), s, allow_unused=True)[0] == 0)
    else:
        out.sum().backward()
        assert torch.all(s.grad[~M] == 0) and s.grad.abs().sum() > 0


def test_float32_attack_precision_at_a_high_price() -> None:
    """At $550 centred float32 prices give the float64 numbers to well under a cent."""
    prices, sizes = book(4)
    for name in ALL:
        a = ad.get(name)
        centre = prices[level_mask(prices)].mean() / 1e4
        got = a.torch(*torch_book(prices, sizes, shift=centre, dtype=torch.float32))[0].double().numpy()
        want = a.numpy(prices, sizes) - (centre if a.price_like else 0.0)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 if name != "depth" else 1e-2)


def test_registry_inputs_and_channels() -> None:
    assert ad.parse_inputs(None) == ("swa",)
    assert ad.parse_inputs("swa, imbalance,mid") == ("swa", "imbalance", "mid")
    assert ad.n_channels(("swa", "depth", "spread"), 10) == 4
    assert ad.channel_names(("swa", "depth"), 10) == ["swa", "depth_bid", "depth_ask"]
    assert ad.price_like_channels(("swa", "imbalance", "mid", "depth"), 5) == [True, False, True, False, False]
    with pytest.raises(ValueError, match="unknown input 'vwap'.*--inputs"):
        ad.parse_inputs("swa,vwap")
    with pytest.raises(ValueError, match="more than once"):
        ad.parse_inputs("swa,swa")
    with pytest.raises(ValueError, match="no input"):
        ad.parse_inputs(" , ")
    with pytest.raises(ValueError, match="already registered"):
        ad.register(ad.get("swa"))
    # adding an adapter is one entry: it then works everywhere
    extra = ad.Adapter("best_bid_size", False, lambda L: 1, lambda P, S, M: torch.where(M, S, 0)[..., 0, :1],
                       lambda p, s: np.where(level_mask(p), s, 0)[..., 0, :1].astype(np.float64), "test only")
    ad.register(extra)
    try:
        prices, sizes = book(5)
        x = ad.features_numpy(("swa", "best_bid_size"), prices, sizes)
        np.testing.assert_array_equal(x[:, 1], np.where(level_mask(prices[:, 0, 0]), sizes[:, 0, 0], 0))
        np.testing.assert_allclose(ad.features_torch(("swa", "best_bid_size"), *torch_book(prices, sizes))[0], x)
    finally:
        del ad.REGISTRY["best_bid_size"]


def test_undefined_snapshots_get_clear_errors() -> None:
    prices, sizes = book(6)
    prices[5, :, :] = [[EMPTY_BID] * 5, [EMPTY_ASK] * 5]
    sizes[5] = 0
    with pytest.raises(ValueError, match="mid: snapshot 5 has no best bid and no best ask"):
        ad.get("mid").numpy(prices, sizes)
    with pytest.raises(ValueError, match="swa: snapshot 5"):
        ad.get("swa").numpy(prices, sizes)
    with pytest.raises(ValueError, match=r"must both be \(\.\.\., 2, L\)"):
        ad.features_numpy(("imbalance",), prices[:, :1], sizes[:, :1])
