"""Teacher-student attacks and losses (vision/theory/oracle_attacks.py) and the teacher pruner."""

from __future__ import annotations

import copy

import pytest
import torch

from vision.theory.nets import ConvReLUNet, TwoLayer, wrap
from vision.theory.oracle_attacks import (
    OracleAttack,
    TeacherCCAT,
    agreement,
    ccat_lambda,
    discrepancy,
    subspace_residual,
)
from vision.theory.teacher_student import prune_by_fanout


def _pair(seed=0):
    torch.manual_seed(seed)
    teacher = wrap(ConvReLUNet((3, 3), 1, 4), 1).eval()
    student = wrap(ConvReLUNet((4, 4), 1, 4), 1).eval()
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    return teacher, student, x


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 0.5), ("l1", 2.0)])
def test_oracle_attack_stays_in_the_ball_and_raises_the_discrepancy(norm, eps):
    teacher, student, x = _pair()
    xa = OracleAttack(eps, 10, norm=norm, seed=0)(student, teacher, x)
    d = (xa - x).flatten(1)
    size = {"linf": d.abs().amax(1), "l2": d.norm(dim=1), "l1": d.abs().sum(1)}[norm]
    assert float(size.max()) <= eps + 1e-5 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    with torch.no_grad():
        before = discrepancy(student(x), teacher(x), "l2")
        after = discrepancy(student(xa), teacher(xa), "l2")
    assert bool((after >= before - 1e-6).all()) and float(after.mean()) > float(before.mean())


def test_a_copy_of_the_teacher_has_no_oracle_adversarial_examples():
    teacher, _, x = _pair(1)
    copy_ = copy.deepcopy(teacher)
    for objective in ("l2", "linf", "cw"):
        xa = OracleAttack(0.3, 5, objective=objective, seed=0)(copy_, teacher, x)
        assert bool(agreement(copy_, teacher, xa).all())
    with torch.no_grad():
        assert float(discrepancy(copy_(x), teacher(x), "l2").abs().max()) == 0.0


def test_fgsm_is_one_signed_step_and_free_attacks_leave_the_box():
    teacher, student, x = _pair(2)
    xa = OracleAttack(0.05, 1, alpha=0.05, random_start=False)(student, teacher, x)
    xr = x.clone().requires_grad_(True)
    obj = discrepancy(student(xr), teacher(xr), "l2").sum()
    (g,) = torch.autograd.grad(obj, xr)
    assert torch.allclose(xa, (x + 0.05 * g.sign()).clamp(0, 1), atol=1e-6)
    t2, s2 = TwoLayer(5, 3, 2).double(), TwoLayer(5, 6, 2).double()
    z = 3.0 * torch.randn(4, 5, dtype=torch.float64)
    za = OracleAttack(1.0, 5, norm="l2", box=False, seed=0)(s2, t2, z)
    assert float((za - z).norm(dim=1).max()) <= 1.0 + 1e-9 and float(z.abs().max()) > 1.0


def test_ccat_lambda_subspace_residual_and_ccat_loss():
    d = torch.zeros(3, 1, 4, 4)
    d[1, 0, 0, 0], d[2, 0, 1, 1] = 0.05, 0.2
    assert torch.allclose(ccat_lambda(d, 0.1, 2.0), torch.tensor([1.0, 0.25, 0.0]))
    basis = torch.eye(9, dtype=torch.float64)[:, :3]  # the first 3 pixels of every 3x3 patch
    inside = torch.zeros(1, 1, 3, 3)
    inside[0, 0, 0, :] = 1.0
    outside = torch.zeros(1, 1, 3, 3)
    outside[0, 0, 2, 2] = 1.0
    assert float(subspace_residual(inside, basis)) == pytest.approx(0.0)
    assert float(subspace_residual(outside, basis)) == pytest.approx(1.0)
    teacher, student, x = _pair(3)
    loss_fn = TeacherCCAT(teacher, OracleAttack(0.1, 2, objective="linf", seed=0), rho=10.0)
    loss, logits = loss_fn(student, x, torch.zeros(6, dtype=torch.long))
    assert logits.shape == (6, 4) and torch.isfinite(loss) and 0.0 <= loss_fn.last_lambda <= 1.0
    with pytest.raises(ValueError, match="Linf-ball attack"):
        TeacherCCAT(teacher, OracleAttack(0.1, 2), rho=5.0)


def test_pruning_dead_channels_keeps_the_function():
    torch.manual_seed(4)
    net = ConvReLUNet((5, 4), 1, 3)
    with torch.no_grad():  # channels 1 and 3 of layer 0 feed nothing; channel 2 of layer 1 neither
        net.convs[1].weight[:, [1, 3]] = 0.0
        net.head.weight[:, 2] = 0.0
    small = prune_by_fanout(net, (3, 3))
    x = torch.rand(4, 1, 9, 9)
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-6)
    assert small.widths == (3, 3)
    with pytest.raises(ValueError, match="pruned widths"):
        prune_by_fanout(net, (6, 3))


def test_attack_streams_and_per_example_radius():
    teacher, student, x = _pair(5)
    atk = OracleAttack(0.2, 3, seed=7)
    a1, a2 = atk(student, teacher, x), atk(student, teacher, x)
    assert not torch.equal(a1, a2)  # successive calls draw new starts (two runs of in/out-of-plane AT differ)
    assert torch.equal(OracleAttack(0.2, 3, seed=7)(student, teacher, x), a1)  # a fresh attack repeats them
    xa = OracleAttack(0.2, 3, objective="linf", radius="uniform", seed=1)(student, teacher, x)
    r = (xa - x).flatten(1).abs().amax(1)
    assert float(r.max()) <= 0.2 + 1e-6 and float(r.max() - r.min()) > 0.02  # radii differ per example
