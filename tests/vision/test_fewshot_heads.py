"""Few-shot heads: ridge and SVM gradients against finite differences, the SVM solution against its KKT
conditions, strong duality and an independent QP solver (scipy), ProtoNet and MAML against closed forms, and the
MI-FGSM attack against FGSM."""

from __future__ import annotations

import pytest
import torch

from vision.fewshot.heads import MAMLHead, ProtoHead, RidgeHead, SVMHead, build_head
from vision.fewshot.svm_qp import cs_svm_alpha, kkt_residuals, project_simplex, solve_cs_dual


def _task(b=2, way=3, shot=2, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, way * shot, d, generator=g, dtype=torch.float64)
    y = torch.arange(way).repeat_interleave(shot).expand(b, -1).clone()
    q = torch.randn(b, 4, d, generator=g, dtype=torch.float64)
    return x, y, q


def test_ridge_head_closed_form_and_gradcheck():
    x, y, q = _task()
    lam = 0.7
    head = RidgeHead(lam).double()
    w = head.fit(x, y, 3).weight
    # primal closed form: (X^T X + lam I)^{-1} X^T Y equals the dual form used by the head
    onehot = torch.nn.functional.one_hot(y, 3).double()
    primal = torch.linalg.solve(x.transpose(1, 2) @ x + lam * torch.eye(5, dtype=torch.float64),
                                x.transpose(1, 2) @ onehot)
    assert torch.allclose(w, primal, atol=1e-10)
    assert torch.autograd.gradcheck(lambda s, qq: head(s, y, qq, 3), (x.requires_grad_(), q.requires_grad_()))


def test_proto_head_is_negative_scaled_distance_to_class_means():
    x, y, q = _task()
    logits = ProtoHead().double()(x, y, q, 3)
    means = torch.stack([x[:, y[0] == k].mean(1) for k in range(3)], dim=1)
    expected = -((q.unsqueeze(2) - means.unsqueeze(1)) ** 2).sum(-1) / 5
    assert torch.allclose(logits, expected)


def test_simplex_projection_against_brute_force():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(50, 4, generator=g, dtype=torch.float64) * 2
    p = project_simplex(v, 0.6)
    assert torch.allclose(p.sum(1), torch.full((50,), 0.6, dtype=torch.float64)) and bool((p >= 0).all())
    # brute force: the projection is closer to v than random feasible points
    cand = torch.distributions.Dirichlet(torch.ones(4, dtype=torch.float64)).sample((50, 200)) * 0.6
    assert bool((((cand - v[:, None]) ** 2).sum(-1) >= ((p - v) ** 2).sum(-1)[:, None] - 1e-12).all())


@pytest.mark.parametrize("cost,ridge", [(0.1, 0.0), (1.0, 0.0), (5.0, 1.0)])
def test_svm_solution_satisfies_kkt_and_strong_duality(cost, ridge):
    x, y, _ = _task(b=3, way=4, shot=3, d=16, seed=1)
    gram = x @ x.transpose(1, 2)
    beta, info = solve_cs_dual(gram, y, 4, cost, ridge)
    assert info.failed_tasks == 0
    alpha = cs_svm_alpha(gram, y, 4, cost, ridge)
    res = kkt_residuals(gram, y, 4, alpha, cost, ridge)
    assert max(res.values()) < 1e-9, res
    if ridge == 0.0:  # Crammer-Singer primal at w = X^T alpha has the same objective value as the dual
        w = x.transpose(1, 2) @ alpha                      # (b, d, way)
        scores = x @ w
        onehot = torch.nn.functional.one_hot(y, 4).double()
        xi = (1 - onehot + scores - (scores * onehot).sum(2, keepdim=True)).amax(2)
        primal = 0.5 * (w ** 2).sum((1, 2)) + cost * xi.sum(1)
        dual = -0.5 * (w ** 2).sum((1, 2)) + (alpha * onehot).sum((1, 2))
        assert torch.allclose(primal, dual, atol=1e-9)


