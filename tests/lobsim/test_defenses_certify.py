"""Certified capital (issue 13): the channels' linear-fractional forms equal the adapters, the bounds hold, the
adjoint is the adjoint, the folded network is the model, the certified capital equals the exact minimum on a planted
linear model, it is never above the capital of any successful attack, and interval bounds are never tighter than
the linear relaxation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobsim.adapters import features_torch, n_channels, price_like_channels
from lobsim.attacks.capital import book_tensors_centred, evaluate_orders
from lobsim.attacks.ensemble import EnsembleAttack
from lobsim.attacks.objectives import PredictionChange
from lobsim.dataset import FeatureConfig
from lobsim.defenses.adjoint import adjoint_rows
from lobsim.defenses.certify import CertifyConfig, certify, fold, margin_bounds
from lobsim.defenses.fractional import SUPPORTED, best_offset, fractional, lower, max_kappa_shares, ranges, upper
from lobsim.features import InputNormalizer
from lobsim.models import ModelConfig, build_model
from lobsim.propagation import TouchPropagator, propagate
from lobsim.train import TrainConfig, TrainedModel
from tests.lobsim.test_capital_attack import random_batch


def masked_batch(B: int = 6, W: int = 24, L: int = 4, seed: int = 3):
    """Random books with some empty deep ask levels (masked) and executions."""
    batch = random_batch(B=B, W=W, L=L, seed=seed)
    batch.prices[:, ::5, 1, L - 1] = 9999999999
    batch.sizes[:, ::5, 1, L - 1] = 0
    return batch


def make_trained(batch, kind: str, inputs: tuple[str, ...], seed: int = 0, hidden=None, pool: int = 1):
    """A project model (lobsim.models) with an input normaliser fitted on the batch's own channels."""
    torch.manual_seed(seed)
    W, L = batch.window, batch.levels
    mc = ModelConfig(kind=kind, preset="small", window=W, channels=n_channels(inputs, L), hidden=hidden, pool=pool)
    P, S, M, _ = book_tensors_centred(batch, "cpu", torch.float64)
    V = features_torch(inputs, P, S, M).numpy()
    norm = InputNormalizer.fit(V, price_like_channels(inputs, L), tuple(inputs))
    cfg = TrainConfig(model=mc, features=FeatureConfig(dt=0.01, window_s=W * 0.01, horizon_s=0.1), inputs=list(inputs))
    return TrainedModel(build_model(mc).eval(), norm, 0.01, cfg)


def test_fractional_forms_equal_the_adapters_and_bounds_hold() -> None:
    batch = masked_batch()
    P, S, M, centre = book_tensors_centred(batch, "cpu", torch.float64)
    fr = fractional(SUPPORTED, P, S, M)
    rng = np.random.default_rng(0)
    B, W, _, L = P.shape
    price = torch.where(M, P + centre[:, None, None, None], torch.tensor(float("inf"), dtype=torch.float64))
    price = price.reshape(B, W, 2 * L)
    eps = torch.full((B,), 30_000.0, dtype=torch.float64)
    lo, hi = ranges(fr, price, eps)
    K = max_kappa_shares(fr, price, eps)
    bounds = [(lower(fr, K, c), upper(fr, K, c), c) for c in
              (torch.zeros_like(fr.f0), best_offset(fr, price, eps, K, "upper"))]
    for trial in range(20):
        # random shares at each snapshot worth at most eps (sparse or spread), zero at masked levels
        w = rng.random((B, W, 2 * L)) * (rng.random((B, W, 2 * L)) < (0.2 if trial % 2 else 1.0))
        dollars = w / np.maximum(w.sum(-1, keepdims=True), 1e-12) * 30_000.0 * rng.random((B, W, 1))
        d = torch.as_tensor(dollars) / price  # shares; 0 where masked (price inf)
        delta = d.reshape(B, W, 2, L)
        ref = features_torch(SUPPORTED, P, S + delta, M)
        v = fr.value(delta)
        assert torch.allclose(v, ref, rtol=1e-9, atol=1e-7)
        assert bool((v >= lo - 1e-9).all() and (v <= hi + 1e-9).all())
        for lsl, usl, c in bounds:
            lin_lo = fr.f0 - c + (lsl * d[:, :, None]).sum(-1)
            lin_hi = fr.f0 + c + (usl * d[:, :, None]).sum(-1)
            assert bool((lin_lo <= v + 1e-9).all()), "lower linear bound violated"
            assert bool((lin_hi >= v - 1e-9).all()), "upper linear bound violated"
    # the ranges are attained: the largest SWA of a snapshot is the value at one vertex (all dollars at one level)
    b, t = 1, 7
    vals = []
    for k in range(2 * L):
        if torch.isfinite(price[b, t, k]):
            d = torch.zeros(B, W, 2 * L, dtype=torch.float64)
            d[b, t, k] = 30_000.0 / price[b, t, k]
            vals.append(float(fr.value(d.reshape(B, W, 2, L))[b, t, 0]))
    assert max(vals) == pytest.approx(float(hi[b, t, 0]), rel=1e-12)


