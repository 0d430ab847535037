"""Defenses: the fast inner step against the attack library's FGSM, TRADES' inner maximisation, schedules, the
catastrophic-overfitting guard, robust early stopping, and the main claim: adversarial training on digits raises
robust accuracy (measured with the attack library's PGD) over standard training."""

from __future__ import annotations

import pytest
import torch

from data_loaders.images import load_images
from vision.attacks.fgsm import FGSM
from vision.attacks.pgd import PGD, make_generator
from vision.attacks.steps import random_start
from vision.defenses.early_stopping import CatastrophicOverfittingGuard, RobustEarlyStopping
from vision.defenses.fast import FastTraining, fgsm_rs_delta
from vision.defenses.loop import amp_dtype, lr_factor
from vision.defenses.trades import TradesTraining, trades_kl
from vision.evaluate import robust_accuracy
from vision.models import build_model
from vision.train import VisionTrainConfig, train_run


@pytest.fixture(scope="module")
def digits():
    return load_images("digits", split="train"), load_images("digits", split="test")


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model("mnist_small", 10, 1, 8)


def test_fast_step_equals_library_fgsm_with_random_start():
    model = _model()
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    eps = 0.1
    lib = FGSM(eps, random_start=True, seed=3, use_eval_mode=False)(model, x, y).x_adv
    delta0 = random_start(x, eps, "linf", make_generator(3, x.device))
    ours = x + fgsm_rs_delta(model, x, y, eps, 1.25 * eps, delta0=delta0)
    torch.testing.assert_close(ours, lib)
    d = ours - x
    assert float(d.abs().max()) <= eps + 1e-6 and float(ours.min()) >= 0 and float(ours.max()) <= 1
    assert FastTraining(eps).alpha == pytest.approx(1.25 * eps)


def test_trades_inner_max_raises_kl_and_stays_in_ball():
    model = _model().eval()
    x = torch.rand(32, 1, 8, 8)
    tr = TradesTraining(eps=0.2, alpha=0.05, steps=10)
    x_adv = tr.perturb(model, x)
    assert float((x_adv - x).abs().max()) <= 0.2 + 1e-6 and float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        clean = model(x)
        x_rand = (x + (torch.rand_like(x) * 2 - 1) * 0.2).clamp(0, 1)
        assert float(trades_kl(model(x_adv), clean)) > 2 * float(trades_kl(model(x_rand), clean))
    loss, logits = tr(model, x, torch.zeros(32, dtype=torch.long))
    assert loss.ndim == 0 and logits.shape == (32, 10)


def test_lr_schedules():
    f = lr_factor("cyclic", 100, 0.4)
    vals = [f(s) for s in range(100)]
    assert max(vals) == pytest.approx(1.0) and vals.index(max(vals)) == 39
    assert vals[0] == pytest.approx(1 / 40) and vals[-1] == pytest.approx(0.0)
    assert all(a <= b for a, b in zip(vals[:40], vals[1:40]))
    p = lr_factor("piecewise", 100)
    assert (p(0), p(60), p(90)) == (1.0, 0.1, 0.01)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("warm", 10)


def test_amp_choice():
    assert amp_dtype("auto", "cpu") is None
    assert amp_dtype("auto", "cuda") == torch.bfloat16 and amp_dtype("fp16", "cuda:0") == torch.float16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        amp_dtype("bf16", "cpu")


def test_guard_restores_previous_weights_on_collapse(digits):
    train, _ = digits
    model = _model()
    x, y = train.float()[:200], train.y[:200]
    opt = torch.optim.Adam(model.parameters(), 5e-3)
    for _ in range(60):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    guard = CatastrophicOverfittingGuard(x[:64], y[:64], PGD(0.05, 0.02, 5, seed=0), drop=0.2)
    assert guard.check(model, 0) is False and guard.history[0] > 0.5
    good = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # collapse: every input now maps to class 0
        last = model.net[-1]
        last.weight.zero_()
        last.bias.copy_(torch.arange(10, 0, -1, dtype=torch.float32))
    assert guard.check(model, 1) is True and guard.triggered_epoch == 1
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, good[k])


def test_robust_early_stopping_keeps_the_best(digits):
    train, _ = digits
    x, y = train.float()[:100], train.y[:100]
    stopper = RobustEarlyStopping(x, y, PGD(0.05, 0.02, 3, seed=0), patience=1)
    trained = _model()
    opt = torch.optim.Adam(trained.parameters(), 5e-3)
    for _ in range(40):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(trained(x), y).backward()
        opt.step()
    a1 = stopper.update(trained, 0)
    best = {k: v.clone() for k, v in trained.state_dict().items()}
    with torch.no_grad():
        for p in trained.parameters():
            p.zero_()
    a2 = stopper.update(trained, 1)
    assert a1 > a2 and stopper.best_epoch == 0 and stopper.should_stop
    stopper.restore(trained)
    for k, v in trained.state_dict().items():
        torch.testing.assert_close(v, best[k])


def test_adversarial_training_raises_robust_accuracy_on_digits(tmp_path, digits):
    _, test = digits
    eps = 0.1
    attack = PGD(eps, eps / 4, 20, restarts=2, seed=0)
    acc = {}
    for defense in ("standard", "fast", "pgd", "trades"):
        cfg = VisionTrainConfig(dataset="digits", defense=defense, eps=eps, epochs=5, batch_size=64,
                                optimizer="adam", lr_max=5e-3, weight_decay=0.0, n_test=0,
                                attack_steps=5, seed=0, device="cpu")
        train_run(cfg, tmp_path / defense, progress=False)
        from vision.evaluate import load_run_model

        model, _ = load_run_model(tmp_path / defense)
        acc[defense] = robust_accuracy(model, attack, test.x, test.y, 512)
    assert acc["standard"]["clean_acc"] > 0.9
    for d in ("fast", "pgd", "trades"):
        assert acc[d]["clean_acc"] > 0.85, (d, acc[d])
        assert acc[d]["robust_acc"] > acc["standard"]["robust_acc"] + 0.1, (d, acc)


