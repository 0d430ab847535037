"""The dual network against independent references: dense sampling and PGD (soundness), the literal backward dual
network (the forward pass of Algorithm 2 computes the same J), the exact LP relaxation solved by scipy's HiGHS
(weak duality for every slope, equality at the optimal slopes), and interval arithmetic; plus the robust loss,
certificates, the median estimator, cascades and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision.certify.dual import DualNetwork
from vision.certify.evaluate import cascade_errors
from vision.certify.loss import certify_batch, margin_bounds, robust_loss
from vision.certify.lp import lp_bound, optimise_alpha
from vision.certify.studies import interval_bounds, mlp, toy_points
from vision.certify.training import eps_ramp, step_decay


class ResBN(nn.Module):
    """Conv -> BatchNorm (running stats) -> ReLU -> residual block -> average pool -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 4, stride=2, padding=1)
        self.c3 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 2 * 2, 3)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))
        h = F.relu(self.c2(h))
        h = F.relu(self.c3(h) + h)
        h = F.avg_pool2d(h, 2)
        return self.fc(torch.flatten(h, 1))


def _resbn() -> nn.Module:
    torch.manual_seed(1)
    net = ResBN().double()
    with torch.no_grad():
        net.bn.running_mean.uniform_(-0.3, 0.3)
        net.bn.running_var.uniform_(0.5, 2.0)
        net.bn.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.2, 0.2)
    return net.eval()


