"""Capital-constrained attack: planted closed-form case, budget never exceeded, records agree with the exact engine,
the one-run capital curve equals separate runs, transfer evaluation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lobsim.attacks.capital import CapitalAttack, book_tensors, evaluate_orders, round_orders, transfer_accuracy
from lobsim.attacks.records import (
    AttackRecord,
    adversarial_accuracy,
    capital_curve,
    dense_orders,
    read_jsonl,
    summarize,
    write_jsonl,
)
from lobsim.features import Normalizer, swa
from lobsim.metrics import capital, cost, relative_size
from lobsim.models import ModelConfig, build_model
from lobsim.propagation import propagate
from lobsim.snippets import SnippetBatch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one torch thread avoids spin-wait overhead on the shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# ---- generated books and small models (shared with test_universal_attack) ----


def random_batch(B: int, W: int, L: int, seed: int, base: int = 90_000, tick: int = 100,
                 exec_rate: float = 0.3, move_prob: float = 1 / 3) -> SnippetBatch:
    """B snippets of a random-walk book around ``base`` (LOBSTER units), one tick spread, random executions.

    The mid moves one tick with probability ``move_prob`` per step; sizes are redrawn every step."""
    rng = np.random.default_rng(seed)
    prices = np.empty((B, W, 2, L), np.int64)
    sizes = rng.integers(100, 3000, size=(B, W, 2, L)).astype(np.int64)
    ptr = np.zeros((B, W + 1), np.int64)
    es, ep, ev = [], [], []
    n = 0
    j = np.arange(L)
    for b in range(B):
        m = base // tick + int(rng.integers(-50, 50))
        for t in range(W):
            m += int(rng.choice([-1, 1])) if rng.random() < move_prob else 0
            prices[b, t, 0] = (m - j) * tick
            prices[b, t, 1] = (m + 1 + j) * tick
            ptr[b, t] = n
            if rng.random() < exec_rate:
                s, lv = int(rng.integers(0, 2)), int(rng.integers(0, min(L, 3)))
                es.append(s)
                ep.append(int(prices[b, t, s, lv]))
                ev.append(int(rng.integers(1, 500)))
                n += 1
        ptr[b, W] = n
    return SnippetBatch(day=np.zeros(B, np.int64), start=np.arange(B, dtype=np.int64) * W, prices=prices,
                        sizes=sizes, exec_ptr=ptr, exec_side=np.array(es, np.int8), exec_price=np.array(ep, np.int64),
                        exec_volume=np.array(ev, np.int64), exec_hidden=np.zeros(n, bool),
                        labels=np.full(B, -1, np.int64))


class TinyModel:
    """A real valuation model (lobsim.models) with a normaliser: logits from SWA windows in dollars."""

    def __init__(self, W: int, kind: str = "mlp", seed: int = 0, scale: float = 0.003) -> None:
        torch.manual_seed(seed)
        cfg = ModelConfig(kind=kind, preset="small", window=W, hidden=[16] if kind != "linear" else None,
                          pool=2 if kind == "lstm" else 1, layers=1 if kind == "lstm" else None)
        self.model = build_model(cfg).eval()
        self.normalizer = Normalizer(scale=scale)

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalizer.torch(s))


def label_batch(batch: SnippetBatch, model, wrong_every: int = 5) -> SnippetBatch:
    """Labels = the model's clean prediction, except every ``wrong_every``-th snippet gets another class."""
    pred, _ = evaluate_orders(model, batch, None)
    y = pred.copy()
    if wrong_every:
        y[::wrong_every] = (y[::wrong_every] + 1) % 3
    batch.labels = y
    return batch


# ---- planted model with a closed-form cheapest manipulation ----


class PlantedModel:
    """logits = (b - k d, 0, k d - b) with d = SWA[last] - SWA[first]: predicts down until d > b / k."""

    def __init__(self, theta: float) -> None:
        self.theta = theta

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        d = (s[:, -1] - s[:, 0]) / self.theta
        return torch.stack([1.0 - d, torch.zeros_like(d), d - 1.0], dim=1)


def planted_batch(W: int = 4) -> SnippetBatch:
    """A static book: near levels one cent apart, the far level 50 cents out, on both sides.

    The first snapshot holds 10 million shares at the best levels, so moving SWA[first] is ~10,000x dearer than
    moving SWA[last]; executions at every price in step 1 fill any order placed at the first snapshot. The
    cheapest way to make d = SWA[last] - SWA[first] exceed theta is then N shares at the far ask, at t >= 1.
    """
    bid = np.array([1_000_000, 999_900, 995_000])
    ask = np.array([1_000_100, 1_000_200, 1_005_000])
    prices = np.broadcast_to(np.stack([bid, ask])[None, None], (1, W, 2, 3)).copy()
    sizes = np.broadcast_to(np.array([[500, 500, 100], [500, 500, 100]])[None, None], (1, W, 2, 3)).copy()
    sizes[0, 0, :, 0] = 10_000_000
    ptr = np.zeros((1, W + 1), np.int64)
    ptr[0, 2:] = 6  # six executions in step 1
    return SnippetBatch(day=np.zeros(1, np.int64), start=np.zeros(1, np.int64), prices=prices, sizes=sizes,
                        exec_ptr=ptr, exec_side=np.array([0, 0, 0, 1, 1, 1], np.int8),
                        exec_price=np.concatenate([bid, ask]).astype(np.int64), exec_volume=np.ones(6, np.int64),
                        exec_hidden=np.zeros(6, bool), labels=np.zeros(1, np.int64))