def test_fast_training_on_cuda_with_bf16(tmp_path, cuda_device):
    cfg = VisionTrainConfig(dataset="digits", defense="fast", eps=0.1, epochs=3, batch_size=64, optimizer="adam",
                            lr_max=5e-3, weight_decay=0.0, n_test=200, device=cuda_device, amp="bf16")
    m = train_run(cfg, tmp_path / "gpu", progress=False)
    assert m["amp"] == "bfloat16" and m["device"] == "cuda" and m["test_clean_acc"] > 0.8


# ---- fast training: starts, the MNIST fix and the R+FGSM ablation (issue 15) ----
def test_clipping_the_start_collapses_fgsm_on_saturated_pixels_to_two_values():
    """On pixels at 0 (most of MNIST), clipping x + start to [0, 1] before the gradient leaves only {0, eps} after
    the step of 1.25 eps (zero-init FGSM's pattern); the unclipped start of the reference code spreads values."""
    torch.manual_seed(0)
    model = build_model("mnist_small", 10, 1, 8, mean=(0.0,), std=(1.0,))
    x = torch.zeros(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    eps = 0.3
    g = torch.Generator().manual_seed(0)
    clipped = fgsm_rs_delta(model, x, y, eps, 1.25 * eps, generator=g, clip_init=True)
    g = torch.Generator().manual_seed(0)
    free = fgsm_rs_delta(model, x, y, eps, 1.25 * eps, generator=g, clip_init=False)
    for d in (clipped, free):
        assert float(d.min()) >= 0 and float(d.max()) <= eps + 1e-6  # inside the ball and the box either way
    on_two = ((clipped == 0) | ((clipped - eps).abs() < 1e-6)).float().mean()
    assert on_two == 1.0
    interior = ((free > 1e-6) & (free < eps - 1e-6)).float().mean()
    assert interior > 0.15  # P(U(-eps, eps) + 1.25 eps in (0, eps)) = 0.375 where the gradient pushes up


def test_fast_starts_and_bad_init(tmp_path):
    from vision.defenses.fast import init_delta

    x = torch.rand(8, 1, 8, 8)
    h = init_delta(x, 0.15, "hypercube", torch.Generator().manual_seed(0))
    assert torch.equal(h.abs(), torch.full_like(x, 0.15))
    u = init_delta(x, 0.3, "uniform", torch.Generator().manual_seed(0))
    assert float(u.abs().max()) <= 0.3 and float(u.std()) > 0.1
    assert torch.equal(init_delta(x, 0.3, "zero"), torch.zeros_like(x))
    with pytest.raises(ValueError, match="--fast-init"):
        FastTraining(0.3, init="gauss")
    with pytest.raises(ValueError, match="--fast-init"):
        train_run(VisionTrainConfig(fast_init="gauss", defense="fast"), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_mnist_fast_recipe_avoids_catastrophic_overfitting_on_a_short_run(tmp_path):
    """The MNIST recipe (Adam, cyclic lr to 5e-3, batch 100, alpha 0.375, unclipped uniform start) on 10,000
    images for 6 epochs: robust, not collapsed (with the start clipped it reached 4% PGD accuracy, 47% without)."""
    from tests.conftest import shared_path

    shared_path("mnist")
    cfg = VisionTrainConfig(dataset="mnist", defense="fast", eps=0.3, alpha=0.375, optimizer="adam", lr_max=5e-3,
                            lr_peak=0.4, weight_decay=0.0, epochs=6, batch_size=100, n_train=10000, n_test=0,
                            guard=False, normalize=False, seed=0, device="cpu")
    train_run(cfg, tmp_path / "mnist-fast", progress=False)
    from vision.evaluate import load_run_model

    model, _ = load_run_model(tmp_path / "mnist-fast")
    test = load_images("mnist", None, "test").subset(slice(0, 200))
    r = robust_accuracy(model, PGD(0.3, 0.03, 20, seed=0), test.x, test.y)
    assert r["clean_acc"] > 0.9 and r["robust_acc"] > 0.3, r


def test_fast_ablation_writes_a_table_and_resumes(tmp_path):
    from vision.defenses.fast_ablation import FastAblationConfig, run_fast_ablation

    cfg = FastAblationConfig(dataset="digits", eps=0.1, seeds=[0, 1], rows=["rfgsm", "uniform-full"], n_train=300,
                             epochs=1, batch_size=50, n_test=60, eval_steps=3, eval_alpha=0.05, device="cpu")
    m = run_fast_ablation(cfg, tmp_path / "abl", progress=False)
    assert [r["row"] for r in m["rows"]] == ["rfgsm", "uniform-full"]
    for r in m["rows"]:
        assert len(r["robust_acc"]) == 2 and 0 <= r["robust_mean"] <= 1
    table = (tmp_path / "abl" / "table.md").read_text()
    assert "R+FGSM" in table and "hypercube(0.05)" in table and "34.58" in table
    assert len(list((tmp_path / "abl" / "runs").iterdir())) == 4
    stamp = (tmp_path / "abl" / "runs" / "rfgsm-seed0" / "ablation-eval.json").stat().st_mtime_ns
    run_fast_ablation(cfg, tmp_path / "abl", overwrite=True, progress=False)  # finished runs are reused
    assert (tmp_path / "abl" / "runs" / "rfgsm-seed0" / "ablation-eval.json").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown ablation row"):
        run_fast_ablation(FastAblationConfig(rows=["nope"]), tmp_path / "bad", progress=False)