def _samples(x: torch.Tensor, eps: float, n: int, norm: str = "linf") -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    shape = (x.shape[0], n, *x.shape[1:])
    if norm == "linf":
        d = (torch.rand(shape, generator=g, dtype=x.dtype) * 2 - 1) * eps
        d[:, : n // 4] = d[:, : n // 4].sign() * eps                        # vertices of the box too
    else:
        d = torch.randn(shape, generator=g, dtype=x.dtype)
        d = d / d.flatten(2).norm(dim=2).view(x.shape[0], n, *([1] * (x.dim() - 1))) * eps
    return x.unsqueeze(1) + d


def test_bounds_contain_every_sampled_output_and_forward_equals_backward_dual():
    net = _resbn()
    x = torch.rand(3, 1, 8, 8, dtype=torch.float64)
    for norm, eps in (("linf", 0.05), ("l2", 0.2)):
        dn = DualNetwork(net, x, eps, norm=norm)
        lo, up = dn.output_bounds()
        xs = _samples(x, eps, 400, norm)
        with torch.no_grad():
            ys = net(xs.reshape(-1, 1, 8, 8)).reshape(3, 400, 3)
        assert bool((ys >= lo.unsqueeze(1) - 1e-9).all()) and bool((ys <= up.unsqueeze(1) + 1e-9).all())
        c = torch.randn(3, 5, 3, dtype=torch.float64)
        j_fwd, j_bwd = dn.objective(c), dn.dual_objective(c)
        torch.testing.assert_close(j_fwd, j_bwd, rtol=1e-10, atol=1e-10)
        assert bool((j_fwd.unsqueeze(1) <= torch.einsum("bnk,bmk->bnm", ys, c) + 1e-9).all())
    # eps = 0: the bounds collapse onto the eval-mode output (batch norm folded with its running statistics)
    lo, up = DualNetwork(net, x, 0.0).output_bounds()
    with torch.no_grad():
        torch.testing.assert_close(lo, net(x))
        torch.testing.assert_close(up, net(x))


def test_clipped_box_and_per_example_radii_are_sound_and_tighter():
    torch.manual_seed(0)
    net = mlp([6, 16, 16, 3]).double()
    x = torch.rand(4, 6, dtype=torch.float64)
    eps = torch.tensor([0.0, 0.05, 0.2, 0.4], dtype=torch.float64)
    c = torch.randn(4, 3, 3, dtype=torch.float64)
    free, clipped = DualNetwork(net, x, eps), DualNetwork(net, x, eps, clip=(0.0, 1.0))
    torch.testing.assert_close(clipped.objective(c), clipped.dual_objective(c), rtol=1e-10, atol=1e-10)
    assert bool((clipped.objective(c) >= free.objective(c) - 1e-12).all())
    xs = (_samples(x, 1.0, 2000) - x.unsqueeze(1)) * eps.view(4, 1, 1) + x.unsqueeze(1)
    xs = xs.clamp(0, 1)
    with torch.no_grad():
        vals = torch.einsum("bnk,bmk->bnm", net(xs), c)
    assert bool((clipped.objective(c).unsqueeze(1) <= vals + 1e-9).all())
    with torch.no_grad():
        torch.testing.assert_close(free.objective(c)[0], c[0] @ net(x[:1])[0])   # eps 0 is exact


def test_dual_is_below_lp_for_every_slope_and_reaches_it_at_the_best_slopes():
    torch.manual_seed(3)
    for sizes in ([3, 8, 2], [3, 8, 8, 2]):
        net = mlp(sizes).double()
        x = torch.rand(2, 3, dtype=torch.float64)
        dn = DualNetwork(net, x, 0.3)
        c = torch.randn(2, 2, 2, dtype=torch.float64)
        fixed = dn.objective(c).detach()
        best, _ = optimise_alpha(dn, c, steps=150, lr=0.05)
        g = torch.Generator().manual_seed(1)
        rand_alpha = {i: torch.rand((2, 2, *dn.graph.nodes[i].shape), generator=g, dtype=torch.float64)
                      for i in dn.graph.relus()}
        rand = dn.dual_objective(c, rand_alpha).detach()
        xs = _samples(x, 0.3, 3000)
        with torch.no_grad():
            true_min = torch.einsum("bnk,bmk->bnm", net(xs), c).amin(1)
        for b in range(2):
            lp = torch.as_tensor(lp_bound(dn, c[b], b))
            lp_tight = torch.as_tensor(lp_bound(dn, c[b], b, tighten=True))
            assert bool((fixed[b] <= lp + 1e-7).all()) and bool((rand[b] <= lp + 1e-7).all())   # weak duality
            torch.testing.assert_close(best[b], lp, rtol=1e-4, atol=1e-4)                        # strong duality
            assert bool((lp <= lp_tight + 1e-7).all()) and bool((lp_tight <= true_min[b] + 1e-7).all())


def test_dual_bounds_are_far_tighter_than_interval_arithmetic():
    torch.manual_seed(0)
    net = mlp([2, 50, 50, 50, 2]).double()
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.normal_(0, 1 / layer.in_features ** 0.5)
                layer.bias.normal_(0, 1)
    x = torch.rand(1, 2, dtype=torch.float64)
    lo_i, up_i = interval_bounds(net, x - 0.05, x + 0.05)
    lo_d, up_d = DualNetwork(net, x, 0.05).output_bounds()
    assert bool((lo_d >= lo_i - 1e-9).all()) and bool((up_d <= up_i + 1e-9).all())
    assert float((up_d - lo_d).sum().detach()) < 0.5 * float((up_i - lo_i).sum().detach())


def test_median_estimator_converges_to_the_exact_bound():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    x = torch.rand(4, 1, 6, 6)
    c = torch.randn(4, 2, 3)
    for norm in ("linf", "l2"):                    # Cauchy projections for l1 norms, Gaussian for the l2 norm
        exact = DualNetwork(net, x, 0.1, norm=norm).objective(c).detach()
        errs = []
        for r in (8, 400):
            est = DualNetwork(net, x, 0.1, norm=norm, proj=r, generator=torch.Generator().manual_seed(2))
            errs.append(float(((est.objective(c).detach() - exact) / exact.abs()).abs().median()))
        assert errs[1] < errs[0] and errs[1] < 0.05


def test_robust_loss_upper_bounds_the_loss_at_pgd_points_and_certificates_hold():
    from vision.attacks.pgd import PGD

    x, y = toy_points(8, 0.2, seed=2)
    torch.manual_seed(0)
    net = mlp([2, 32, 32, 2])
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    for _ in range(150):
        loss, _ = robust_loss(net, x, y, 0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
    j = margin_bounds(net, x, y, 0.05).detach()
    adv = PGD(0.05, 0.01, 40, restarts=3, seed=0)(net, x, y)
    with torch.no_grad():
        ce_adv = F.cross_entropy(net(adv.x_adv), y, reduction="none")
    assert bool((F.cross_entropy(-j, y, reduction="none") >= ce_adv - 1e-5).all())      # Theorem 2
    cert = certify_batch(net, x, y, 0.05)
    assert int(cert.certified.sum()) >= 6                                                  # training worked
    assert not bool((cert.certified & adv.success).any())                                  # never contradicted
    assert bool((cert.certified <= (cert.pred == y)).all())
    assert bool((cert.detected == cert.certified).all() or (cert.pred != y).any())


def test_cascade_follows_algorithm_4():
    y = torch.tensor([0, 1, 2, 0])
    preds = [torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 1, 0])]
    cert = [torch.tensor([True, False, False, False]), torch.tensor([False, True, True, True])]
    r = cascade_errors(preds, cert, y)["prefixes"]
    assert r[0] == {"stages": 1, "robust_err": 0.75, "standard_err": 0.5, "no_certificate": 0.75}
    # example 3: stage 2 certifies label 0 but stage 1 predicted 2, so no certificate; example 2: certified wrong
    assert r[1]["robust_err"] == 0.5 and r[1]["no_certificate"] == 0.25 and r[1]["standard_err"] == 0.5


def test_schedules():
    f = eps_ramp(0.01, 0.1, 10)
    assert f(0) == pytest.approx(0.01) and f(5) == pytest.approx(0.055) and f(10) == f(99) == pytest.approx(0.1)
    g = step_decay(steps_per_epoch=4, start_epoch=2, step=1, gamma=0.5)
    assert [g(i) for i in (0, 7, 8, 12, 16)] == [1.0, 1.0, 1.0, 0.5, 0.25]
    assert step_decay(4, 2, 0, 0.5)(100) == 1.0


def test_clear_errors():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match="MaxPool2d"):
        DualNetwork(net, torch.rand(1, 1, 4, 4), 0.1)
    lin = mlp([3, 4, 2])
    with pytest.raises(ValueError, match="norm"):
        DualNetwork(lin, torch.rand(2, 3), 0.1, norm="l1")
    with pytest.raises(ValueError, match="linf only"):
        DualNetwork(lin, torch.rand(2, 3), 0.1, norm="l2", clip=(0, 1))
    with pytest.raises(ValueError, match="radii"):
        DualNetwork(lin, torch.rand(2, 3), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="eps must be >= 0"):
        DualNetwork(lin, torch.rand(2, 3), -0.1)