def test_rounding_is_floor_x_plus_r():
    assert round_orders(np.array([0.8]), 0.3)[0] == 1  # the thesis' example R_0.3(0.8) = 1
    x = np.array([0.0, 0.04, 0.05, 0.5, 1.0, 1.04, 1.05, 2.7])
    assert np.array_equal(round_orders(x, 0.95), [0, 0, 1, 1, 1, 1, 2, 3])
    assert torch.equal(round_orders(torch.tensor([0.04, 0.06, 3.0]), 0.95), torch.tensor([0.0, 1.0, 3.0]))


def test_planted_model_cheapest_manipulation():
    batch = planted_batch()
    swa0 = float(swa(batch.prices[0, 1], batch.sizes[0, 1]))
    S = float(batch.sizes[0, 1].sum())
    far = 100.50
    theta = 0.05  # dollars of SWA rise needed
    model = PlantedModel(theta)
    # Integer optimum: the cheapest way to raise SWA[last] by theta is N shares at the far ask (price per unit of
    # effect is smallest there); N (far - swa0 - theta) > theta S. Lowering SWA[first] instead costs ~10^4 x more,
    # so the LP bound (N real) bounds every attack from below.
    n_min = math.floor(theta * S / (far - swa0 - theta)) + 1
    lp_bound = theta * S / (far - swa0 - theta) * far
    recs = CapitalAttack(budget=1e7, step_shares=2.0, max_iter=500)(model, batch, seed=0)
    rec = recs[0]
    assert rec.success and rec.status == "success" and rec.pred_after != 0
    orders = dense_orders(recs, batch.window, batch.levels)[0]
    far_ask = orders[:, 1, 2].sum()
    assert far_ask >= 0.97 * orders.sum()  # nearly everything at the far level of the ask side
    assert orders[:, 0].sum() == 0  # nothing on the bid side (it would lower the SWA)
    assert orders[0].sum() == 0  # nothing at the first snapshot (it would raise SWA[first] too)
    assert rec.capital >= lp_bound - 1e-6  # no attack beats the LP bound
    assert rec.capital <= 1.05 * n_min * far  # within 5% of the integer optimum


def test_budget_below_minimum_fails_and_returns_orders_within_budget():
    batch = planted_batch()
    model = PlantedModel(0.05)
    budget = 20_000.0  # the integer optimum needs ~ $63k
    rec = CapitalAttack(budget=budget, step_shares=2.0, max_iter=500)(model, batch, seed=0)[0]
    assert not rec.success and rec.status == "budget"
    assert 0 < rec.capital <= budget
    assert rec.peak_capital > budget
    assert adversarial_accuracy([rec]) == 1.0


@pytest.fixture(scope="module")
def attacked():
    batch = random_batch(B=15, W=40, L=5, seed=1)
    model = TinyModel(40, "mlp", seed=0)
    label_batch(batch, model)
    atk = CapitalAttack(budget=3e5, max_iter=40, batch_size=8, step_shares=5.0)
    return batch, model, atk, atk(model, batch, seed=3)


def test_budget_never_exceeded_and_records_match_exact_engine(attacked):
    batch, model, atk, recs = attacked
    assert len(recs) == batch.batch_size and [r.index for r in recs] == list(range(batch.batch_size))
    orders = dense_orders(recs, batch.window, batch.levels)
    caps = capital(orders, batch.prices)
    assert np.all(caps <= atk.budget)
    prop = propagate(orders, batch)
    pred, delta = evaluate_orders(model, batch, orders)
    assert np.array_equal(delta, prop.delta)
    costs = cost(orders, batch, prop)
    sizes = relative_size(prop.delta, batch.sizes, batch.mask)
    for b, r in enumerate(recs):
        assert r.capital == pytest.approx(caps[b], abs=1e-6)
        assert r.pred_after == pred[b]
        assert r.success == (r.attacked and pred[b] != r.label)
        if r.attacked:
            assert r.cost == pytest.approx(costs[b], abs=1e-6)
            assert r.relative_size == pytest.approx(sizes[b], abs=1e-9)
        else:
            assert r.status == "misclassified_before" and not r.orders
    assert sum(not r.attacked for r in recs) == 3  # every 5th label was made wrong
    assert sum(r.success for r in recs) >= 6  # a random small MLP is easy to fool with $300k
    assert all(r.peak_capital >= r.capital for r in recs)