def test_svm_matches_scipy_qp_solver():
    scipy_opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    x, y, _ = _task(b=1, way=3, shot=2, d=4, seed=2)
    gram = (x @ x.transpose(1, 2))[0].numpy()
    cost, ridge, n, m = 0.5, 0.3, 6, 3
    onehot = np.eye(m)[y[0].numpy()]
    kr = gram + ridge * np.eye(n)

    def f(a):
        a = a.reshape(n, m)
        return 0.5 * np.einsum("ik,ij,jk->", a, kr, a) - (a * onehot).sum()

    def grad(a):
        return (kr @ a.reshape(n, m) - onehot).ravel()

    cons = [{"type": "eq", "fun": lambda a: a.reshape(n, m).sum(1), "jac": lambda a: np.kron(np.eye(n),
                                                                                                np.ones((1, m)))}]
    bounds = [(None, cost * onehot.ravel()[i]) for i in range(n * m)]
    ref = scipy_opt.minimize(f, np.zeros(n * m), jac=grad, bounds=bounds, constraints=cons, method="SLSQP",
                             options={"ftol": 1e-14, "maxiter": 500})
    ours = cs_svm_alpha(torch.from_numpy(gram)[None], y, m, cost, ridge)[0].numpy().ravel()
    assert ref.success and f(ours) <= f(ref.x) + 1e-10
    assert np.allclose(ours, ref.x, atol=1e-5)


def test_svm_head_gradient_matches_finite_differences():
    x, y, q = _task(b=2, way=3, shot=2, d=8, seed=4)
    head = SVMHead(cost=0.5, ridge=0.5).double()
    g = torch.Generator().manual_seed(5)
    weights = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)

    def loss(s, qq):
        return (head(s, y, qq, 3) * weights).sum()

    beta, _ = solve_cs_dual(x @ x.transpose(1, 2), y, 3, 0.5, 0.5)
    assert bool((beta == 0).any()) and bool((beta > 1e-6).sum(2).gt(1).any())  # both bounds and free coordinates
    s0, q0 = x.clone().requires_grad_(True), q.clone().requires_grad_(True)
    gs, gq = torch.autograd.grad(loss(s0, q0), (s0, q0))
    h = 1e-6
    for _ in range(4):  # central differences along random directions of the support and the query embeddings
        ds = torch.randn(x.shape, generator=g, dtype=torch.float64)
        dq = torch.randn(q.shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            fd = (loss(x + h * ds, q + h * dq) - loss(x - h * ds, q - h * dq)) / (2 * h)
        assert float(fd) == pytest.approx(float((gs * ds).sum() + (gq * dq).sum()), rel=1e-5, abs=1e-7)
    assert float(gs.abs().sum()) > 0  # the support embeddings do receive a gradient through the QP


def test_maml_head_inner_steps_against_closed_form():
    x, y, q = _task(b=1, way=3, shot=2, d=5, seed=6)
    head = MAMLHead(5, 3, steps=1, lr=0.3).double()
    with torch.no_grad():
        head.weight0.copy_(torch.randn(5, 3, dtype=torch.float64))
    fitted = head.fit(x, y, 3)
    p = torch.softmax(x @ head.weight0 + head.bias0, dim=2)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    w_expected = head.weight0 - 0.3 * x.transpose(1, 2) @ (p - onehot) / 6
    assert torch.allclose(fitted.weight, w_expected, atol=1e-12)
    # second order: the outer gradient reaches the support embeddings through the inner step
    s = x.clone().requires_grad_(True)
    (gs,) = torch.autograd.grad(head(s, y, q, 3).sum(), s)
    assert float(gs.abs().sum()) > 0
    with pytest.raises(ValueError, match="3-way"):
        head.fit(x[:, :4], y[:, :4] % 2, 2)


def test_head_input_checks():
    with pytest.raises(ValueError, match="unknown head"):
        build_head("knn", 4, 5)
    x, y, q = _task()
    with pytest.raises(ValueError, match=r"support labels must lie in \[0, 2\)"):
        RidgeHead().double().fit(x, y, 2)
    with pytest.raises(ValueError, match="cost C > 0"):
        solve_cs_dual(x @ x.transpose(1, 2), y, 3, cost=0.0)


def test_mifgsm_one_step_is_fgsm_and_stays_in_ball():
    from vision.attacks.fgsm import FGSM
    from vision.fewshot.attacks import MIFGSM
    from vision.models import build_model

    torch.manual_seed(0)
    model = build_model("mnist_small", 10, 1, 8).eval()
    x, y = torch.rand(20, 1, 8, 8), torch.randint(0, 10, (20,))
    a = MIFGSM(0.1, steps=1)(model, x, y).x_adv
    b = FGSM(0.1)(model, x, y).x_adv
    assert torch.allclose(a, b)
    res = MIFGSM(0.1, steps=10)(model, x, y)
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6 and 0 <= float(res.x_adv.min())
    assert res.success_rate >= MIFGSM(0.02, steps=10)(model, x, y).success_rate
