"""The attack ensemble: never more capital than any member, the gradient-masking flag on a model whose gradients
are masked on purpose (and not on a smooth one), gradient-free attacks on non-differentiable models, survivors
scope, objectives (untargeted, targeted, regression)."""

from __future__ import annotations

import pytest
import torch

from lobsim.attacks.capital import evaluate_orders
from lobsim.attacks.ensemble import EnsembleAttack, masking_report
from lobsim.attacks.objectives import ForecastShift, Targeted, Untargeted, make_objective
from lobsim.attacks.records import dense_orders
from lobsim.attacks.runner import run_members
from lobsim.attacks.search import SearchAttack
from tests.lobsim.test_capital_attack import (
    BOOKS,
    PlantedModel,
    TinyModel,
    integer_optimum,
    label_batch,
    planted_batch,
    random_batch,
)


class MaskedPlanted(PlantedModel):
    """The planted model behind a hard quantisation of its input: the forward is a step function, so every
    gradient is exactly zero (shattered gradients); the model outputs still move in steps of ``q`` theta."""

    def __init__(self, theta: float, q: float = 0.05) -> None:
        super().__init__(theta)
        self.q = q

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        d = torch.round((s[:, -1] - s[:, 0]) / self.theta / self.q) * self.q
        return torch.stack([1.0 - d, torch.zeros_like(d), d - 1.0], dim=1)


class NoGradModel(PlantedModel):
    """A model without gradients (like an ONNX or scikit-learn model): refuses to run under autograd."""

    differentiable = False

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("this model has no gradients")
        return super().logits_from_swa(s)


@pytest.fixture(scope="module")
def mlp_case():
    batch = random_batch(B=10, W=30, L=4, seed=11)
    model = TinyModel(30, "mlp", seed=3)
    label_batch(batch, model)
    return batch, model


def test_ensemble_never_reports_more_capital_than_any_member(mlp_case):
    batch, model = mlp_case
    ens = EnsembleAttack(budget=3e5, max_iter=20, restarts=2, search_iter=150, batch_size=6)
    recs = ens(model, batch, seed=4)
    obj = Untargeted()
    alone = {m.name: run_members(model, batch, [m], budget=ens.budget, objective=obj, seed=4, batch_size=6)
             for m in ens.build_members()}
    for name, rs in alone.items():
        for e, r in zip(recs, rs):
            assert e.attacked == r.attacked
            if r.success:  # the same member inside the ensemble found these orders (same seed): min <= member
                assert e.success and e.capital <= r.capital + 1e-6, (name, e.index)
                assert e.member_capital[name] is not None
    assert sum(r.success for r in recs) == len({r.index for rs in alone.values() for r in rs if r.success})
    for e in recs:
        if e.success:
            found = [v for v in e.member_capital.values() if v is not None]
            assert e.winner in e.member_capital and e.capital <= min(found) * (1 + 1e-7) + 1e-6
    # the records' orders are real: exact engine, capital within the budget
    pred, _ = evaluate_orders(model, batch, dense_orders(recs, batch.window, batch.levels))
    assert all((p != r.label) == r.success for p, r in zip(pred, recs) if r.attacked)
    assert all(r.capital <= 3e5 for r in recs)


def test_gradient_masking_is_flagged_and_search_succeeds():
    batch = planted_batch(book="thin_580")
    model = MaskedPlanted(BOOKS["thin_580"][4])
    recs = EnsembleAttack(budget=1e6, max_iter=15, search_iter=300)(model, batch, seed=0)
    rec = recs[0]
    assert rec.success and rec.winner == "search" and rec.masking
    assert rec.member_capital["gradient"] is None and rec.member_capital["greedy"] is None
    rep = masking_report(recs)
    assert rep["flag"] and rep["masking"] == 1
    n_int, cap_int, lp = integer_optimum("thin_580")
    assert lp - 1e-6 <= rec.capital <= 1.5 * cap_int  # a gradient-free success, close to the smooth optimum


def test_no_flag_on_a_smooth_model():
    batch = planted_batch(book="thick_9")
    recs = EnsembleAttack(budget=1e7, max_iter=40, search_iter=100)(PlantedModel(BOOKS["thick_9"][4]), batch)
    assert recs[0].success and not recs[0].masking and recs[0].winner in ("greedy", "gradient")
    assert not masking_report(recs)["flag"]


