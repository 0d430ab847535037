"""Model alignment (spec-002 ch. 6): the loss against a hand computation, alignment lowers the divergence it
optimises (on the alignment data and on held-out data) without labels and without touching the witness, and a tiny
study run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vision.studies.alignment import (
    AlignmentLoss,
    AlignmentStudyConfig,
    align,
    alignment_kl,
    divergence,
    run_alignment_study,
    similarity,
)
from vision.studies.common import fit, load_subset, make_optimizer


def test_alignment_kl_matches_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, w = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    t = 4.0
    ps, pw = (s / t).softmax(1), (w / t).softmax(1)
    ref = (pw * (pw.log() - ps.log())).sum(1).mean() * t * t
    assert float(alignment_kl(s, w, t)) == pytest.approx(float(ref), rel=1e-5)
    assert float(alignment_kl(w, w, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(alignment_kl(s + 3.0, w, t)) == pytest.approx(float(ref), rel=1e-5)  # logit shift invariant
    with pytest.raises(ValueError, match="temperature"):
        alignment_kl(s, w, 0.0)
    with pytest.raises(ValueError, match="witness"):
        AlignmentLoss([])


@pytest.fixture(scope="module")
def digits_pair(one_thread):
    from vision.defenses.standard import StandardTraining
    from vision.models import build_model

    train = load_subset("digits", None, "train", None, 0)
    models = []
    for arch, seed in (("mnist_small", 0), ("mlp", 1)):
        torch.manual_seed(seed)
        m = build_model(arch, 10, 1, 8)
        fit(m, StandardTraining(), train.subset(slice(0, 700)), epochs=4, batch_size=64,
            optimizer=make_optimizer(m, "adam", 3e-3), seed=seed)
        models.append(m.eval())
    return models[0], models[1], train


def test_alignment_reduces_the_divergence_it_optimises(digits_pair):
    source, witness, train = digits_pair
    x_align, x_held = train.x[700:1200], train.x[1200:]
    w_before = [p.detach().clone() for p in witness.parameters()]
    s_before = [p.detach().clone() for p in source.parameters()]
    before = divergence(source, witness, x_align, 4.0)
    aligned, hist = align(source, [witness], x_align, epochs=3, lr=0.05, temperature=4.0, batch_size=50)
    after = divergence(aligned, witness, x_align, 4.0)
    assert after < 0.6 * before
    assert divergence(aligned, witness, x_held, 4.0) < divergence(source, witness, x_held, 4.0)
    assert hist[-1]["loss"] < hist[0]["loss"]
    assert all(torch.equal(a, b) for a, b in zip(w_before, witness.parameters()))   # witness frozen
    assert all(torch.equal(a, b) for a, b in zip(s_before, source.parameters()))    # source copied, not changed
    sim_b = similarity(source, witness, train.x[1200:1300], train.y[1200:1300])
    sim_a = similarity(aligned, witness, train.x[1200:1300], train.y[1200:1300])
    assert sim_a["kl"] < sim_b["kl"] and 0 <= sim_a["agreement"] <= 1 and -1 <= sim_a["grad_cos"] <= 1


def test_alignment_does_not_read_labels(digits_pair):
    source, witness, train = digits_pair
    loss = AlignmentLoss([witness])
    x = train.float()[:32]
    a, _ = loss(source, x, train.y[:32])
    b, _ = loss(source, x, torch.zeros(32, dtype=torch.long))
    assert float(a.detach()) == float(b.detach())


def test_tiny_study_run(tmp_path):
    cfg = AlignmentStudyConfig(dataset="digits", archs=("mnist_small", "mlp"), n_train=400, n_align=200, n_eval=40,
                               epochs=3, lr=3e-3, align_epochs=1, align_lr=0.02, eps=0.1, attack_steps=3,
                               batch_size=64, device="cpu")
    m = run_alignment_study(cfg, tmp_path / "a", progress=False)
    out = tmp_path / "a"
    for name in ("transfer_error.md", "transfer_change.csv", "similarity.json", "alignment_loss.md", "transfer.png",
                 "models.md", "source-mlp.safetensors", "witness-mnist_small.safetensors", "target-mlp.safetensors",
                 "aligned-mlp-with-mnist_small.safetensors"):
        assert (out / name).is_file(), name
    assert len(m["transfer_error"]) == 2 * 3 and len(m["similarity"]) == 4
    for r in m["alignment_loss"]:
        assert r["KL_T4 after (align data)"] < r["KL_T4 before (align data)"]
    with pytest.raises(ValueError, match="exceeds"):
        run_alignment_study(AlignmentStudyConfig(dataset="digits", n_train=1400, n_align=500), tmp_path / "b",
                            progress=False)


def test_untrained_witness_list_is_refused():
    with pytest.raises(ValueError):
        align(nn.Linear(2, 2), [], torch.zeros(4, 2, dtype=torch.uint8))
