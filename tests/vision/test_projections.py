"""Projections onto the Linf, L2 and L1 balls (and L1 ball intersected with a box) against slow references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vision.attacks.projections import clip_box, project, project_l1, project_l1_box, project_l2, project_linf


def _ref_l1_box(v: np.ndarray, eps: float, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Slow reference: bisection on the multiplier lam of sign(v) * clip(|v| - lam, 0, b) (float64, 200 rounds)."""
    a = np.abs(v)
    b = np.where(v >= 0, hi, -lo)

    def sol(lam: float) -> np.ndarray:
        return np.sign(v) * np.clip(a - lam, 0.0, b)

    if np.abs(sol(0.0)).sum() <= eps:
        return sol(0.0)
    left, right = 0.0, float(a.max())
    for _ in range(200):
        mid = 0.5 * (left + right)
        if np.abs(sol(mid)).sum() > eps:
            left = mid
        else:
            right = mid
    return sol(right)


def _random_feasible(rng: np.random.Generator, n_pts: int, dim: int, eps: float, lo, hi) -> np.ndarray:
    """Random points of {||d||_1 <= eps, lo <= d <= hi}: uniform in the box, shrunk toward 0 into the ball."""
    pts = rng.uniform(lo, hi, size=(n_pts, dim))
    norms = np.abs(pts).sum(axis=1, keepdims=True)
    scale = np.minimum(1.0, eps / np.maximum(norms, 1e-30)) * rng.uniform(0.2, 1.0, size=(n_pts, 1))
    return pts * scale


def test_linf_and_l2_projections_closed_form():
    torch.manual_seed(0)
    d = torch.randn(16, 3, 4, 4)
    p = project_linf(d, 0.3)
    assert torch.equal(p, torch.clamp(d, -0.3, 0.3))
    q = project_l2(d, 1.5)
    norms = d.flatten(1).norm(dim=1)
    for i in range(16):
        expect = d[i] if norms[i] <= 1.5 else d[i] * 1.5 / norms[i]
        torch.testing.assert_close(q[i], expect)
    assert (q.flatten(1).norm(dim=1) <= 1.5 + 1e-5).all()


@pytest.mark.parametrize("dim", [1, 2, 7, 50])
def test_l1_projection_matches_bisection_reference(dim):
    rng = np.random.default_rng(dim)
    v = rng.normal(size=(64, dim)) * rng.uniform(0.1, 5.0, size=(64, 1))
    eps = 1.3
    got = project_l1(torch.tensor(v), eps).numpy()
    inf = np.full(dim, np.inf)
    for i in range(64):
        ref = _ref_l1_box(v[i], eps, -inf, inf)
        np.testing.assert_allclose(got[i], ref, atol=1e-9)


def test_l1_projection_kkt_and_closest_point():
    rng = np.random.default_rng(1)
    dim, eps = 12, 2.0
    v = rng.normal(size=(40, dim)) * 2.0
    z = project_l1(torch.tensor(v), eps).numpy()
    for i in range(40):
        vi, zi = v[i], z[i]
        assert np.abs(zi).sum() <= eps + 1e-9
        if np.abs(vi).sum() <= eps:
            np.testing.assert_allclose(zi, vi)
            continue
        # KKT: on the support |v| - |z| equals one threshold eta > 0, off it |v| <= eta, signs agree
        assert np.isclose(np.abs(zi).sum(), eps)
        support = zi != 0
        eta = (np.abs(vi) - np.abs(zi))[support]
        assert np.allclose(eta, eta[0]) and eta[0] > 0
        assert (np.abs(vi[~support]) <= eta[0] + 1e-12).all()
        assert (np.sign(zi[support]) == np.sign(vi[support])).all()
        # no random feasible point is closer
        cand = rng.normal(size=(2000, dim))
        cand *= eps * rng.uniform(0, 1, size=(2000, 1)) / np.abs(cand).sum(axis=1, keepdims=True)
        cand = np.vstack([cand, zi + 1e-3 * rng.normal(size=(200, dim))])
        cand = cand[np.abs(cand).sum(axis=1) <= eps]
        assert (np.linalg.norm(cand - vi, axis=1) >= np.linalg.norm(zi - vi) - 1e-12).all()


def test_l1_projection_edge_cases():
    z = torch.zeros(3, 5)
    assert torch.equal(project_l1(z, 1.0), z)
    v = torch.tensor([[3.0, -3.0, 3.0, 0.0]])  # ties
    p = project_l1(v, 3.0)
    torch.testing.assert_close(p, torch.tensor([[1.0, -1.0, 1.0, 0.0]]))
    assert torch.equal(project_l1(v, 0.0), torch.zeros_like(v))
    inside = torch.tensor([[0.1, -0.2, 0.3]])
    assert torch.equal(project_l1(inside, 1.0), inside)
    with pytest.raises(ValueError, match="eps"):
        project_l1(v, -1.0)


