"""Attacks on a small MLP trained here on scikit-learn's digits (8x8, CPU, a few seconds)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision.attacks import APGD, FGSM, MSD, PGD, AttackResult
from vision.attacks.apgd import checkpoints
from vision.attacks.steps import l1_k_range, steepest_step

EPS = {"linf": 0.06, "l2": 0.5, "l1": 2.0}  # radii where a standard model is partly, not fully, broken


def _norms(d: torch.Tensor) -> dict[str, torch.Tensor]:
    f = d.flatten(1)
    return {"linf": f.abs().amax(1), "l2": f.norm(dim=1), "l1": f.abs().sum(1)}


def _assert_feasible(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float) -> None:
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert (x_adv >= 0).all() and (x_adv <= 1).all()
    assert (_norms(x_adv - x)[norm] <= eps * (1 + 1e-5) + 1e-6).all()


@pytest.fixture(scope="module")
def digits(one_thread):
    """A small MLP trained on 1,400 digits; returns (model, x_test, y_test) with 256 held-out examples."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(64, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(10):
        perm = torch.randperm(1400, generator=g)
        for i in range(0, 1400, 100):
            idx = perm[i : i + 100]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xt, yt = x[1400:1656], y[1400:1656]
    with torch.no_grad():
        acc = (model(xt).argmax(1) == yt).float().mean()
    assert acc > 0.85, f"the test model did not train (accuracy {acc:.2f})"
    model.zero_grad(set_to_none=True)
    return model, xt, yt


