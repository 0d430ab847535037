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


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
