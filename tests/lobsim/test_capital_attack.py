"""Capital-constrained gradient attack: minimal capital on planted books at $9 and $580 (integer optimum found by
brute force, LP lower bound), budget never exceeded, records agree with the exact engine, curves from minimal
capital, the thesis rule (and its one-run curve), transfer evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lobsim.attacks.capital import CapitalAttack, book_tensors, evaluate_orders, transfer_accuracy
from lobsim.attacks.records import (
    AttackRecord,
    adversarial_accuracy,
    capital_curve,
    dense_orders,
    fooled_at,
    read_jsonl,
    summarize,
    write_jsonl,
)
from lobsim.features import Normalizer, swa
from lobsim.metrics import capital, cost, relative_size
from lobsim.models import ModelConfig, build_model
from lobsim.propagation import propagate
from lobsim.snippets import SnippetBatch

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


# ---- planted model with a known cheapest manipulation ----


class PlantedModel:
    """logits = (1 - d / theta, 0, d / theta - 1) with d = SWA[last] - SWA[first]: predicts down until d > theta."""

    def __init__(self, theta: float) -> None:
        self.theta = theta

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        d = (s[:, -1] - s[:, 0]) / self.theta
        return torch.stack([1.0 - d, torch.zeros_like(d), d - 1.0], dim=1)


# (price of the best bid in LOBSTER units, tick, ticks to the far level, sizes of the 3 levels, theta in dollars)
BOOKS = {
    "thick_9": (90_000, 100, 10, (5000, 5000, 1000), 0.02),  # $9, one-cent ticks, thousands of shares
    "thin_580": (5_800_000, 1000, 10, (50, 50, 10), 0.10),  # $580, ten-cent ticks, tens of shares
}


def planted_batch(W: int = 4, book: str = "thick_9") -> SnippetBatch:
    """A static book of 3 levels a side: two near levels one tick apart and a far level, on both sides.

    The first snapshot holds 10 million shares at the best levels, so moving SWA[first] costs ~10^4 x more than
    moving SWA[last]; executions at every price in step 1 fill any order placed at the first snapshot. The cheapest
    way to make d = SWA[last] - SWA[first] exceed theta is then N shares at the far ask, at t >= 1.
    """
    base, tick, far, size, _ = BOOKS[book]
    bid = np.array([base, base - tick, base - far * tick])
    ask = np.array([base + tick, base + 2 * tick, base + (far + 1) * tick])
    prices = np.broadcast_to(np.stack([bid, ask])[None, None], (1, W, 2, 3)).copy()
    sizes = np.broadcast_to(np.array([size, size])[None, None], (1, W, 2, 3)).copy()
    sizes[0, 0, :, 0] = 10_000_000
    ptr = np.zeros((1, W + 1), np.int64)
    ptr[0, 2:] = 6  # six executions in step 1
    return SnippetBatch(day=np.zeros(1, np.int64), start=np.zeros(1, np.int64), prices=prices, sizes=sizes,
                        exec_ptr=ptr, exec_side=np.array([0, 0, 0, 1, 1, 1], np.int8),
                        exec_price=np.concatenate([bid, ask]).astype(np.int64), exec_volume=np.ones(6, np.int64),
                        exec_hidden=np.zeros(6, bool), labels=np.zeros(1, np.int64))


def integer_optimum(book: str, W: int = 4) -> tuple[int, float, float]:
    """(N, capital of N shares at the far ask, LP lower bound in dollars) by brute force on the exact engine.

    LP bound: SWA[last] must exceed T = SWA[first] + theta. Adding n_i shares at prices p_i gives
    SWA' >= T iff sum n_i (p_i - T) >= S (T - SWA), S the clean size; the capital sum n_i p_i per unit of
    n_i (p_i - T) is smallest at the far ask, so no real-valued orders at t >= 1 cost less than
    N* p_far with N* = S (T - SWA) / (p_far - T) (orders at t = 0 move SWA[first] ~10^4 x less per dollar).
    """
    batch = planted_batch(W, book)
    theta = BOOKS[book][4]
    p = batch.prices[0, W - 1] / 1e4
    s = batch.sizes[0, W - 1].astype(float)
    far = float(p[1, 2])
    T = float(swa(batch.prices[0, 0], batch.sizes[0, 0])) + theta
    n_lp = s.sum() * (T - float((p * s).sum() / s.sum())) / (far - T)
    cand = np.arange(max(int(n_lp) - 5, 1), int(n_lp) + 40)
    orders = np.zeros((len(cand), W, 2, 3), np.int64)
    orders[:, W - 1, 1, 2] = cand
    many = batch.select(np.zeros(len(cand), np.int64))
    pred, _ = evaluate_orders(PlantedModel(theta), many, orders)
    n = int(cand[np.argmax(pred != 0)])
    assert pred[cand == n][0] != 0 and (cand[pred != 0] >= n).all()
    return n, n * far, n_lp * far


@pytest.mark.parametrize("book,budget", [("thick_9", 1e7), ("thin_580", 1e7), ("thin_580", 4e4)])
def test_minimal_capital_within_5pct_of_integer_optimum(book, budget):
    """The same test on a $9 thick book and a $580 thin book (and a tight budget): scale-free steps."""
    batch = planted_batch(book=book)
    n_int, cap_int, lp = integer_optimum(book)
    assert cap_int < budget
    recs = CapitalAttack(budget=budget, max_iter=60)(PlantedModel(BOOKS[book][4]), batch, seed=0)
    rec = recs[0]
    assert rec.success and rec.status == "success" and rec.pred_after != 0
    orders = dense_orders(recs, batch.window, batch.levels)[0]
    assert orders[:, 1, 2].sum() >= 0.97 * orders.sum()  # nearly everything at the far level of the ask side
    assert orders[:, 0].sum() == 0 and orders[0].sum() == 0  # nothing on the bid side or at the first snapshot
    assert rec.capital >= lp - 1e-6  # no attack beats the LP bound
    assert rec.capital <= 1.05 * cap_int  # within 5% of the integer optimum
    assert rec.first_capital >= rec.capital and rec.winner == "gradient"


def test_thesis_rule_first_success_and_budget_failure():
    batch = planted_batch()
    n_int, cap_int, lp = integer_optimum("thick_9")
    model = PlantedModel(BOOKS["thick_9"][4])
    rec = CapitalAttack(budget=1e7, step_rule="thesis", step_shares=20.0, max_iter=500, minimize=False)(model, batch)[0]
    assert rec.success and rec.winner == "thesis" and rec.capital == pytest.approx(rec.first_capital, rel=1e-9)
    assert rec.capital >= lp - 1e-6
    budget = 0.3 * cap_int  # below the minimum: the thesis rule stops over the budget
    rec = CapitalAttack(budget=budget, step_rule="thesis", step_shares=20.0, max_iter=500)(model, batch)[0]
    assert not rec.success and rec.status == "budget"
    assert 0 < rec.capital <= budget  # the last rounded orders within the budget are returned
    assert rec.peak_capital > budget
    assert adversarial_accuracy([rec]) == 1.0


@pytest.fixture(scope="module")
def attacked():
    batch = random_batch(B=15, W=40, L=5, seed=1)
    model = TinyModel(40, "mlp", seed=0)
    label_batch(batch, model)
    atk = CapitalAttack(budget=3e5, max_iter=30, batch_size=8)
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
        if r.success:
            assert r.first_capital >= r.capital - 1e-6  # minimisation never adds capital
    assert sum(not r.attacked for r in recs) == 3  # every 5th label was made wrong
    assert sum(r.success for r in recs) >= 10  # a random small MLP is easy to fool with $300k


def test_budget_rule_beats_thesis_rule(attacked):
    """On the same snippets the default rule fools at least as many, at a lower median capital."""
    batch, model, atk, recs = attacked
    thesis = CapitalAttack(budget=3e5, step_rule="thesis", step_shares=5.0, max_iter=30, batch_size=8,
                           minimize=False)(model, batch, seed=3)
    assert sum(r.success for r in recs) >= sum(r.success for r in thesis)
    both = [(a.capital, b.capital) for a, b in zip(recs, thesis) if a.success and b.success]
    assert both and np.median([a for a, _ in both]) < np.median([b for _, b in both])


def test_records_jsonl_roundtrip(attacked, tmp_path):
    recs = attacked[3]
    p = write_jsonl(tmp_path / "r.jsonl", recs)
    assert read_jsonl(p) == recs
    (tmp_path / "old.jsonl").write_text('{"index": 0, "day": 0, "start": 0, "label": 1, "pred_before": 1, '
                                        '"pred_after": 0, "attacked": true, "success": true, "status": "success", '
                                        '"capital": 5.0}\n')
    old = read_jsonl(tmp_path / "old.jsonl")[0]  # records of earlier versions stay readable
    assert old.capital == 5.0 and old.winner == "" and old.member_capital == {}
    (tmp_path / "bad.jsonl").write_text('{"index": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 1"):
        read_jsonl(tmp_path / "bad.jsonl")


def test_capital_curve_reads_minimal_capital(attacked):
    batch, model, atk, recs = attacked
    budgets = [2e3, 2e4, 6e4, 3e5]
    curve = capital_curve(recs, budgets)
    assert curve[-1] == pytest.approx(adversarial_accuracy(recs))
    assert np.all(np.diff(curve) <= 1e-12)  # accuracy falls as the budget grows
    for c, acc in zip(budgets, curve):
        fooled = {r.index for r in recs if r.success and r.capital <= c}
        assert acc == pytest.approx(np.mean([r.attacked and r.index not in fooled for r in recs]))
        assert summarize(recs, c)["a_adv"] == pytest.approx(acc)
    # the orders behind the curve exist: each fooled snippet's orders fit its budget and fool the model
    orders = dense_orders(recs, batch.window, batch.levels)
    pred, _ = evaluate_orders(model, batch, orders)
    ok = fooled_at(recs, 6e4)
    assert np.all(capital(orders, batch.prices)[ok] <= 6e4) and np.all(pred[ok] != batch.labels[ok])


def test_thesis_capital_curve_equals_separate_runs():
    """Thesis rule without minimisation: the path does not depend on the budget until it stops the attack, so
    one run read at peak capital (``basis="peak"``) gives the fooled sets of separate runs."""
    batch = random_batch(B=10, W=30, L=4, seed=5)
    model = TinyModel(30, "mlp", seed=0)
    label_batch(batch, model)

    def run(c):
        return CapitalAttack(budget=c, step_rule="thesis", max_iter=25, batch_size=8, step_shares=5.0,
                             minimize=False)(model, batch, seed=3)

    recs = run(3e5)
    for c in (2e4, 6e4):
        fooled_sep = {r.index for r in run(c) if r.success}
        assert fooled_sep == {r.index for r, f in zip(recs, fooled_at(recs, c, basis="peak")) if f}


def test_summary_counts(attacked):
    recs = attacked[3]
    s = summarize(recs)
    assert s["n"] == len(recs) and s["successes"] == sum(r.success for r in recs)
    assert s["a_adv"] == pytest.approx(np.mean([r.attacked and not r.success for r in recs]))
    assert s["capital_mean"] == pytest.approx(np.mean([r.capital for r in recs if r.success]))
    assert s["winners"] == {"gradient": s["successes"]} and s["masking"] == 0


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
    recs = CapitalAttack(budget=1e5, max_iter=10)(model, batch, seed=0)
    assert len(recs) == 6 and all(r.attacked for r in recs)
    assert not model.model.training  # the mode is restored after the attack


def test_bad_input_errors():
    with pytest.raises(ValueError, match="budget"):
        CapitalAttack(budget=0)
    with pytest.raises(ValueError, match="r must"):
        CapitalAttack(r=1.5)
    with pytest.raises(ValueError, match="step_rule"):
        CapitalAttack(step_rule="fancy")
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
    """On a GPU (skipped without one): the torch operator and torch steps on CUDA give records like the CPU's."""
    batch = random_batch(B=8, W=30, L=4, seed=9)
    model = TinyModel(30, "mlp", seed=0)
    label_batch(batch, model, wrong_every=0)
    cpu = CapitalAttack(budget=3e5, max_iter=30)(model, batch, seed=1)
    model.model.to(cuda_device)
    gpu = CapitalAttack(budget=3e5, max_iter=30, device=cuda_device)(model, batch, seed=1)
    model.model.to("cpu")
    assert sum(r.success for r in gpu) >= sum(r.success for r in cpu) - 1  # float differences may flip a tie
    for r in gpu:
        assert r.capital <= 3e5