def _ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def _misclassified(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(1) != y


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_raises_loss_over_clean_and_random_noise_and_stays_feasible(digits, norm):
    model, x, y = digits
    eps = EPS[norm]
    res = PGD(eps, steps=20, norm=norm, seed=0)(model, x, y)
    assert isinstance(res, AttackResult) and res.success.dtype == torch.bool
    _assert_feasible(x, res.x_adv, norm, eps)
    adv, clean = _ce(model, res.x_adv, y), _ce(model, x, y)
    # random perturbations of the same norm (the baseline without gradient information)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    noise = noise / _norms(noise)[norm].view(-1, 1, 1, 1) * eps
    rnd = _ce(model, (x + noise).clamp(0, 1), y)
    assert (adv >= clean - 1e-5).all()  # the best iterate includes the start; never worse than clean
    assert adv.mean() > 2 * clean.mean() and adv.mean() > 2 * rnd.mean()
    # success is exactly "misclassified at x_adv"
    assert torch.equal(res.success, _misclassified(model, res.x_adv, y))
    assert res.success.float().mean() > _misclassified(model, x, y).float().mean() + 0.1
    torch.testing.assert_close(res.loss, adv, rtol=1e-4, atol=1e-4)


def test_pgd_linf_beats_fgsm_and_fgsm_matches_formula(digits):
    model, x, y = digits
    eps = EPS["linf"]
    fg = FGSM(eps)(model, x, y)
    # independent FGSM: x + eps * sign(grad of the mean CE), clipped to [0, 1]
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    expect = (x + eps * gx.sign()).clamp(0, 1)
    torch.testing.assert_close(fg.x_adv, expect)
    _assert_feasible(x, fg.x_adv, "linf", eps)
    pgd = PGD(eps, steps=20, seed=0)(model, x, y)
    assert pgd.success.float().mean() >= fg.success.float().mean()
    assert _ce(model, pgd.x_adv, y).mean() > _ce(model, fg.x_adv, y).mean()


def test_fgsm_random_start_stays_in_ball(digits):
    model, x, y = digits
    res = FGSM(0.1, random_start=True, seed=3)(model, x, y)
    _assert_feasible(x, res.x_adv, "linf", 0.1)
    assert FGSM(0.1, random_start=True).alpha == pytest.approx(0.125)
    assert res.success.float().mean() > _misclassified(model, x, y).float().mean()


def test_attacks_restore_modes_and_leave_parameter_grads_alone(digits):
    model, x, y = digits
    model.zero_grad(set_to_none=True)
    model.train()
    model[6].eval()  # a submodule in its own mode must come back in that mode
    try:
        for atk in (FGSM(0.05), PGD(0.05, steps=2), MSD(EPS, steps=2), APGD(0.05, steps=2)):
            atk(model, x[:16], y[:16])
            assert model.training and not model[6].training and model[1].training
            assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_pgd_is_deterministic_with_a_seed_and_restarts_never_lower_success(digits, norm):
    model, x, y = digits
    eps = EPS[norm] * 0.7
    one = PGD(eps, steps=5, norm=norm, restarts=1, seed=5)(model, x, y)
    again = PGD(eps, steps=5, norm=norm, restarts=1, seed=5)(model, x, y)
    assert torch.equal(one.x_adv, again.x_adv)
    many = PGD(eps, steps=5, norm=norm, restarts=4, seed=5)(model, x, y)
    _assert_feasible(x, many.x_adv, norm, eps)
    assert (many.success | ~one.success).all()  # every example broken by restart 1 stays broken
    assert torch.equal(many.success, _misclassified(model, many.x_adv, y))
    neither = ~one.success & ~many.success  # unbroken: the kept restart has the highest loss
    assert (many.loss[neither] >= one.loss[neither] - 1e-6).all()


def test_select_best_is_at_least_as_good_as_last(digits):
    model, x, y = digits
    best = PGD(0.05, steps=10, seed=1, select="best")(model, x, y)
    last = PGD(0.05, steps=10, seed=1, select="last")(model, x, y)
    assert (best.success | ~last.success).all()
    both = ~best.success & ~last.success
    assert (best.loss[both] >= last.loss[both] - 1e-6).all()


def test_targeted_pgd_hits_targets_far_more_often_than_chance(digits):
    model, x, y = digits
    target = (y + 1 + torch.randint(0, 9, y.shape, generator=torch.Generator().manual_seed(2))) % 10
    assert (target != y).all()
    res = PGD(0.2, steps=20, targeted=True, seed=0)(model, x, target)
    _assert_feasible(x, res.x_adv, "linf", 0.2)
    with torch.no_grad():
        pred = model(res.x_adv).argmax(1)
    assert torch.equal(res.success, pred == target)
    assert res.success.float().mean() > 0.5  # chance is 0.1
    untargeted_hits = (PGD(0.2, steps=20, seed=0)(model, x, y).x_adv, target)
    with torch.no_grad():
        chance_rate = (model(untargeted_hits[0]).argmax(1) == target).float().mean()
    assert res.success.float().mean() > chance_rate + 0.2


def test_targeted_fgsm_and_apgd_report_target_hits(digits):
    model, x, y = digits
    target = torch.zeros_like(y)
    for atk in (FGSM(0.2, targeted=True), APGD(0.15, steps=10, targeted=True, seed=0)):
        res = atk(model, x, target)
        with torch.no_grad():
            assert torch.equal(res.success, model(res.x_adv).argmax(1) == 0)
        assert res.success.float().mean() > 0.3


def test_l1_step_moves_top_k_allowed_coordinates_with_l1_length_alpha():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 6, 6)
    x[:, :, 0, :] = 1.0  # top row saturated: may not move up
    grad = torch.randn(4, 1, 6, 6)
    grad[:, :, 0, :] = 10.0  # largest gradients point out of the box there
    step = steepest_step(grad, x, torch.zeros_like(x), 0.6, "l1", (3, 3))
    f = step.flatten(1)
    assert ((f != 0).sum(1) == 3).all()
    torch.testing.assert_close(f.abs().sum(1), torch.full((4,), 0.6))
    assert (step[:, :, 0, :] == 0).all()
    # the chosen coordinates are the top-3 |grad| among the allowed ones, moved along the gradient sign
    g = grad.flatten(1).clone()
    g[:, :6] = 0
    top = g.abs().topk(3, dim=1).indices
    assert torch.equal(f.ne(0), torch.zeros_like(f, dtype=torch.bool).scatter(1, top, True))
    assert (f.sign()[f != 0] == grad.flatten(1).sign()[f != 0]).all()
    assert l1_k_range(784, (5, 20), percent=True) == (39, 157)
    assert l1_k_range(784, (5, 20), percent=False) == (5, 20)


def test_msd_stays_in_union_and_matches_single_norm_pgd(digits):
    model, x, y = digits
    steps = 20
    msd = MSD(EPS, steps=steps, seed=0)(model, x, y)
    n = _norms(msd.x_adv - x)
    in_some = torch.zeros_like(msd.success)
    for k, e in EPS.items():
        in_some |= n[k] <= e * (1 + 1e-5) + 1e-6
    assert in_some.all()
    assert ((msd.x_adv >= 0) & (msd.x_adv <= 1)).all()
    assert torch.equal(msd.success, _misclassified(model, msd.x_adv, y))
    rates = {k: PGD(e, steps=steps, norm=k, seed=0)(model, x, y).success.float().mean() for k, e in EPS.items()}
    # MSD follows, per example, whichever norm's step helps most: on average it is at least as strong as the
    # best single-norm PGD with the same number of iterations (small slack for the random L1 step sizes).
    assert msd.success.float().mean() >= max(rates.values()) - 0.02


