"""SOAR / FOAR (spec-002 ch. 3): the finite-difference Hessian-vector product against autograd, the regulariser
against a dense-Hessian reference, PGD1, clipping, pass counts; a tiny study run (PGD-20, APGD-CE/DLR/T)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision.studies.soar import (
    FOARTraining,
    SoarStudyConfig,
    SOARTraining,
    autograd_hvp,
    clip_value,
    fd_hvp,
    linf_to_l2_radius,
    pgd1_point,
    run_soar_study,
    soar_prefactor,
    soar_regularizer,
)


def _tanh_net(d: int = 9, k: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(),
                         nn.Linear(12, k)).double()


def _relu_conv(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 10)).double()


def _data(shape=(5, 1, 3, 3), k=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, k, (shape[0],), generator=g)
    return x, y


def test_radius_conversion_and_prefactor_match_the_thesis():
    assert linf_to_l2_radius(8 / 255, 3072) == pytest.approx(1.7388, abs=1e-4)  # "8/255 sqrt(3072) = 1.74"
    assert soar_prefactor(4 / 255, 3072) == pytest.approx(0.5 * (3072 * (4 / 255) ** 2 + 1))
    assert soar_prefactor(4 / 255, 3072) == pytest.approx(0.878, abs=1e-3)  # spec's App. 3.A arithmetic
    with pytest.raises(ValueError):
        linf_to_l2_radius(-1.0, 3)


def test_finite_difference_hvp_matches_autograd_on_a_smooth_network():
    model = _tanh_net()
    x, y = _data()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = autograd_hvp(model, x, y, v)
    errs = []
    for h in (1e-2, 1e-4, 1e-6):
        approx = fd_hvp(model, x, y, v, h)
        errs.append(float((approx - exact).flatten(1).norm(dim=1).max() / exact.flatten(1).norm(dim=1).min()))
    assert errs[2] < 1e-5
    assert errs[0] > errs[1] > errs[2]  # O(h) convergence: the test can tell FD from the exact product
    # the direction is normalised: scaling v scales the product linearly (not quadratically)
    assert torch.allclose(fd_hvp(model, x, y, 3 * v, 1e-6), 3 * fd_hvp(model, x, y, v, 1e-6), rtol=1e-6, atol=1e-9)


def test_finite_difference_hvp_matches_autograd_on_a_relu_conv_net():
    model = _relu_conv()
    x, y = _data((4, 1, 6, 6), 10, seed=3)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = autograd_hvp(model, x, y, v)
    approx = fd_hvp(model, x, y, v, 1e-7)
    assert exact.abs().max() > 1e-3
    assert torch.allclose(approx, exact, rtol=1e-4, atol=1e-6 * float(exact.abs().max()))


def test_regularizer_equals_the_dense_hessian_formula():
    model = _tanh_net(d=6, k=3)
    x, y = _data((3, 1, 2, 3), 3, seed=5)
    d, eps = 6, 0.05
    z = torch.randn(3, d + 1, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    r, ce, _ = soar_regularizer(model, x, y, eps, h=1e-6, z=z, create_graph=False)
    for i in range(3):
        def loss_i(xi, i=i):
            return F.cross_entropy(model(xi.view(1, 1, 2, 3)), y[i: i + 1])

        xi = x[i].reshape(-1)
        hess = torch.autograd.functional.hessian(loss_i, xi)
        grad = torch.autograd.functional.jacobian(loss_i, xi)
        big = torch.zeros(d + 1, d + 1, dtype=torch.float64)
        big[:d, :d], big[:d, d], big[d, :d], big[d, d] = hess, grad, grad, 1.0  # H of eq. (3.6)
        ref = 0.5 * (d * eps ** 2 + 1) * (big @ z[i]).norm()
        assert float(r[i].detach()) == pytest.approx(float(ref), rel=1e-5)
        assert float(ce[i].detach()) == pytest.approx(float(loss_i(xi).detach()), rel=1e-12)


def test_pgd1_point_stays_in_the_half_ball_and_raises_the_loss():
    model = _relu_conv().float()
    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(7))
    y = torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(8))
    eps = 0.2
    gen = torch.Generator().manual_seed(0)
    xp = pgd1_point(model, x, y, eps, "pgd1", gen)
    assert (xp - x).abs().max() <= eps / 2 + 1e-6 and xp.min() >= 0 and xp.max() <= 1
    xr = pgd1_point(model, x, y, eps, "rand", torch.Generator().manual_seed(0))
    assert (xr - x).abs().max() <= eps / 2 + 1e-6
    assert torch.equal(pgd1_point(model, x, y, eps, "zero"), x)
    with torch.no_grad():
        assert F.cross_entropy(model(xp), y) > F.cross_entropy(model(xr), y)
    with pytest.raises(ValueError, match="unknown init"):
        pgd1_point(model, x, y, eps, "bogus")


def test_clipping_modes():
    r = torch.tensor([4.0, 20.0], requires_grad=True)
    out = clip_value(r, 10.0, "rescale")
    assert out.tolist() == pytest.approx([4.0, 10.0])
    (g,) = torch.autograd.grad(out.sum(), r)
    assert g.tolist() == pytest.approx([1.0, 0.5])  # gradient clipped (scaled by c/R), not removed
    (g,) = torch.autograd.grad(clip_value(r, 10.0, "clamp").sum(), r)
    assert g.tolist() == pytest.approx([1.0, 0.0])
    assert clip_value(r, 10.0, "none") is r
    with pytest.raises(ValueError, match="clip mode"):
        clip_value(r, 10.0, "soft")


class _Counter(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x):
        self.calls += 1
        return self.net(x)


@pytest.mark.parametrize("cls,forwards", [(SOARTraining, 3), (FOARTraining, 2)])
def test_training_step_gives_parameter_gradients_and_pass_counts(cls, forwards):
    model = _Counter(_relu_conv().float())
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(9))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(10))
    defense = cls(0.1, seed=0)
    loss, logits = defense(model, x, y)
    assert model.calls == forwards  # Table 3.5: SOAR 3 forward passes (PGD1, x', x' + h z~), FOAR 1 + PGD1's
    assert logits.shape == (16, 10) and math.isfinite(float(loss.detach()))
    assert float(loss.detach()) == pytest.approx(defense.last["ce"] + defense.last["reg"], rel=1e-5)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the regulariser really reaches the weights (double back-propagation), not only the CE
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    ce_only = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert not torch.allclose(torch.cat([g.flatten() for g in grads]), ce_only)


def test_parameter_gradient_clip_of_the_regulariser():
    model = _relu_conv().float()
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(11))
    y = torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(12))
    free = SOARTraining(0.3, seed=1, clip=None, clip_mode="none", lam=50.0)
    clipped = SOARTraining(0.3, seed=1, clip=None, clip_mode="none", lam=50.0, grad_clip=1e-3)

    def reg_grad_norm(defense):
        model.zero_grad()
        loss, _ = defense(model, x, y)
        loss.backward()
        total = torch.cat([p.grad.flatten() for p in model.parameters()])
        model.zero_grad()
        xp = pgd1_point(model, x, y, 0.3, "pgd1", torch.Generator().manual_seed(1))
        F.cross_entropy(model(xp), y).backward()
        ce = torch.cat([p.grad.flatten() for p in model.parameters()])
        return float((total - ce).norm()), loss

    n_free, l_free = reg_grad_norm(free)
    n_clip, l_clip = reg_grad_norm(clipped)
    assert n_free > 1e-2
    assert n_clip == pytest.approx(1e-3, rel=1e-3)
    assert float(l_clip.detach()) == pytest.approx(float(l_free.detach()), rel=1e-6)  # clip leaves the value


def test_tiny_study_run_writes_tables_and_reuses_weights(tmp_path):
    cfg = SoarStudyConfig(dataset="digits", n_train=300, n_test=40, eps=0.1, pretrain_epochs=2, epochs=1,
                          methods=("standard", "pgd-at", "foar", "soar"), batch_size=64, pgd_at_steps=2,
                          eval_pgd_steps=3, eval_apgd_steps=4, n_target_classes=2, device="cpu", lr=0.01)
    m = run_soar_study(cfg, tmp_path / "soar", progress=False)
    out = tmp_path / "soar"
    for name in ("config.json", "metrics.json", "robustness.md", "robustness.csv", "robustness.json",
                 "diagnostics.md", "robustness.png", "training_loss.png", "soar.safetensors"):
        assert (out / name).is_file(), name
    rows = {r["method"]: r for r in m["rows"]}
    assert set(rows) == {"standard", "pgd-at", "foar", "soar"}
    for r in rows.values():
        assert r["worst-case %"] <= min(r["PGD-3 %"], r["APGD-DLR %"], r["APGD-T (DLR) %"]) <= r["clean %"]
        assert r["nonzero grads"] <= 64
    assert "APGD-T (DLR)" in (out / "robustness.md").read_text()
    assert m["input_dim"] == 64 and m["soar_prefactor"] == pytest.approx(0.5 * (64 * 0.05 ** 2 + 1))
    with pytest.raises(FileExistsError):
        run_soar_study(cfg, out, progress=False)
    m2 = run_soar_study(cfg, out, overwrite=True, progress=False)  # same config: weights reused, same numbers
    assert all(h == "reused" for h in m2["histories"].values())
    assert json.loads((out / "robustness.json").read_text())["rows"] == json.loads(json.dumps(m["rows"]))
    with pytest.raises(ValueError, match="unknown method"):
        run_soar_study(SoarStudyConfig(methods=("standard", "mart")), tmp_path / "x", progress=False)