def test_model_without_gradients_gets_the_gradient_free_attack():
    batch = planted_batch(book="thin_580")
    model = NoGradModel(BOOKS["thin_580"][4])
    recs = EnsembleAttack(budget=1e6, search_iter=300)(model, batch, seed=1)
    assert recs[0].success and set(recs[0].member_capital) == {"search"} and recs[0].winner == "search"
    alone = SearchAttack(budget=1e6, max_iter=300)(model, batch, seed=1)[0]
    assert alone.success and alone.capital == pytest.approx(recs[0].capital)


def test_survivors_scope_attacks_only_what_survives(mlp_case):
    batch, model = mlp_case
    recs = EnsembleAttack(budget=3e5, max_iter=15, restarts=1, search_iter=50, scope="survivors")(model, batch)
    for r in recs:
        if r.attacked and r.member_capital.get("greedy") is not None:
            assert set(r.member_capital) == {"greedy"}  # fooled by the cheap member: nobody else ran on it


def test_targeted_objective(mlp_case):
    batch, model = mlp_case
    target = 0
    recs = EnsembleAttack(budget=3e5, max_iter=20, search_iter=50, objective="targeted:down")(model, batch)
    pred, _ = evaluate_orders(model, batch, dense_orders(recs, batch.window, batch.levels))
    clean, _ = evaluate_orders(model, batch, None)
    for r, p, c in zip(recs, pred, clean):
        eligible = c == r.label and r.label != target
        assert r.attacked == eligible
        if not eligible:
            assert r.status == ("misclassified_before" if c != r.label else "not_eligible")
        if r.success:
            assert p == target and r.objective == "targeted:0"
    assert any(r.success for r in recs)


class Forecaster:
    """A regression model: forecast = 100 x (SWA[last] - SWA[first]) dollars."""

    def logits_from_swa(self, s: torch.Tensor) -> torch.Tensor:
        return (100.0 * (s[:, -1] - s[:, 0]))[:, None]


def test_regression_objective_moves_the_forecast():
    batch = planted_batch(book="thick_9")
    obj = ForecastShift(threshold=2.0)
    recs = EnsembleAttack(budget=1e7, max_iter=40, search_iter=50, objective=obj)(Forecaster(), batch)
    rec = recs[0]
    assert rec.attacked and rec.success
    orders = dense_orders(recs, batch.window, batch.levels)
    from lobsim.attacks.capital import book_tensors, logits_of
    from lobsim.propagation import propagate

    P, S, M = book_tensors(batch)
    f0 = logits_of(Forecaster(), P, S, M)[0, 0]
    f1 = logits_of(Forecaster(), P, S + torch.as_tensor(propagate(orders, batch).delta, dtype=S.dtype), M)[0, 0]
    assert abs(float(f1 - f0)) > 2.0


def test_objective_margins_agree_with_fooled():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 3, generator=g)
    y = torch.randint(0, 3, (200,), generator=g)
    for obj in (Untargeted(), Targeted(target=2)):
        ref = obj.reference(z, y)
        assert torch.equal(obj.margin(z, ref) > 0, obj.fooled(z, ref))  # no ties in random logits
    ce = Untargeted(loss_kind="ce").loss(z, y)
    torch.testing.assert_close(ce, torch.nn.functional.cross_entropy(z, y, reduction="none"))
    f = ForecastShift(threshold=0.5)
    assert f.fooled(torch.tensor([[1.0], [0.2]]), torch.tensor([0.0, 0.0])).tolist() == [True, False]
    cross = ForecastShift(mode="cross")
    assert cross.fooled(torch.tensor([[-1.0], [0.3]]), torch.tensor([0.5, 0.5])).tolist() == [True, False]


def test_bad_settings():
    with pytest.raises(ValueError, match="members"):
        EnsembleAttack(members=["gradient", "magic"])
    with pytest.raises(ValueError, match="scope"):
        EnsembleAttack(scope="some")
    with pytest.raises(ValueError, match="unknown objective"):
        make_objective("sideways")
    with pytest.raises(ValueError, match="threshold"):
        ForecastShift(threshold=0.0)
    assert make_objective("targeted:up").target == 2


def test_chunk_without_eligible_snippets(mlp_case):
    """A model wrong on every snippet of a chunk: nothing is attacked, every record says so (no crash)."""
    batch, model = mlp_case
    wrong = batch.select(range(batch.batch_size))
    pred, _ = evaluate_orders(model, wrong, None)
    wrong.labels = (pred + 1) % 3
    recs = EnsembleAttack(budget=1e5, search_iter=20, batch_size=4)(model, wrong, seed=0)
    assert len(recs) == wrong.batch_size
    assert all(not r.attacked and not r.success and r.status == "misclassified_before" for r in recs)
