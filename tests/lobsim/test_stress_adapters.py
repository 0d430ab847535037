"""The adapters added for users' models (issue 12): sizes, prices, weighted_imbalance, ofi against slow loop
references, torch twin == numpy twin, gradients vs finite differences (the attacker changes sizes), and the
stress normalisations against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobsim import adapters as ad
from lobsim.grid import EMPTY_ASK, EMPTY_BID, level_mask
from tests.lobsim.test_adapters import book, torch_book

NEW = ("sizes", "prices", "weighted_imbalance", "ofi")


def slow_extra(name: str, prices: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Obviously-correct loops over the snapshots (T, 2, L) of one day."""
    T, _, L = prices.shape
    out = []
    for t in range(T):
        real = [[(prices[t, k, j] / 1e4, float(sizes[t, k, j])) if prices[t, k, j] not in (EMPTY_BID, EMPTY_ASK)
                 else None for j in range(L)] for k in range(2)]
        if name == "sizes":
            out.append([q[1] if q else 0.0 for k in range(2) for q in real[k]])
        elif name == "prices":
            row = []
            for k in range(2):
                reals = [(j, q[0]) for j, q in enumerate(real[k]) if q]
                if not reals:  # an empty side: the other side's best real price
                    other = [q[0] for q in real[1 - k] if q]
                    row += [other[0]] * L
                    continue
                for j in range(L):
                    shallower = [p for jj, p in reals if jj <= j]
                    row.append(shallower[-1] if shallower else reals[0][1])
            out.append(row)
        elif name == "weighted_imbalance":
            b = sum(q[1] / (j + 1) for j, q in enumerate(real[0]) if q)
            a = sum(q[1] / (j + 1) for j, q in enumerate(real[1]) if q)
            out.append([(b - a) / (b + a) if b + a else 0.0])
        elif name == "ofi":
            if t == 0:
                out.append([0.0])
                continue
            def best(tt: int, k: int) -> tuple[float, float]:
                p = prices[tt, k, 0]
                if p in (EMPTY_BID, EMPTY_ASK):
                    return (-np.inf if k == 0 else np.inf), 0.0
                return float(p), float(sizes[tt, k, 0])
            (pb, qb), (pb0, qb0) = best(t, 0), best(t - 1, 0)
            (pa, qa), (pa0, qa0) = best(t, 1), best(t - 1, 1)
            e = (qb if pb >= pb0 else 0.0) - (qb0 if pb <= pb0 else 0.0) - (qa if pa <= pa0 else 0.0) \
                + (qa0 if pa >= pa0 else 0.0)
            out.append([e])
    return np.array(out, np.float64)


@pytest.mark.parametrize("name", NEW)
def test_new_adapters_match_slow_references_and_their_torch_twins(name: str) -> None:
    prices, sizes = book(11)
    prices[5:8, 0] = prices[4, 0]  # repeated best bids: the ofi's "price unchanged" branch
    a = ad.get(name)
    got = a.numpy(prices, sizes)
    np.testing.assert_allclose(got, slow_extra(name, prices, sizes), rtol=1e-12, atol=1e-12)
    assert got.shape[1] == a.channels(prices.shape[2]) == len(a.names(prices.shape[2]))
    tw = a.torch(*torch_book(prices, sizes))[0].numpy()
    np.testing.assert_allclose(tw, got, rtol=1e-12, atol=1e-9)
    shifted = a.torch(*torch_book(prices, sizes, shift=42.0))[0].numpy()  # the attacks centre prices
    np.testing.assert_allclose(shifted, got - (42.0 if a.price_like else 0.0), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", NEW)
def test_new_adapters_gradients_match_finite_differences(name: str) -> None:
    prices, sizes = book(12, T=6, L=3)
    prices[3, 0] = prices[2, 0]
    P, S, M = torch_book(prices, sizes)
    a = ad.get(name)
    s = S.clone().requires_grad_(True)
    out = a.torch(P, s, M)
    if name == "prices":  # the attacker cannot move prices: no size gradient at all
        assert not out.requires_grad
        return
    assert torch.autograd.gradcheck(lambda x: a.torch(P, x, M), (S.clone().requires_grad_(True),), eps=1e-3,
                                    atol=1e-6, rtol=1e-4)
    out.sum().backward()
    assert torch.all(s.grad[~M] == 0) and s.grad.abs().sum() > 0


def test_prices_fill_and_empty_snapshot_error() -> None:
    prices, sizes = book(13, T=8, L=3)
    m = level_mask(prices)
    filled = ad.get("prices").numpy(prices, sizes).reshape(8, 2, 3)
    assert np.all(filled[m] == prices[m] / 1e4)  # real levels untouched
    prices[2], sizes[2] = [[EMPTY_BID] * 3, [EMPTY_ASK] * 3], 0
    with pytest.raises(ValueError, match="prices: snapshot 2 has no real price level"):
        ad.get("prices").numpy(prices, sizes)


def test_stress_normalisations_by_hand() -> None:
    from lobsim.stress.config import ChannelSpec
    from lobsim.stress.model import normalise

    x = torch.tensor([[[10.0], [11.0], [12.1]]], dtype=torch.float64)
    cases = {"none": [10, 11, 12.1], "last": [-2.1, -1.1, 0], "first": [0, 1, 2.1], "diff": [0, 1, 1.1],
             "return_last": [10 / 12.1 - 1, 11 / 12.1 - 1, 0], "returns": [0, 0.1, 0.1],
             "log_returns": [0, np.log(1.1), np.log(1.1)], "log1p": list(np.log1p([10, 11, 12.1])),
             "zscore": [(10 - 11) / 2, 0, (12.1 - 11) / 2]}
    for norm, want in cases.items():
        spec = ChannelSpec(norm=norm, mean=11.0, std=2.0, scale=0.5)
        got = normalise(x, spec)[0, :, 0].numpy()
        np.testing.assert_allclose(got, np.array(want) / 0.5, rtol=1e-12, atol=1e-12, err_msg=norm)
