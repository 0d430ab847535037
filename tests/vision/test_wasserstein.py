"""Projected Sinkhorn against exact references (scipy: the transport LP and the projection QP), the Lambert W
against scipy's, and the Wasserstein attack's guarantees (inside the ball, in the pixel range, mass kept)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import lambertw
from torch import nn

from vision.wasserstein.attack import WassersteinPGD, success_curve
from vision.wasserstein.exact import exact_projection, wasserstein_lp
from vision.wasserstein.sinkhorn import _fold_back, _unfold, lambertw_exp, local_cost, project_wasserstein


def _image(seed: int, h: int = 4, w: int = 4, sparse: float = 0.3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64)
    x[x < sparse] = 0
    return x / x.sum()


def test_lambertw_matches_scipy_and_solves_its_equation_for_huge_arguments():
    s = torch.tensor([-80.0, -20.0, -1.0, 0.0, 0.7, 1.0, 4.0, 30.0, 500.0], dtype=torch.float64)
    ref = torch.tensor([lambertw(np.exp(v)).real for v in s.tolist()], dtype=torch.float64)
    torch.testing.assert_close(lambertw_exp(s), ref, rtol=1e-12, atol=0)
    big = torch.tensor([2000.0, 1e5], dtype=torch.float64)          # e^s overflows: check W + log W = s
    w = lambertw_exp(big)
    torch.testing.assert_close(w + torch.log(w), big, rtol=1e-12, atol=0)


def test_local_cost_and_unfold_fold_are_adjoint():
    c = local_cost(3)
    assert c.tolist() == pytest.approx([2 ** 0.5, 1, 2 ** 0.5, 1, 0, 1, 2 ** 0.5, 1, 2 ** 0.5])
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 5, 6, generator=g, dtype=torch.float64)
    v = torch.rand(2, 1, 25, 30, generator=g, dtype=torch.float64)
    lhs = (_unfold(a, 5, 0.0) * v).sum()
    rhs = (a * _fold_back(v, 5, (5, 6))).sum()
    torch.testing.assert_close(lhs, rhs)
    with pytest.raises(ValueError, match="odd"):
        local_cost(4)


def test_projection_is_feasible_and_matches_the_exact_qp():
    for seed in (0, 1):
        x = _image(seed)
        g = torch.Generator().manual_seed(10 + seed)
        w = x + 0.25 * torch.randn(x.shape, generator=g, dtype=torch.float64) * x.max()
        eps = 0.25
        pr = project_wasserstein(x, w, eps, kernel=3, lam=2000.0, maxiter=400, tol=1e-9)
        z = pr.z[0, 0].numpy()
        ze, obj_exact = exact_projection(x[0, 0].numpy(), w[0, 0].numpy(), eps, kernel=3)
        obj = 0.5 * float(((w[0, 0].numpy() - z) ** 2).sum())
        assert z.min() >= 0 and z.sum() == pytest.approx(1.0, abs=1e-12)            # a mass vector
        assert float(pr.cost) <= eps * (1 + 1e-9)                                       # certified by its plan
        assert wasserstein_lp(x[0, 0].numpy(), z, kernel=3) <= eps * (1 + 1e-7)         # exact transport LP
        assert obj >= obj_exact - 1e-12                                                 # the QP is optimal ...
        assert obj <= obj_exact * 1.02                                                  # ... and Sinkhorn close
        assert np.abs(z - ze).max() <= 0.04 * np.abs(w[0, 0].numpy() - x[0, 0].numpy()).max()


def test_projection_of_a_point_inside_the_ball_and_the_pixel_ceiling():
    x = _image(3, 5, 5)
    pr = project_wasserstein(x, x.clone(), 0.5, kernel=3, lam=5000.0, maxiter=200, tol=1e-10)
    torch.testing.assert_close(pr.z, x, atol=1e-2 * float(x.max()), rtol=0)        # up to the entropic blur
    w = x.clone()
    w[0, 0, 2, 2] += 5 * x.max()                                                         # pushes one pixel up
    up = 1.3 * float(x.max())
    pr = project_wasserstein(x, w, 2.0, kernel=3, lam=1000.0, maxiter=300, upper=up)
    assert float(pr.z.max()) <= up * (1 + 1e-9) and float(pr.cost) <= 2.0
    # a saturated pixel (x at the ceiling) next to a pushed one: the excess goes back, no degenerate blend
    g = torch.Generator().manual_seed(5)
    w = x + 0.5 * float(x.max()) * torch.randn(x.shape, generator=g, dtype=torch.float64)
    up = float(x.max())
    pr = project_wasserstein(x, w, 0.3, kernel=3, lam=1000.0, maxiter=300, upper=up)
    assert float(pr.z.max()) <= up * (1 + 1e-9) and float(pr.blend) > 0.5 and float(pr.cost) <= 0.3 * (1 + 1e-9)
    assert float(pr.z.sum()) == pytest.approx(1.0, abs=1e-12)
    assert float((pr.z - x).abs().sum()) > 0.01                          # it did move mass


def test_attack_stays_in_the_ball_and_the_pixel_range():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 3))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 6, 6, generator=g)
    x[x < 0.5] = 0
    with torch.no_grad():
        y = net(x).argmax(1)
    y[0] = (y[0] + 1) % 3                                               # one clean mistake: found at radius 0
    atk = WassersteinPGD(eps=0.02, alpha=0.05, steps=15, eps_factor=1.4, eps_every=3, kernel=3, lam=1000.0,
                         sinkhorn_iters=40)
    res = atk(net, x, y)
    assert float(res.eps_found[0]) == 0.0
    assert bool(res.success[torch.isfinite(res.eps_found)].all())
    assert float(res.x_adv.min()) >= 0 and float(res.x_adv.max()) <= 1
    for b in range(6):
        m = float(x[b].sum())
        assert float(res.x_adv[b].sum()) == pytest.approx(m, rel=1e-5)                  # mass kept
        d = wasserstein_lp((x[b, 0] / m).double().numpy(), (res.x_adv[b, 0] / res.x_adv[b].sum()).double().numpy(),
                           kernel=3)                                     # the local-plan distance >= the global one
        assert d <= float(res.eps_final[b]) * (1 + 1e-4) + 1e-7                          # inside the ball
    curve = success_curve(res.eps_found, [0.0, 0.05, 0.1, 1.0])
    assert curve == sorted(curve) and curve[0] == pytest.approx(1 / 6)
    assert atk.max_eps == pytest.approx(0.02 * 1.4 ** 4)
    assert bool((res.eps_found[1:] > 0).all())                          # the others needed a perturbation


def test_clear_errors():
    x = _image(0)
    with pytest.raises(ValueError, match="non-negative"):
        project_wasserstein(-x, x, 0.1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        project_wasserstein(x[0], x[0], 0.1)
    with pytest.raises(ValueError, match="odd"):
        WassersteinPGD(kernel=4)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(ValueError, match="no mass"):
        WassersteinPGD(steps=2)(net, torch.zeros(1, 1, 4, 4), torch.tensor([0]))