def test_msd_with_one_norm_is_pgd_with_best_iterate(digits):
    model, x, y = digits
    a = MSD({"l2": 0.5}, steps=8, norms=("l2",), seed=0)(model, x, y)
    b = PGD(0.5, steps=8, norm="l2", random_start=False, seed=0)(model, x, y)
    torch.testing.assert_close(a.x_adv, b.x_adv)
    assert torch.equal(a.success, b.success)


def test_apgd_checkpoints_follow_the_schedule():
    # p_j in hundredths: 22, 41, 57, 70, 80, 87, 93, 99 (p_{j+1} = p_j + max(p_j - p_{j-1} - 3, 6))
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(200) == [44, 82, 114, 140, 160, 174, 186, 198]
    assert all(0 < w <= 10 for w in checkpoints(10))


class _Bump(nn.Module):
    """Two logits; the cross-entropy of class 1 peaks where mean(x) = 0.53, strictly inside the ball."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.flatten(1).mean(1)
        z0 = -1000.0 * (s - 0.53) ** 2
        return torch.stack([z0, torch.full_like(z0, 0.01)], 1)


def test_apgd_step_schedule_finds_an_interior_maximum_that_fixed_step_pgd_misses():
    model, x, y = _Bump(), torch.full((3, 1, 2, 2), 0.5), torch.ones(3, dtype=torch.int64)
    peak = math.log1p(math.exp(-0.01))  # the CE at mean(x) = 0.53 (closed form)
    ap = APGD(0.1, steps=20, random_start=False)(model, x, y)
    assert (ap.loss >= peak - 1e-3).all()
    # constant steps oscillate around the peak: the halving rule is what gets APGD there
    for alpha in (None, 0.05):
        pg = PGD(0.1, alpha=alpha, steps=20, random_start=False)(model, x, y)
        assert (ap.loss > pg.loss + 5e-3).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_apgd_at_least_as_strong_as_pgd_with_equal_steps(digits, norm):
    model, x, y = digits
    eps = EPS[norm]
    ap = APGD(eps, steps=20, norm=norm, seed=0)(model, x, y)
    _assert_feasible(x, ap.x_adv, norm, eps)
    assert torch.equal(ap.success, _misclassified(model, ap.x_adv, y))
    pg = PGD(eps, steps=20, norm=norm, seed=0)(model, x, y)
    assert ap.success.float().mean() >= pg.success.float().mean()
    both = ~ap.success & ~pg.success
    assert _ce(model, ap.x_adv, y)[both].mean() >= _ce(model, pg.x_adv, y)[both].mean() - 1e-4


def test_bad_inputs_get_clear_errors(digits):
    model, x, y = digits
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        PGD(0.1)(model, x * 255, y)
    with pytest.raises(ValueError, match="1-D label"):
        PGD(0.1)(model, x, y[:-1])
    with pytest.raises(TypeError, match="float"):
        PGD(0.1)(model, (x * 255).to(torch.uint8), y)
    with pytest.raises(ValueError, match="norm"):
        PGD(0.1, norm="l3")
    with pytest.raises(ValueError, match="unknown norm"):
        APGD(0.1, norm="l3")
    with pytest.raises(ValueError, match="APGDT"):
        APGD(0.1, targeted=True, loss="dlr")
    with pytest.raises(ValueError, match="one value per norm"):
        MSD((0.1, 0.2), norms=("linf", "l2", "l1"))


def test_zero_radius_changes_nothing(digits):
    model, x, y = digits
    for atk in (PGD(0.0, steps=3), PGD(0.0, steps=3, norm="l1"), MSD(0.0, steps=2), APGD(0.0, steps=3)):
        res = atk(model, x, y)
        torch.testing.assert_close(res.x_adv, x)
        assert torch.equal(res.success, _misclassified(model, x, y))


def test_attacks_run_on_cuda(cuda_device, digits):
    model, x, y = digits
    gpu_model = model.to(cuda_device)
    try:
        xg, yg = x.to(cuda_device), y.to(cuda_device)
        for atk in (FGSM(0.05, random_start=True, seed=0), PGD(2.0, norm="l1", steps=5, seed=0), MSD(EPS, steps=3),
                    APGD(0.05, steps=5, seed=0)):
            res = atk(gpu_model, xg, yg)
            assert res.x_adv.device.type == "cuda" and res.success.device.type == "cuda"
            assert ((res.x_adv >= 0) & (res.x_adv <= 1)).all()
    finally:
        model.to("cpu")
