"""APGD-L1, DLR losses, APGD-T, Square and the evaluation suite, on a small MLP trained here on scikit-learn's digits
(8x8, CPU, a few seconds); side-by-side checks against published implementations when they are installed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision.attacks import APGD, APGDT, PGD, Square
from vision.attacks.apgd import l1_stages
from vision.attacks.losses import dlr_loss, dlr_targeted_loss, margin
from vision.attacks.suite import run_suite, standard_suite


@pytest.fixture(scope="module")
def digits(one_thread):
    """An MLP trained on 1,400 digits; (model, x_test, y_test) with 200 held-out examples."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                          nn.Linear(64, 10))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(10):
        perm = torch.randperm(1400, generator=g)
        for i in range(0, 1400, 100):
            idx = perm[i: i + 100]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = x[1400:1600], y[1400:1600]
    with torch.no_grad():
        assert (model(xt).argmax(1) == yt).float().mean() > 0.85
    return model, xt, yt


def _feasible(x, xa, norm, eps):
    d = (xa - x).flatten(1)
    n = {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "l1": d.abs().sum(1)}[norm]
    return bool((n <= eps * (1 + 1e-5) + 1e-6).all() and xa.min() >= 0 and xa.max() <= 1)


def _wrong(model, xa, y):
    with torch.no_grad():
        return model(xa).argmax(1) != y


# ---- losses ----
def test_dlr_losses_match_the_formulas_and_ignore_shift_and_scale():
    z = torch.tensor([[3.0, 1.0, 0.5, -1.0], [0.0, 2.0, 4.0, 1.0]])
    y = torch.tensor([0, 1])
    # row 0: correct, other max 1.0, z(1)=3, z(3)=0.5 -> -(3-1)/(3-0.5); row 1: other max 4, z(3)=1 -> -(2-4)/(4-1)
    torch.testing.assert_close(dlr_loss(z, y), torch.tensor([-2.0 / 2.5, 2.0 / 3.0]))
    torch.testing.assert_close(dlr_loss(5 * z + 7, y), dlr_loss(z, y))
    t = torch.tensor([2, 2])
    # z(1), z(3), z(4): row 0: 3, 0.5, -1 -> denominator 3 - (-0.25); row 1: 4, 1, 0 -> 4 - 0.5
    torch.testing.assert_close(dlr_targeted_loss(z, y, t), torch.tensor([-(3 - 0.5) / 3.25, -(2 - 4) / 3.5]))
    assert (margin(z, y) > 0).tolist() == [False, True]
    with pytest.raises(ValueError, match="at least 4 classes"):
        dlr_targeted_loss(z[:, :3], y, torch.tensor([2, 2]))


# ---- APGD L1 ----
def test_l1_stage_split():
    assert l1_stages(100, (3.0, 2.0, 1.0)) == [(3.0, 30), (2.0, 30), (1.0, 40)]
    assert l1_stages(100, None) == [(1.0, 100)]
    with pytest.raises(ValueError, match="end at 1"):
        l1_stages(100, (3.0, 2.0))


@pytest.mark.parametrize("norm,eps", [("linf", 0.08), ("l2", 0.6), ("l1", 2.0)])
def test_apgd_feasible_and_early_stop_does_not_change_which_examples_break(digits, norm, eps):
    model, x, y = digits
    a = APGD(eps, 40, norm, seed=1)(model, x, y)
    b = APGD(eps, 40, norm, seed=1, early_stop=False)(model, x, y)
    assert _feasible(x, a.x_adv, norm, eps) and _feasible(x, b.x_adv, norm, eps)
    assert torch.equal(a.success, b.success)  # per-example trajectories do not depend on the rest of the batch
    assert torch.equal(a.success, _wrong(model, a.x_adv, y))


def test_apgd_l1_beats_pgd_l1_with_the_same_iterations(digits):
    model, x, y = digits
    eps = 1.5
    pgd = PGD(eps, None, 50, norm="l1", seed=0)(model, x, y)
    apgd = APGD(eps, 50, norm="l1", seed=0)(model, x, y)
    single = APGD(eps, 50, norm="l1", seed=0, l1_eps_schedule=None)(model, x, y)
    assert _feasible(x, apgd.x_adv, "l1", eps)
    # the staged radius schedule is the default because it is much stronger on MNIST (docs/vision-attacks.md); on
    # these dense 8x8 digits with 50 iterations both variants are far stronger than PGD
    for res in (apgd, single):
        assert res.success_rate >= pgd.success_rate + 0.05, (res.success_rate, pgd.success_rate)


# ---- APGD-T and Square ----
def test_apgd_t_adds_successes_and_reports_true_misclassifications(digits):
    model, x, y = digits
    eps = 0.06
    t = APGDT(eps, 30, "linf", n_targets=3, seed=0)(model, x, y)
    assert _feasible(x, t.x_adv, "linf", eps)
    assert torch.equal(t.success, _wrong(model, t.x_adv, y))
    assert t.success_rate > _wrong(model, x, y).float().mean() + 0.1


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.8)])
def test_square_is_feasible_and_finds_adversarial_examples_without_gradients(digits, norm, eps):
    model, x, y = digits
    res = Square(eps, 300, norm, seed=0)(model, x, y)
    assert _feasible(x, res.x_adv, norm, eps)
    assert torch.equal(res.success, _wrong(model, res.x_adv, y))
    noise = (x + eps * torch.sign(torch.randn_like(x)) / (1 if norm == "linf" else 8)).clamp(0, 1)
    assert res.success_rate > _wrong(model, noise, y).float().mean() + 0.2