def test_records_jsonl_roundtrip(attacked, tmp_path):
    recs = attacked[3]
    p = write_jsonl(tmp_path / "r.jsonl", recs)
    assert read_jsonl(p) == recs
    (tmp_path / "bad.jsonl").write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 1"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_capital_curve_equals_separate_runs(attacked):
    batch, model, atk, recs = attacked
    budgets = [2e3, 2e4, 6e4, 3e5]
    curve = capital_curve(recs, budgets)
    assert curve[-1] == pytest.approx(adversarial_accuracy(recs))
    assert np.all(np.diff(curve) <= 1e-12)  # accuracy falls as the budget grows
    for c, acc in zip(budgets[1:3], curve[1:3]):
        sep = CapitalAttack(budget=c, max_iter=40, batch_size=8, step_shares=5.0)(model, batch, seed=3)
        fooled_sep = {r.index for r in sep if r.success}
        fooled_curve = {r.index for r in recs if r.success and r.peak_capital <= c}
        assert fooled_sep == fooled_curve
        assert adversarial_accuracy(sep) == pytest.approx(acc)


def test_summary_counts(attacked):
    recs = attacked[3]
    s = summarize(recs)
    assert s["n"] == len(recs) and s["successes"] == sum(r.success for r in recs)
    assert s["a_adv"] == pytest.approx(np.mean([r.attacked and not r.success for r in recs]))
    assert s["capital_mean"] == pytest.approx(np.mean([r.capital for r in recs if r.success]))


def test_transfer_accuracy_matches_direct_evaluation(attacked):
    batch, model, atk, recs = attacked
    victim = TinyModel(40, "linear", seed=5)
    res = transfer_accuracy(recs, batch, victim)
    orders = dense_orders(recs, batch.window, batch.levels)
    pred, _ = evaluate_orders(victim, batch, orders)
    assert res["accuracy"] == pytest.approx(np.mean(pred == batch.labels))
    # The source model itself: transfer of its own orders gives back its adversarial accuracy.
    own = transfer_accuracy(recs, batch, model)
    assert own["accuracy"] == pytest.approx(adversarial_accuracy(recs))
    with pytest.raises(ValueError, match="records"):
        transfer_accuracy(recs[:3], batch, victim)


def test_lstm_attack_runs_in_attack_mode():
    batch = random_batch(B=6, W=20, L=3, seed=4)
    model = TinyModel(20, "lstm", seed=1)
    label_batch(batch, model, wrong_every=0)
    recs = CapitalAttack(budget=1e5, max_iter=20)(model, batch, seed=0)
    assert len(recs) == 6 and all(r.attacked for r in recs)
    assert not model.model.training  # the mode is restored after the attack


def test_bad_input_errors():
    with pytest.raises(ValueError, match="budget"):
        CapitalAttack(budget=0)
    with pytest.raises(ValueError, match="r must"):
        CapitalAttack(r=1.5)
    batch = planted_batch()
    batch.labels = np.full(1, -1)
    with pytest.raises(ValueError, match="labels"):
        CapitalAttack()(PlantedModel(0.05), batch)
    with pytest.raises(ValueError, match="status"):
        AttackRecord(0, 0, 0, 0, 0, 0, True, False, "weird")


def test_book_tensors_centred_and_shift_invariant():
    batch = random_batch(B=3, W=5, L=4, seed=2)
    P, S, M = book_tensors(batch)
    from lobsim.features import swa_torch

    got = swa_torch(P.double(), S.double(), M)
    ref = swa(batch.prices, batch.sizes)
    diff = ref - got.numpy()
    assert np.allclose(diff, diff[:, :1], atol=1e-5)  # same SWA up to one shift per snippet
    assert float(P.abs().max()) < 1.0  # centred: cents, not $9


def test_cuda_attack_matches_cpu(cuda_device):
    """On a GPU (skipped without one): torch-operator checks on CUDA give the CPU's exact-engine records."""
    batch = random_batch(B=8, W=30, L=4, seed=9)
    model = TinyModel(30, "mlp", seed=0)
    label_batch(batch, model, wrong_every=0)
    cpu = CapitalAttack(budget=3e5, max_iter=30, step_shares=5.0)(model, batch, seed=1)
    model.model.to(cuda_device)
    gpu = CapitalAttack(budget=3e5, max_iter=30, step_shares=5.0, device=cuda_device)(model, batch, seed=1)
    model.model.to("cpu")
    assert sum(r.success for r in gpu) >= sum(r.success for r in cpu) - 1  # float differences may flip a tie
    for r in gpu:
        assert r.capital <= 3e5