def test_l1_projection_idempotent_on_image_sized_float32():
    torch.manual_seed(0)
    d = torch.randn(8, 3, 32, 32)
    p = project_l1(d, 12.0)
    assert p.dtype == torch.float32
    assert (p.flatten(1).abs().sum(dim=1) <= 12.0 * (1 + 1e-6)).all()
    torch.testing.assert_close(project_l1(p, 12.0), p)


@pytest.mark.parametrize("dim", [1, 3, 10, 64])
def test_l1_box_projection_matches_bisection_reference(dim):
    rng = np.random.default_rng(10 + dim)
    x = rng.uniform(0, 1, size=(50, dim))
    x[:, : dim // 3] = rng.integers(0, 2, size=(50, dim // 3))  # pixels sitting on the box edges
    v = rng.normal(size=(50, dim)) * rng.uniform(0.1, 2.0, size=(50, 1))
    eps = 0.2 * dim**0.5
    got = project_l1_box(torch.tensor(v), eps, torch.tensor(-x), torch.tensor(1 - x)).numpy()
    for i in range(50):
        ref = _ref_l1_box(v[i], eps, -x[i], 1 - x[i])
        np.testing.assert_allclose(got[i], ref, atol=1e-9)


def test_l1_box_projection_kkt_and_closest_point():
    rng = np.random.default_rng(2)
    dim, eps = 10, 1.5
    for _ in range(30):
        x = rng.uniform(0, 1, size=dim)
        v = rng.normal(size=dim) * 1.5
        z = project_l1_box(torch.tensor(v[None]), eps, torch.tensor(-x[None]), torch.tensor(1 - x[None])).numpy()[0]
        assert np.abs(z).sum() <= eps + 1e-9
        assert (x + z >= -1e-12).all() and (x + z <= 1 + 1e-12).all()
        # KKT: z = sign(v) clip(|v| - lam, 0, b) for one lam >= 0, and lam > 0 only if the L1 constraint is tight
        b = np.where(v >= 0, 1 - x, x)
        free = (np.abs(z) > 1e-12) & (np.abs(z) < b - 1e-12)
        if free.any():
            lam = (np.abs(v) - np.abs(z))[free]
            assert np.allclose(lam, lam[0], atol=1e-9) and lam[0] >= -1e-12
            lam0 = lam[0]
            np.testing.assert_allclose(z, np.sign(v) * np.clip(np.abs(v) - lam0, 0, b), atol=1e-9)
            if lam0 > 1e-9:
                assert np.isclose(np.abs(z).sum(), eps)
        pts = _random_feasible(rng, 3000, dim, eps, -x, 1 - x)
        local = z + 1e-3 * rng.normal(size=(300, dim))
        local = np.clip(local, -x, 1 - x)
        local = local[np.abs(local).sum(axis=1) <= eps]
        cand = np.vstack([pts, local])
        assert (np.linalg.norm(cand - v, axis=1) >= np.linalg.norm(z - v) - 1e-12).all()


def test_l1_box_with_infinite_box_equals_l1_ball_projection():
    torch.manual_seed(3)
    v = torch.randn(20, 30, dtype=torch.float64) * 3
    big = torch.full_like(v, 1e9)
    torch.testing.assert_close(project_l1_box(v, 4.0, -big, big), project_l1(v, 4.0))


def test_l1_box_rejects_box_excluding_zero():
    v = torch.randn(2, 4)
    with pytest.raises(ValueError, match="lo <= 0 <= hi"):
        project_l1_box(v, 1.0, torch.full_like(v, 0.1), torch.ones_like(v))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=12),
    st.floats(0.0, 6.0),
    st.integers(0, 2**31 - 1),
)
def test_project_images_feasible_for_every_norm(values, eps, seed):
    rng = np.random.default_rng(seed)
    d = torch.tensor(values, dtype=torch.float64)[None]
    x = torch.tensor(rng.uniform(0, 1, size=d.shape))
    for norm, p in (("linf", float("inf")), ("l2", 2), ("l1", 1)):
        out = project(d, x, eps, norm)
        assert float(torch.linalg.vector_norm(out, ord=p)) <= eps * (1 + 1e-9) + 1e-12
        assert ((x + out) >= -1e-12).all() and ((x + out) <= 1 + 1e-12).all()
    # the linf projection onto ball and box is the coordinate-wise clip (exact)
    torch.testing.assert_close(project(d, x, eps, "linf"), clip_box(x, d.clamp(-eps, eps)))
