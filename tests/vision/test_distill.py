"""Robust distillation: the KD/ARD losses against a hand-written KL, ARD = KD with the attack off, Fast-ARD with
m = 1 = ARD with a one-step attack, the efficiency meters against closed forms, and a tiny study end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from vision.distill.efficiency import count_madds, count_parameters
from vision.distill.losses import ard_loss, distill_kl, kd_loss
from vision.distill.steps import ARDStep, KDStep, ReplayStep
from vision.models import build_model


def _teacher_dir(path, num_classes=10, seed=0):
    """A teacher run directory made by hand: an untrained mnist_small on 8x8 digits (the tests need its logits,
    not its accuracy)."""
    from data_loaders.rundir import save_weights, write_json

    torch.manual_seed(seed)
    path.mkdir(parents=True)
    write_json(path / "config.json", {"dataset": "digits", "eps": 0.1, "root": None})
    write_json(path / "metrics.json", {"model_name": "mnist_small", "num_classes": num_classes,
                                       "input_shape": [1, 8, 8]})
    save_weights(path / "weights.safetensors", build_model("mnist_small", num_classes, 1, 8).state_dict())
    return path


def _sgd_update(model, lr=0.05):
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def update(loss):
        opt.zero_grad()
        loss.backward()
        opt.step()

    return update


def test_kd_loss_matches_hand_written_formula():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    y = torch.randint(0, 4, (6,), generator=g)
    temp, alpha = 3.0, 0.7
    p_t = torch.softmax(t / temp, 1)
    p_s = torch.softmax(s / temp, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(s, 1)[torch.arange(6), y].mean()
    expected = alpha * temp ** 2 * kl + (1 - alpha) * ce
    assert torch.allclose(kd_loss(s, t, temp, alpha, y), expected, atol=1e-6)
    assert float(distill_kl(t, t, temp)) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="needs the labels"):
        kd_loss(s, t, temp, 0.5)
    with pytest.raises(ValueError, match="alpha"):
        kd_loss(s, t, temp, 1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        distill_kl(s, t[:, :3], temp)


def test_ard_equals_kd_when_attack_is_off():
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    student = build_model("mnist_small", 10, 1, 8)
    teacher_logits = torch.randn(16, 10)
    # the loss itself: x' = x
    logits = student(x)
    assert torch.equal(ard_loss(logits, logits, teacher_logits, y, 5.0, 0.8), kd_loss(logits, teacher_logits, 5.0,
                                                                                      0.8, y))
    # one training step: ARD with zero attack steps and no random start == KD, parameter for parameter
    s_ard, s_kd = copy.deepcopy(student), copy.deepcopy(student)
    ARDStep(0.1, 0.025, 0, 5.0, 0.8, random_start=False)(s_ard, x, y, teacher_logits, _sgd_update(s_ard))
    KDStep(5.0, 0.8)(s_kd, x, y, teacher_logits, _sgd_update(s_kd))
    for a, b in zip(s_ard.parameters(), s_kd.parameters()):
        assert torch.allclose(a, b, rtol=0, atol=1e-7)  # same math; the label term uses a second forward pass
    # and a real attack changes the update
    s_att = copy.deepcopy(student)
    ARDStep(0.1, 0.025, 3, 5.0, 0.8)(s_att, x, y, teacher_logits, _sgd_update(s_att))
    assert any(not torch.equal(a, b) for a, b in zip(s_att.parameters(), s_kd.parameters()))


@pytest.mark.parametrize("attack_loss", ["ce", "kl"])
def test_fast_ard_with_one_replay_equals_ard_with_one_step(attack_loss):
    torch.manual_seed(1)
    student = build_model("mnist_small", 10, 1, 8)
    s_fast, s_ard = copy.deepcopy(student), copy.deepcopy(student)
    fast = ReplayStep(0.1, 0.04, replays=1, temperature=4.0, alpha=0.9, attack_loss=attack_loss, carry=False)
    ard = ARDStep(0.1, 0.04, 1, 4.0, 0.9, attack_loss=attack_loss, random_start=False)
    up_fast, up_ard = _sgd_update(s_fast), _sgd_update(s_ard)
    for _ in range(3):  # several batches: without carry every batch starts from delta = 0
        x, y = torch.rand(12, 1, 8, 8), torch.randint(0, 10, (12,))
        t = torch.randn(12, 10)
        lf, _ = fast(s_fast, x, y, t, up_fast)
        la, _ = ard(s_ard, x, y, t, up_ard)
        assert torch.allclose(lf, la, atol=1e-6)
    for a, b in zip(s_fast.parameters(), s_ard.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_replays_keep_delta_in_the_ball_and_carry_it():
    torch.manual_seed(2)
    student = build_model("mnist_small", 10, 1, 8)
    step = ReplayStep(0.05, 0.04, replays=4, use_teacher=False)
    x, y = torch.rand(10, 1, 8, 8), torch.randint(0, 10, (10,))
    step(student, x, y, None, _sgd_update(student))
    d = step._delta
    assert d.abs().max() <= 0.05 + 1e-7 and float((x + d).min()) >= 0 and float((x + d).max()) <= 1
    assert d.abs().max() > 0.04  # four steps of 0.04 reach the boundary of the 0.05 ball somewhere
    x2 = torch.rand(7, 1, 8, 8)
    assert torch.allclose(step._start(x2), ((x2 + d[:7]).clamp(0, 1) - x2))
    with pytest.raises(ValueError, match="needs a teacher"):
        ReplayStep(0.1, 0.01, 2, attack_loss="kl", use_teacher=False)


def test_efficiency_meters_against_closed_forms():
    small = build_model("mnist_small", 10, 1, 28)
    # conv1 14*14*16*16 + conv2 7*7*32*(16*16) + fc 1568*100 + fc 100*10
    assert count_madds(small, (1, 28, 28)) == 14 * 14 * 16 * 16 + 7 * 7 * 32 * 256 + 1568 * 100 + 1000
    assert count_parameters(small) == 166_406
    mnv2 = build_model("mobilenetv2", 10, 3, 32)
    assert count_parameters(mnv2) == 2_296_922          # the CIFAR MobileNetV2 of the ARD experiments
    # a depthwise conv costs C_out * H * W * 9 (groups = channels): check the hook on a bare layer
    dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_madds(dw, (8, 5, 5)) == 8 * 25 * 9
    assert mnv2(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def test_distill_run_and_errors(tmp_path):
    from vision.distill.run import DistillConfig, distill_run

    teacher_dir = _teacher_dir(tmp_path / "teacher")
    cfg = DistillConfig(method="fast-ard", teacher=str(teacher_dir), dataset="digits", eps=0.1, epochs=1,
                        batch_size=100, optimizer="adam", lr=5e-3, weight_decay=0, n_train=300, n_test=50,
                        eval_steps=2, replays=2, temperature=4, device="cpu")
    m = distill_run(cfg, tmp_path / "s", progress=False)
    assert m["teacher_logits_cached"] and m["updates"] == 3 * 2 and m["params"] == m["teacher_params"]
    assert 0 <= m["test_pgd_acc"] <= m["test_clean_acc"] <= 1 and m["seconds_per_epoch"] > 0
    assert json.loads((tmp_path / "s" / "config.json").read_text())["step_size"] == pytest.approx(0.025)
    with pytest.raises(ValueError, match="--teacher"):
        distill_run(DistillConfig(method="ard", dataset="digits"), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="drop --teacher"):
        distill_run(DistillConfig(method="at", teacher=str(teacher_dir), dataset="digits"), tmp_path / "x",
                    progress=False)
    odd = _teacher_dir(tmp_path / "odd", num_classes=3)  # a teacher whose classes do not match the data
    with pytest.raises(ValueError, match="teacher has 3 outputs"):
        distill_run(DistillConfig(method="kd", teacher=str(odd), dataset="digits", device="cpu"), tmp_path / "y",
                    progress=False)


def test_cli_distill_train_and_table(tmp_path):
    from click.testing import CliRunner

    from cli import main

    runner = CliRunner()
    teacher = _teacher_dir(tmp_path / "teacher")
    student = tmp_path / "ard"
    common = ["--dataset", "digits", "--eps", "0.1", "--epochs", "1", "--n-train", "200", "--n-test", "50",
              "--eval-steps", "2", "--attack-steps", "2", "--optimizer", "adam", "--lr", "5e-3", "--device", "cpu",
              "--quiet", "--threads", "1"]
    res = runner.invoke(main, ["vision", "distill", "train", "--preset", "cpu", "--method", "ard", "--teacher",
                               str(teacher), "--temperature", "4", "--out", str(student), *common])
    assert res.exit_code == 0, res.output
    assert "ard mnist_small" in res.output and "PGD-2 linf eps=0.1" in res.output
    cfg = json.loads((student / "config.json").read_text())
    assert cfg["temperature"] == 4 and cfg["optimizer"] == "adam" and cfg["n_train"] == 200  # preset overridden
    # the student directory is an ordinary vision run: advsim vision evaluate attacks it
    res = runner.invoke(main, ["vision", "evaluate", str(student), "--steps", "3", "--restarts", "1", "--n", "40",
                               "--device", "cpu", "--quiet"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["vision", "distill", "train", "--method", "kd", "--out", str(tmp_path / "bad"),
                               *common])
    assert res.exit_code == 1 and "pass its run directory with --teacher" in res.output

    study = tmp_path / "study"
    res = runner.invoke(main, ["vision", "distill", "table", "--dataset", "digits", "--teacher-model", "mnist_small",
                               "--eps", "0.1", "--attack-steps", "1", "--teacher-attack-steps", "1", "--replays", "2",
                               "--teacher-epochs", "1", "--student-epochs", "2", "--n-train", "64", "--n-test", "30",
                               "--eval-steps", "2", "--batch-size", "32",
                               "--temperature", "4", "--device", "cpu", "--quiet", "--threads", "1",
                               "--out", str(study)])
    assert res.exit_code == 0, res.output
    rows = json.loads((study / "ard_table.json").read_text())
    assert len(rows) == 10 and {r["row"] for r in rows} >= {"teacher-at", "ard-natural-teacher", "fast-ard-at-teacher"}
    assert all(0 <= r["pgd20_acc"] <= r["clean_acc"] <= 1 and r["params"] > 0 for r in rows)
    fast = next(r for r in rows if r["row"] == "fast-ard-at-teacher")
    assert fast["epochs"] == 1  # 2 student epochs / m = 2 replays
    claims = json.loads((study / "claims.json").read_text())
    assert {c["target"] for c in claims} == {"A1", "A2", "A4", "A5"}
    assert (study / "ard_table.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(main, ["vision", "distill", "table", "--rows", "student-at,nope", "--out",
                               str(tmp_path / "s2")])
    assert res.exit_code == 1 and "unknown study rows ['nope']" in res.output