# ---- the suite ----
def test_suite_worst_case_is_never_better_than_any_member(digits):
    model, x, y = digits
    x, y = x[:100], y[:100]
    eps = 0.06
    kw = dict(steps=10, queries=60, n_targets=2, seed=0)
    full = run_suite(model, x, y, eps, "linf", sequential=False, check_steps=False, batch_size=64, **kw)
    seq = run_suite(model, x, y, eps, "linf", sequential=True, check_steps=False, batch_size=64, **kw)
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    idx = clean.nonzero().squeeze(1)
    alone = {}
    for name, atk in standard_suite(eps, "linf", **kw):  # the same attacks run on their own, same batches
        broken = torch.cat([_wrong(model, atk(model, x[idx[s:s + 64]], y[idx[s:s + 64]]).x_adv, y[idx[s:s + 64]])
                            for s in range(0, idx.numel(), 64)])
        alone[name] = float((clean.sum() - broken.sum()) / len(y))
    for row in full["members"]:
        assert row["robust_acc_alone"] == pytest.approx(alone[row["name"]])
    for r in (full, seq):
        assert r["robust_acc"] <= min(alone.values()) + 1e-9
        assert r["robust_acc"] < r["clean_acc"]
        assert sum(r["per_image"]["robust"]) == round(r["robust_acc"] * len(y))
    assert full["robust_acc"] == pytest.approx(seq["robust_acc"], abs=0.02)


class _Quantised(nn.Module):
    """A model that hides its gradient: inputs are rounded to 4 levels first (zero gradient almost everywhere)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 3) / 3)


def test_suite_flags_gradient_masking_when_square_beats_the_gradient_attacks(digits):
    model, x, y = digits
    masked = _Quantised(model)
    r = run_suite(masked, x, y, 0.2, "linf", steps=20, queries=300, n_targets=2, seed=0, batch_size=200)
    sq = next(m for m in r["members"] if m["name"] == "square")
    # the gradient is zero: APGD only breaks what its random start happens to break; Square searches
    assert sq["new_breaks"] >= 0.05 * len(y), r["members"]
    assert r["flags"]["gradient_free_beats_gradient"]["flag"] and r["gradient_masking_suspected"]
    honest = run_suite(model, x, y, 0.06, "linf", steps=20, queries=0, n_targets=2, seed=0)
    assert not honest["flags"]["gradient_free_beats_gradient"]["flag"]
    assert not honest["flags"]["more_steps_weaker"]["flag"]


def test_suite_bad_input():
    with pytest.raises(ValueError, match="unknown suite"):
        run_suite(nn.Linear(4, 3), torch.rand(2, 4), torch.zeros(2, dtype=torch.long), 0.1, suite="deluxe")
    with pytest.raises(ValueError, match="Square supports"):
        Square(0.1, norm="l1")
    with pytest.raises(ValueError, match="unknown norm"):
        standard_suite(0.1, "l3")


# ---- published implementations, side by side (skipped when not installed) ----
def test_apgd_ce_agrees_with_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    eps = 0.06
    ours = 1 - APGD(eps, 50, "linf", seed=0)(model, x, y).success_rate
    xa = torchattacks.APGD(model, norm="Linf", eps=eps, steps=50, n_restarts=1, seed=0, loss="ce")(x, y)
    theirs = 1 - float(_wrong(model, xa, y).float().mean())
    assert abs(ours - theirs) <= 0.03, (ours, theirs)


def test_square_agrees_with_torchattacks(digits):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = digits
    x, y = x[:100], y[:100]
    eps = 0.06
    ours = 1 - Square(eps, 200, "linf", seed=0)(model, x, y).success_rate
    xa = torchattacks.Square(model, norm="Linf", eps=eps, n_queries=200, n_restarts=1, p_init=0.8, seed=0)(x, y)
    theirs = 1 - float(_wrong(model, xa, y).float().mean())
    assert ours <= theirs + 0.04, (ours, theirs)


def test_apgd_l1_at_least_as_strong_as_foolbox_slide(digits):
    fb = pytest.importorskip("foolbox")
    model, x, y = digits
    eps = 1.5
    ours = 1 - APGD(eps, 50, "l1", seed=0)(model, x, y).success_rate
    fmodel = fb.PyTorchModel(model, bounds=(0, 1))
    _, xa, _ = fb.attacks.SparseL1DescentAttack(steps=50)(fmodel, x, y, epsilons=eps)
    theirs = 1 - float(_wrong(model, xa, y).float().mean())
    assert ours <= theirs + 0.01, (ours, theirs)