def test_unsupported_inputs_and_models_are_refused() -> None:
    batch = masked_batch(B=2)
    P, S, M, _ = book_tensors_centred(batch, "cpu", torch.float64)
    with pytest.raises(ValueError, match="ofi.*not linear-fractional"):
        fractional(("swa", "ofi"), P, S, M)
    with pytest.raises(ValueError, match="only the project's Linear and MLP"):
        certify(make_trained(batch, "lstm", ("swa",)), batch)
    with pytest.raises(ValueError, match="eps_min < eps_max"):
        CertifyConfig(eps_min=10.0, eps_max=1.0)


def test_adjoint_rows_is_the_adjoint_of_the_propagation() -> None:
    batch = masked_batch(B=3, W=20)
    op = TouchPropagator(batch, dtype=torch.float64)
    rng = np.random.default_rng(1)
    N = int(np.prod(batch.prices.shape[1:]))
    coef = torch.as_tensor(rng.normal(size=(3, N, 5)))
    g = adjoint_rows(op, coef)
    a = torch.as_tensor(rng.random(batch.prices.shape) * batch.mask)
    delta = op(a).reshape(3, N)
    for r in range(5):  # <P a, c> = <a, P^T c> for every row
        lhs = (delta * coef[:, :, r]).sum(1)
        rhs = (a.reshape(3, N) * g[:, :, r]).sum(1)
        assert torch.allclose(lhs, rhs, rtol=1e-10)
    torch_op = TouchPropagator(batch, dtype=torch.float64, backend="torch")
    assert torch.allclose(adjoint_rows(torch_op, coef), g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind,hidden,pool", [("linear", None, 2), ("mlp", [16, 8], 3)])
def test_folded_network_is_the_model(kind, hidden, pool) -> None:
    batch = masked_batch()
    inputs = ("swa", "imbalance", "depth")
    tm = make_trained(batch, kind, inputs, hidden=hidden, pool=pool)
    P, S, M, _ = book_tensors_centred(batch, "cpu", torch.float64)
    net = fold(tm)
    P32, S32, M32 = book_tensors_centred(batch)[:3]
    with torch.no_grad():
        ref = tm.logits_from_book(P32, S32, M32).double()
    assert torch.allclose(net.forward(fractional(inputs, P, S, M).f0), ref, atol=2e-5)


def planted_depth_model(batch, b_flat: float = 1.0):
    """A linear model on the bid/ask depth: logits (0, b_flat, x) with x the normalised bid depth at the last step.

    It predicts flat until x exceeds b_flat; adding bid shares is the only way to move x. The cheapest way: the
    missing shares at the lowest real bid price of the last snapshot (placed there or earlier at that price)."""
    tm = make_trained(batch, "linear", ("depth",))
    W, C = batch.window, 2
    with torch.no_grad():
        lin = tm.model.net[0]
        lin.weight.zero_()
        lin.bias.copy_(torch.tensor([0.0, b_flat, 0.0]))
        lin.weight[2, (W - 1) * C + 0] = 1.0
    return tm


def test_certified_capital_is_the_exact_minimum_on_a_planted_model() -> None:
    batch = masked_batch(B=4, W=12, L=3, seed=5)
    tm = planted_depth_model(batch)
    centre, scale = tm.normalizer.centre[0], tm.normalizer.scale[0]
    bid_depth = np.where(batch.mask[:, -1, 0], batch.sizes[:, -1, 0], 0).sum(1)
    x0 = (bid_depth - centre) / scale
    keep = x0 < 1.0 - 1e-3  # the planted model predicts flat there
    assert keep.sum() >= 2
    need = (1.0 - x0) * scale  # shares to add at the last snapshot
    cheapest = np.where(batch.mask[:, -1, 0], batch.prices[:, -1, 0], np.iinfo(np.int64).max).min(1) / 1e4
    exact = need * cheapest  # continuous optimum (dollars): the model is linear in the orders
    cert = certify(tm, batch, CertifyConfig(iterations=20))
    for b in np.flatnonzero(keep):
        assert cert.linear[b] <= exact[b] * (1 + 1e-9)
        assert cert.linear[b] == pytest.approx(exact[b], rel=1e-3)  # the relaxation is exact on linear channels
        assert cert.interval[b] <= cert.linear[b]
    # independent check on the exact engine: the integer optimum (whole shares at the cheapest bid) flips the model
    for b in np.flatnonzero(keep):
        one = batch.select([b])
        j = int(np.argmin(np.where(one.mask[0, -1, 0], one.prices[0, -1, 0], np.iinfo(np.int64).max)))
        orders = np.zeros(one.prices.shape, np.int64)
        orders[0, -1, 0, j] = int(np.ceil(need[b] + 1e-9))
        pred, _ = evaluate_orders(tm, one, orders)
        assert pred[0] == 2
        orders[0, -1, 0, j] -= 1  # one share less does not
        assert evaluate_orders(tm, one, orders)[0][0] == 1


@pytest.fixture(scope="module")
def attacked_models():
    batch = masked_batch(B=16, W=24, L=4, seed=7)
    out = {}
    for kind, hidden in (("linear", None), ("mlp", [16])):
        tm = make_trained(batch, kind, ("swa", "imbalance"), seed=2, hidden=hidden)
        pred, _ = evaluate_orders(tm, batch, None)
        batch.labels = pred
        recs = EnsembleAttack(budget=2e6, max_iter=25, restarts=1, search_iter=60, batch_size=16,
                              objective=PredictionChange())(tm, batch, seed=0)
        out[kind] = (tm, batch.select(np.arange(batch.batch_size)), recs)
    return out


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_certified_capital_is_never_above_a_successful_attack(attacked_models, kind) -> None:
    tm, batch, recs = attacked_models[kind]
    cert = certify(tm, batch, CertifyConfig(iterations=12))
    won = [r for r in recs if r.success]
    assert len(won) >= batch.batch_size // 2
    for r in won:
        assert cert.linear[r.index] <= r.capital, (r.index, cert.linear[r.index], r.capital)
        assert cert.interval[r.index] <= cert.linear[r.index]
    # at the attack's own capital no bound may certify the snippet (the attack's orders fool the model there)
    idx = np.array([r.index for r in won])
    mb = margin_bounds(tm, batch.select(idx), np.array([r.capital for r in won]), raw=True)
    assert (mb["linear"] <= 0).all() and (mb["interval"] <= 0).all()
    assert (mb["interval"] <= mb["linear"]).all()


def test_interval_bounds_are_looser_than_the_linear_relaxation(attacked_models) -> None:
    tm, batch, _ = attacked_models["mlp"]
    for eps in (100.0, 3_000.0, 100_000.0):
        mb = margin_bounds(tm, batch, eps, raw=True)
        assert (mb["interval"] <= mb["linear"]).all()
        assert (mb["linear"] <= mb["margin"] + 1e-9).all()
        # the relaxation alone (not maxed with the interval bound) is tighter on most snippets
        assert np.mean(mb["linear_raw"] > mb["interval"]) > 0.5
    small = margin_bounds(tm, batch, 1e-6)  # a vanishing budget leaves the clean margin
    assert np.allclose(small["linear"], small["margin"], atol=1e-6)


def test_certificates_are_sound_against_exact_random_orders(attacked_models) -> None:
    tm, batch, _ = attacked_models["linear"]
    eps = 20_000.0
    mb = margin_bounds(tm, batch, eps)
    rng = np.random.default_rng(4)
    P, S, M = book_tensors_centred(batch)[:3]
    y = torch.as_tensor(mb["pred"])
    dollars = np.where(batch.mask, batch.prices, 0) / 1e4
    for _ in range(30):
        orders = np.zeros(batch.prices.shape, np.int64)
        for b in range(batch.batch_size):
            real = np.flatnonzero(batch.mask[b].ravel())
            pick = rng.choice(real, rng.integers(1, 4))
            w = rng.random(pick.size)
            orders[b].reshape(-1)[pick] = np.floor(eps * w / w.sum() / dollars[b].reshape(-1)[pick])
        d = propagate(orders, batch).delta
        with torch.no_grad():
            z = tm.logits_from_book(P, S + torch.as_tensor(d, dtype=torch.float32), M).double()
        m = z.gather(1, y[:, None])[:, 0] - z.masked_fill(torch.nn.functional.one_hot(y, 3).bool(), -1e9).amax(1)
        assert (mb["linear"] <= m.numpy() + 1e-4).all()
