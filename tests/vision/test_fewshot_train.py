"""Adversarial querying: the support set is never attacked, the queries are attacked inside the ball, the loss
reduces to the natural one when the attack is off, and the gradient reaches the embedding through the head; the
documented stand-in split of the shared data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vision.attacks.base import AttackResult
from vision.attacks.pgd import PGD
from vision.fewshot.model import build_fewshot_model
from vision.fewshot.train import FewShotConfig, query_loss, resolve_fewshot_config


def _setup(head="ridge", training="aq"):
    torch.manual_seed(0)
    c = resolve_fewshot_config(FewShotConfig(head=head, training=training, width=8, way=3, eps=0.1, maml_steps=2))
    model = build_fewshot_model(c, (1, 16, 16)).double()
    sx, qx = torch.rand(2, 6, 1, 16, 16, dtype=torch.float64), torch.rand(2, 9, 1, 16, 16, dtype=torch.float64)
    sy = torch.arange(3).repeat_interleave(2).expand(2, -1).clone()
    qy = torch.arange(3).repeat_interleave(3).expand(2, -1).clone()
    return c, model, sx, sy, qx, qy


class _Recorder:
    """A stand-in attack: remembers what it was given and moves every pixel by +-eps (clipped to [0, 1])."""

    def __init__(self, eps):
        self.eps, self.seen = eps, []

    def __call__(self, model, x, y):
        self.seen.append(x.clone())
        x_adv = (x + self.eps * torch.sign(torch.randn_like(x))).clamp(0, 1)
        return AttackResult(x_adv, torch.zeros(len(x), dtype=torch.bool))


@pytest.mark.parametrize("head", ["ridge", "svm", "maml"])
def test_aq_attacks_queries_only_and_fits_on_clean_support(head):
    c, model, sx, sy, qx, qy = _setup(head)
    model.eval()  # batch norm in eval mode: embeddings do not depend on the rest of the batch
    rec = _Recorder(0.1)
    fitted = model.fit(sx, sy, 3)
    torch.manual_seed(1)
    loss, logits = query_loss(model, fitted, qx, qy, c, rec)
    assert len(rec.seen) == 1 and torch.equal(rec.seen[0], qx.reshape(18, 1, 16, 16))  # the queries, nothing else
    torch.manual_seed(1)
    x_adv = (qx.reshape(18, 1, 16, 16) + 0.1 * torch.sign(torch.randn(18, 1, 16, 16, dtype=torch.float64))).clamp(0, 1)
    expected = model.logits(model.fit(sx, sy, 3), x_adv.view_as(qx)).reshape(18, 3)  # head fitted on clean support
    assert torch.allclose(logits, expected) and torch.allclose(loss, F.cross_entropy(expected, qy.reshape(-1)))
    # the meta-gradient reaches the first convolution through the head (support path) and the queries
    loss.backward()
    assert float(model.backbone.net.net[0].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize("training", ["aq", "trades"])
def test_attack_off_gives_the_natural_loss(training):
    c, model, sx, sy, qx, qy = _setup("proto", training)
    model.eval()
    fitted = model.fit(sx, sy, 3)
    natural, _ = query_loss(model, fitted, qx, qy, c, None)
    off = PGD(0.0, 0.0, 3, random_start=True, select="last", use_eval_mode=False)
    loss, _ = query_loss(model, fitted, qx, qy, c, off)
    assert torch.allclose(loss, natural, atol=1e-12)
    real = PGD(0.1, 0.05, 3, random_start=True, select="last", use_eval_mode=False)
    assert float(query_loss(model, fitted, qx, qy, c, real)[0].detach()) > float(natural.detach())


def test_pgd_on_queries_stays_in_the_ball():
    from vision.fewshot.attacks import EpisodeClassifier

    c, model, sx, sy, qx, qy = _setup("ridge")
    model.eval()
    fitted = model.fit(sx, sy, 3).detach()
    flat = qx.reshape(18, 1, 16, 16)
    res = PGD(0.1, 0.03, 5, seed=0)(EpisodeClassifier(model.backbone, fitted, 2), flat, qy.reshape(-1))
    assert float((res.x_adv - flat).abs().max()) <= 0.1 + 1e-9 and 0 <= float(res.x_adv.min())
    with pytest.raises(ValueError, match="do not split into 4 episodes"):
        EpisodeClassifier(model.backbone, fitted, 4)(flat[:10])


def test_stand_in_split_of_the_shared_data(shared_data):
    from vision.fewshot.datasets import stand_in_mnist_fashion

    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    d = stand_in_mnist_fashion(per_class=20, seed=0)
    names = lambda split: [d.classes[i] for i in d.splits[split]]  # noqa: E731
    assert names("novel") == [f"mnist:{k}" for k in range(5, 10)]
    assert names("base")[:10] == [f"fashion:{n}" for n in ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                                           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")]
    assert names("base")[10:] == [f"mnist:{k}" for k in range(5)]
    assert d.shape == (1, 28, 28) and len(d.x) == 20 * 20
    # novel images come from the MNIST test file: each one is found there
    from data_loaders.images import load_images

    test = load_images("mnist", None, "test")
    novel = d.x[torch.isin(d.y, torch.tensor(d.splits["novel"]))]
    pool = test.x[test.y >= 5].reshape(-1, 784)
    assert all(bool((pool == img.reshape(1, 784)).all(1).any()) for img in novel[:10])
