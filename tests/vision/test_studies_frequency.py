"""Optimisers and frequencies (spec-002 ch. 4): the DCT basis and bands against scipy and Parseval, band-limited
noise, the Lipschitz bound against a dense SVD, and the linear theory's 1.146 ratio checked exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.fft import dctn
from torch import nn

from vision.studies.frequency import (
    FrequencyStudyConfig,
    LinearProblem,
    adversarial_risk,
    band_accuracy_drop,
    band_energies,
    band_limited_noise,
    basis_sensitivity,
    dct2,
    dct_matrix,
    gd_closed_form,
    idct2,
    linear_dynamics,
    lipschitz_upper_bound,
    radial_bands,
    run_frequency_study,
    signgd_frequency_recursion,
    standard_risk,
    theory_ratio_interval,
)


@pytest.mark.parametrize("n", [3, 8, 28])
def test_dct_basis_is_orthonormal_and_matches_scipy(n):
    c = dct_matrix(n)
    assert torch.allclose(c @ c.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    x = torch.rand(2, 3, n, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    ref = dctn(x.numpy(), type=2, norm="ortho", axes=(-2, -1))
    assert np.allclose(dct2(x).numpy(), ref, atol=1e-12)
    assert torch.allclose(idct2(dct2(x)), x, atol=1e-12)


def test_dct3_matrix_is_the_thesis_matrix():
    s = math.sqrt
    ref = torch.tensor([[s(1 / 3)] * 3, [s(1 / 2), 0, -s(1 / 2)], [s(1 / 6), -s(2 / 3), s(1 / 6)]], dtype=torch.float64)
    assert torch.allclose(dct_matrix(3), ref, atol=1e-12)


def test_radial_bands_have_equal_sizes_and_grow_in_frequency():
    for n, k in ((28, 10), (32, 10), (8, 4)):
        bands = radial_bands(n, k)
        counts = np.bincount(bands.ravel(), minlength=k)
        assert counts.max() - counts.min() <= 1 and counts.sum() == n * n
        assert bands[0, 0] == 0 and bands[n - 1, n - 1] == k - 1
        i, j = np.indices((n, n))
        dist = np.hypot(i, j)
        for b in range(k - 1):
            assert dist[bands == b].max() <= dist[bands == b + 1].min()
    with pytest.raises(ValueError):
        radial_bands(4, 17)


def test_band_energies_sum_to_the_total_energy():
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    e = band_energies(dct2(x), radial_bands(16, 10))
    assert e.shape == (10,) and (e > 0).all()
    assert float(e.sum()) == pytest.approx(float((x ** 2).sum()), rel=1e-12)  # Parseval


def test_band_limited_noise_lives_in_its_band():
    bands = radial_bands(12, 6)
    mask = torch.as_tensor(bands == 3)
    noise = band_limited_noise((2, 12, 12), mask, 0.5, torch.Generator().manual_seed(2))
    coeff = dct2(noise.double())
    assert float(coeff[:, ~mask].abs().max()) < 1e-5 and float(coeff[:, mask].abs().max()) > 0.1
    e = band_energies(coeff, bands)
    assert float(e[3]) == pytest.approx(float(e.sum()), rel=1e-9)


def test_lipschitz_bound_matches_dense_operator_norms():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
    lin = nn.Linear(3 * 3 * 3, 4)
    net = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), lin)
    # dense matrix of the convolution on 2x5x5 inputs
    eye = torch.eye(50).view(50, 2, 5, 5)
    mat = (torch.nn.functional.conv2d(eye, conv.weight.detach(), None, 2, 1)).reshape(50, -1).T.double()
    lin_w = lin.weight.detach().double()
    ref = float(torch.linalg.matrix_norm(mat, ord=2)) * float(torch.linalg.matrix_norm(lin_w, ord=2))
    got = lipschitz_upper_bound(net, (2, 5, 5))
    assert got["bound"] == pytest.approx(ref, rel=1e-6)
    x = torch.rand(200, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    d = torch.randn(200, 2, 5, 5, generator=torch.Generator().manual_seed(4)) * 1e-2
    with torch.no_grad():
        ratio = (net(x + d) - net(x)).norm(dim=1) / d.flatten(1).norm(dim=1)
    assert float(ratio.max()) <= got["bound"] * (1 + 1e-6)
    with pytest.raises(ValueError, match="no operator norm"):
        lipschitz_upper_bound(nn.Sequential(nn.Conv2d(1, 1, 3), nn.BatchNorm2d(1)), (1, 5, 5))


def test_linear_theory_ratio_exactly():
    p = LinearProblem()
    th = theory_ratio_interval(p)
    assert th["A0"] == pytest.approx(0.0289, abs=1e-4) and th["B0"] == pytest.approx(0.0177, abs=1e-4)
    assert th["case"] == "|A(0)| > |B(0)|"
    assert (th["low"], th["high"]) == pytest.approx((1.0375, 1.15))  # the thesis' "[1.04, 1.15]"
    # GD: closed form equals the iteration, the irrelevant frequency never moves
    it = linear_dynamics(p, "gd", 500)
    assert np.allclose(it["w"], gd_closed_form(p, 500), atol=1e-10)
    w_gd = gd_closed_form(p, 3_000_000)
    assert w_gd[2] == 0.02 and np.allclose(w_gd[:2], (5, 10), atol=1e-9)
    # signGD in the spatial domain equals the frequency-domain recursion (4.16) derived in the thesis
    sg = linear_dynamics(p, "signgd", 20000)
    e_rec, count = signgd_frequency_recursion(p, 20000)
    assert np.allclose(sg["w"], e_rec + np.array(p.w_star), atol=1e-5)
    assert standard_risk(sg["w"], p) < 1e-3
    moved = abs(sg["w"][2] - p.w0[2])
    assert math.sqrt(6) / 6 * p.lr * count <= moved <= math.sqrt(6) / 3 * p.lr * count  # eq. (4.27)
    ratio = adversarial_risk(sg["w"], p) / adversarial_risk(w_gd, p)
    assert th["low"] <= ratio <= th["high"]
    assert ratio == pytest.approx(1.146, abs=0.002)  # thesis: 1.146
    assert float(sg["w"] @ sg["w"]) == pytest.approx(143.12, abs=0.01)
    with pytest.raises(ValueError, match="unknown method"):
        linear_dynamics(p, "lbfgs", 3)


def test_sampled_gradients_agree_with_the_population_run():
    p = LinearProblem()
    exact = linear_dynamics(p, "gd", 300)
    sampled = linear_dynamics(p, "gd", 300, samples=1000, seed=0)
    assert np.allclose(exact["w"], sampled["w"], atol=0.02)


def _tiny_model(n=8):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(n * n, 10)).eval()


def test_probes_have_the_right_shapes_and_vanish_at_zero_size():
    model = _tiny_model()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 10, (40,), generator=torch.Generator().manual_seed(6))
    bands = radial_bands(8, 4)
    assert band_accuracy_drop(model, x, y, bands, 0.0, draws=2) == [0.0] * 4
    drops = band_accuracy_drop(model, x, y, bands, 3.0, draws=3)
    assert len(drops) == 4 and all(-1 <= d <= 1 for d in drops)
    s0 = basis_sensitivity(model, x, y, 0.0)
    assert s0.shape == (8, 8) and float(s0.abs().max()) == 0.0
    s = basis_sensitivity(model, x, y, 5.0)
    assert float(s.max()) > 0 and float(s.max()) <= 1


def test_tiny_study_run_writes_everything(tmp_path):
    cfg = FrequencyStudyConfig(dataset="digits", model="mnist_small", n_train=300, n_test=60, n_attack=20, n_basis=10,
                               epochs=1, batch_size=64, apgd_steps=2, n_target_classes=1, n_bands=4, band_draws=2,
                               gauss_var=(0.01,), l2_eps=(0.5,), linf_eps=(0.05,), linear_adaptive_steps=300,
                               device="cpu")
    m = run_frequency_study(cfg, tmp_path / "f", progress=False)
    out = tmp_path / "f"
    for name in ("robustness.md", "band_noise_drop.csv", "gradient_band_energy.json", "basis_sensitivity.png",
                 "gradient_energy_dct.png", "data_spectrum.png", "linear_theory.md", "linear_dynamics.png",
                 "band_noise_drop.png", "sgd-seed0.safetensors", "metrics.json"):
        assert (out / name).is_file(), name
    assert [r["optimizer"] for r in m["rows"]] == ["sgd", "adam", "rmsprop"]
    for r in m["gradient_band_energy"]:
        assert sum(r[f"band {b}"] for b in range(4)) == pytest.approx(100.0, abs=0.05)
    assert all(r["Lipschitz bound"] > 0 for r in m["rows"])
    with pytest.raises(ValueError, match="unknown optimizer"):
        run_frequency_study(FrequencyStudyConfig(optimizers=("lion",)), tmp_path / "g", progress=False)
