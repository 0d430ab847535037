"""Core math of vision/theory against independent references: correlations, patch PCA, subspace deviations,
FFT singular values of convolutions, Hessian power iteration, Lemma 6.1, norm-bias, NTK, Lemma 3.1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vision.theory import conv_spectrum as cs
from vision.theory.hessian import dense_hessian, extreme_eigenvalues, hvp, loss_and_grad
from vision.theory.lemma31 import check_lemma31, interlacing_holds, segment_pieces
from vision.theory.linear_embedding import embed_linear, min_preactivation
from vision.theory.nets import MLP, ConvReLUNet, conv_layers
from vision.theory.norm_bias import NormBiasTraining, norm_bias_penalty, squared_norm
from vision.theory.ntk import empirical_ntk, jacobian, ntk_change
from vision.theory.specialization import (
    best_correlation,
    channel_activations,
    in_out_deviation,
    mean_best_correlation,
    normalized_correlation,
    patch_pca,
    projected_angles,
    specialization_counts,
)

# ---- teacher-student correlation --------------------------------------------------------------------------------

def test_correlation_is_one_for_a_copy_and_invariant_to_permuting_hidden_nodes():
    g = torch.Generator().manual_seed(0)
    teacher = torch.relu(torch.randn(200, 6, generator=g) @ torch.randn(6, 6, generator=g))
    rho = normalized_correlation(teacher, teacher)
    assert torch.allclose(best_correlation(rho), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert mean_best_correlation(rho) == pytest.approx(1.0, abs=1e-12)
    # a student that copies the teacher with its hidden nodes permuted (and rescaled, shifted)
    perm = torch.randperm(6, generator=g)
    student = 3.0 * teacher[:, perm] + 0.5
    rho_p = normalized_correlation(student, teacher)
    assert torch.allclose(best_correlation(rho_p), torch.ones(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(rho_p, rho[perm], atol=1e-12)
    # extra (useless) student nodes do not lower the BNC; a noisy copy lowers it below 1
    noisy = teacher + 2.0 * torch.randn(teacher.shape, generator=g)
    wide = torch.cat([student, torch.randn(200, 4, generator=g)], dim=1)
    assert mean_best_correlation(normalized_correlation(wide, teacher)) == pytest.approx(1.0, abs=1e-12)
    assert mean_best_correlation(normalized_correlation(noisy, teacher)) < 0.95


def test_correlation_matches_numpy_and_counts_nodes():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(50, 4, generator=g), torch.randn(50, 3, generator=g)
    t[:, 0] = s[:, 2] * 0.9 + 0.1 * t[:, 0]
    ref = np.corrcoef(np.concatenate([s.numpy(), t.numpy()], axis=1).T)[:4, 4:]
    rho = normalized_correlation(s, t)
    assert np.allclose(rho.numpy(), ref, atol=1e-10)
    counts = specialization_counts(rho)
    assert counts["teacher_specialized"] == 1 and counts["teacher_unspecialized"] == 2
    const = torch.cat([s, torch.ones(50, 1)], dim=1)  # a dead node correlates 0 with everything
    assert float(normalized_correlation(const, t)[-1].abs().max()) == 0.0
    with pytest.raises(ValueError, match="same N"):
        normalized_correlation(s, t[:10])


def test_channel_activations_layouts():
    a = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    pos = channel_activations(a, "positions")
    assert pos.shape == (8, 3) and float(pos[1, 2]) == float(a[0, 2, 0, 1])
    assert torch.equal(channel_activations(a, "pool"), a.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="pooling"):
        channel_activations(a, "max")


def test_patch_pca_matches_an_explicit_patch_loop():
    g = torch.Generator().manual_seed(2)
    img = torch.rand(3, 2, 6, 5, generator=g)
    rows = [img[n, :, i:i + 3, j:j + 3].reshape(-1).numpy() for n in range(3) for i in range(4) for j in range(3)]
    cov = np.cov(np.array(rows, dtype=np.float64).T)
    vals, vecs = patch_pca(img, 3)
    assert np.allclose(vals.numpy(), np.sort(np.linalg.eigvalsh(cov))[::-1], atol=1e-12)
    assert torch.allclose(vecs.T @ vecs, torch.eye(18, dtype=torch.float64), atol=1e-10)


def test_in_out_deviation_splits_the_difference_orthogonally():
    g = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(9, 4, generator=g, dtype=torch.float64))
    t = torch.randn(3, 9, generator=g, dtype=torch.float64)
    s = torch.randn(5, 9, generator=g, dtype=torch.float64)
    e_in, e_out = in_out_deviation(s, t, basis)
    dw = s[:, None] / s.norm(dim=1)[:, None, None] - t[None] / t.norm(dim=1)[None, :, None]
    assert torch.allclose(e_in ** 2 + e_out ** 2, (dw ** 2).sum(2), atol=1e-12)
    # a student = teacher + an out-of-plane part has eps_in = 0 only when norms agree; the in-plane angle is 0
    perp = torch.randn(9, generator=g, dtype=torch.float64)
    perp -= basis @ (basis.T @ perp)
    s2 = t[:1] + 5.0 * perp
    assert float(projected_angles(s2, t[:1], basis)[0, 0]) == pytest.approx(0.0, abs=1e-4)
    e_in2, e_out2 = in_out_deviation(t[:1], t[:1], basis)
    assert float(e_in2) == 0.0 and float(e_out2) == 0.0


# ---- FFT singular values of convolutions ------------------------------------------------------------------------

@pytest.mark.parametrize("shape,n", [((3, 2, 3, 3), 5), ((2, 4, 3, 3), 4), ((2, 2, 2, 2), 6)])
def test_fft_singular_values_match_a_dense_svd_of_the_convolution(shape, n):
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    dense = torch.linalg.svdvals(cs.conv_operator_matrix(w, n))
    fft = cs.conv_singular_values(w, n)
    assert fft.numel() == n * n * min(shape[:2])
    assert torch.allclose(fft, dense[: fft.numel()], atol=1e-10)
    rest = dense[fft.numel():]
    assert rest.numel() == 0 or float(rest.abs().max()) < 1e-10  # the rest of the dense spectrum is zero


def test_dense_operator_is_the_circular_convolution():
    w = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    x = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="circular"), w)
    assert torch.allclose(cs.conv_operator_matrix(w, 5) @ x.reshape(-1), ref.reshape(-1), atol=1e-12)


def test_rank_projections_are_exact_when_the_kernel_fills_the_grid():
    w = torch.randn(3, 3, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    s = cs.conv_singular_values(w, 4)
    for fn in (cs.rank_min(0.3), cs.rank_max(0.5)):
        w2 = cs.project_conv_spectrum(w, 4, fn)
        assert torch.allclose(cs.conv_singular_values(w2, 4), fn(s).sort(descending=True).values, atol=1e-9)
    assert cs.effective_rank(torch.ones(7)) == pytest.approx(7 ** 0.5)
    assert cs.effective_rank(torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    # clipping raises the effective rank, zeroing small values lowers it
    assert cs.effective_rank(cs.rank_max(0.2)(s)) > cs.effective_rank(s) > cs.effective_rank(cs.rank_min(0.5)(s))
    with pytest.raises(ValueError, match="fraction"):
        cs.rank_min(1.5)


def test_layer_spectra_and_projection_on_a_network():
    net = ConvReLUNet((4, 5), in_channels=1, num_classes=3)
    layers = conv_layers(net, (1, 10, 10))
    assert [size for _, _, size in layers] == [10, 8, 1]
    sv = cs.layer_singular_values(layers, "fft")
    assert sv["convs.0"].numel() == 100 * 1 and sv["head"].numel() == 3
    assert torch.allclose(cs.layer_singular_values(layers, "reshape")["head"], sv["head"])
    before = cs.linear_singular_values(net.head.weight)
    cs.apply_rank_projection(layers, "rankmax", 0.5)
    after = cs.linear_singular_values(net.head.weight)
    assert torch.allclose(after, torch.minimum(before, 0.5 * before.max()), atol=1e-6)  # linear layers: exact


# ---- Hessian ------------------------------------------------------------------------------------------------------

def _tiny_problem():
    torch.manual_seed(0)
    net = MLP(3, num_classes=3, width=4, depth=2).double()
    x = torch.randn(20, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    return net, x, y


def test_power_iteration_matches_a_dense_eigensolver():
    net, x, y = _tiny_problem()
    params = list(net.parameters())
    flat = torch.cat([p.reshape(-1) for p in params]).detach()

    def loss_of(v):
        chunks, i = [], 0
        for p in params:
            chunks.append(v[i:i + p.numel()].view_as(p))
            i += p.numel()
        h = torch.relu(x @ chunks[0].T + chunks[1])
        return F.cross_entropy(h @ chunks[2].T + chunks[3], y)

    ref_h = torch.autograd.functional.hessian(loss_of, flat)  # independent of our HVP
    assert torch.allclose(dense_hessian(net, x, y, ), ref_h, atol=1e-10)
    ev = torch.linalg.eigvalsh(ref_h)
    out = extreme_eigenvalues(lambda v: hvp(net, x, y, v), flat.numel(), iters=3000, tol=1e-13,
                              dtype=torch.float64)
    assert out["max"] == pytest.approx(float(ev.max()), rel=1e-5, abs=1e-8)
    assert out["min"] == pytest.approx(float(ev.min()), rel=1e-4, abs=1e-6)
    loss, g = loss_and_grad(net, x, y, batch_size=7)
    assert loss == pytest.approx(float(loss_of(flat)), rel=1e-12)


# ---- Lemma 6.1 ----------------------------------------------------------------------------------------------------

def test_lemma61_embedding_reproduces_the_linear_classifier_exactly_at_init():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(40, 12, generator=g, dtype=torch.float64) * 5
    lin = nn.Linear(12, 4).double()
    mlp = MLP(12, num_classes=4, widths=(6, 5, 4)).double()
    c = embed_linear(mlp, lin.weight, lin.bias, x)
    with torch.no_grad():
        assert torch.allclose(mlp(x), lin(x), atol=1e-10)
    assert min_preactivation(mlp, x) >= 1.0 - 1e-9  # every ReLU is active on the data
    assert c > 1.0
    # a rank-2 map fits through width-2 layers; a rank-4 map does not
    low = torch.randn(4, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 12, generator=g, dtype=torch.float64)
    thin = MLP(12, num_classes=4, widths=(2, 2)).double()
    embed_linear(thin, low, torch.zeros(4, dtype=torch.float64), x)
    with torch.no_grad():
        assert torch.allclose(thin(x), x @ low.T, atol=1e-9)
    with pytest.raises(ValueError, match="rank"):
        embed_linear(MLP(12, num_classes=4, widths=(3,)).double(), lin.weight, lin.bias, x)


# ---- norm-bias ----------------------------------------------------------------------------------------------------

def test_norm_bias_gradient_and_weight_decay_limit():
    torch.manual_seed(1)
    net = nn.Linear(5, 3)
    phi2 = float(squared_norm(net).detach())
    for mu2 in (0.0, phi2 + 10.0):
        net.zero_grad()
        norm_bias_penalty(net, mu2).backward()
        sign = 1.0 if phi2 > mu2 else -1.0
        for p in net.parameters():
            assert torch.allclose(p.grad, 2 * sign * p.detach(), atol=1e-6)
    # mu = 0: one SGD step with the penalty equals SGD with weight decay 2 * coef
    x, y = torch.randn(8, 5), torch.randint(0, 3, (8,))
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    b.load_state_dict(a.state_dict())
    loss, _ = NormBiasTraining(0.0, 0.01)(a, x, y)
    loss.backward()
    torch.optim.SGD(a.parameters(), lr=0.1).step()
    F.cross_entropy(b(x), y).backward()
    torch.optim.SGD(b.parameters(), lr=0.1, weight_decay=0.02).step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


# ---- NTK ----------------------------------------------------------------------------------------------------------

def test_ntk_of_a_linear_model_is_the_closed_form():
    x = torch.randn(5, 4, dtype=torch.float64)
    lin = nn.Linear(4, 3).double()
    k = empirical_ntk(lin, x)
    ref = (x @ x.T + 1.0)[:, :, None, None] * torch.eye(3, dtype=torch.float64)
    assert k.shape == (5, 5, 3, 3) and torch.allclose(k, ref, atol=1e-10)
    torch.manual_seed(2)
    net = MLP(4, num_classes=2, width=6, depth=3).double()
    jac = jacobian(net, x)
    # one row by a finite difference over all parameters along a random direction
    v = torch.randn(jac.shape[1], dtype=torch.float64)
    params = list(net.parameters())
    with torch.no_grad():
        base = net(x).reshape(-1).clone()
        i = 0
        for p in params:
            p += 1e-6 * v[i:i + p.numel()].view_as(p)
            i += p.numel()
        fd = (net(x).reshape(-1) - base) / 1e-6
    assert torch.allclose(jac @ v, fd, atol=1e-4)
    change = ntk_change(k, 2.0 * k)
    assert change["correlation"] == pytest.approx(1.0) and change["relative_change"] == pytest.approx(1.0)


# ---- Lemma 3.1 ----------------------------------------------------------------------------------------------------

def test_lemma31_piece_sum_equals_the_feature_difference():
    torch.manual_seed(3)
    net = MLP(6, num_classes=3, width=8, depth=4).double()
    x0, x1 = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64) * 3
    for layer in (1, 2, 4):
        out = check_lemma31(net, x0, x1, layer)
        assert out["max_abs_error"] < 1e-9 * max(out["scale"], 1.0)
    pieces = segment_pieces(net, x0, x1)
    assert len(pieces) > 1 and pieces[0].t0 == 0.0 and pieces[-1].t1 == 1.0
    w = net.layers[1].weight
    for p in pieces:
        assert interlacing_holds(w, p.masks[1])


# ---- spec-004 margins ---------------------------------------------------------------------------------------------

def test_margin_geometry_of_a_linear_model_is_its_exact_boundary_distance():
    from vision.theory.regularisation import b2_groups, margin_geometry, margins

    torch.manual_seed(5)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    x = torch.randint(0, 256, (30, 1, 3, 4), dtype=torch.uint8)
    y = torch.randint(0, 4, (30,))
    geo = margin_geometry(model, x, y)
    assert torch.allclose(geo["input"], geo["feature"], atol=1e-5)  # features = inputs for a linear model
    w = model[1].weight.detach().double()
    xf = x.double().div(255.0).flatten(1)
    for i in range(5):  # walking the margin towards the nearest pairwise boundary lands exactly on it
        z = model(xf[i:i + 1].float()).detach().double()[0]
        d = (z[y[i]] - z) / (w[y[i]] - w).norm(dim=1).clamp_min(1e-12)
        d[y[i]] = float("inf")
        j = int(d.argmin())
        direction = (w[j] - w[y[i]]) / (w[j] - w[y[i]]).norm()
        moved = model((xf[i] + float(geo["input"][i]) * direction)[None].float()).detach().double()[0]
        assert float(moved[y[i]] - moved[j]) == pytest.approx(0.0, abs=1e-4)
    sv = torch.linalg.svdvals(w)
    assert torch.allclose(geo["jac_sv_std"], sv.std(unbiased=False).expand(30), atol=1e-5)
    logits = torch.tensor([[2.0, 1.0, -1.0], [0.0, 3.0, 1.0]])
    assert margins(logits, torch.tensor([0, 0])).tolist() == [1.0, -3.0]
    g = b2_groups({"a": 1.0, "b": 0.5, "c": 0.2}, {"a": 0.5, "b": 0.7, "c": 0.1})
    assert (g["group1_layers"], g["group2_layers"]) == (2, 1)
    assert g["group1_sum"] == pytest.approx(0.6) and g["group2_sum"] == pytest.approx(0.2)
