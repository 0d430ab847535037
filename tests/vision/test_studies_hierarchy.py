"""Hierarchical robustness (spec-002 ch. 5): hierarchies, the HAR model's probabilities, hierarchical PGD (a success
always changes the coarse class), the metrics against hand counts, PGD-T targets, and a tiny study run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from data_loaders.images import CIFAR10_CLASSES, FASHION_CLASSES
from vision.studies.common import fit, load_subset, make_optimizer, predict
from vision.studies.hierarchy import (
    HIERARCHIES,
    HARModel,
    HierarchicalPGD,
    Hierarchy,
    HierarchyStudyConfig,
    TargetedOutsideMetaPGDTraining,
    chance_meta_given_wrong_leaf,
    meta_accuracy,
    p_meta_given_wrong_leaf,
    parse_hierarchy,
    run_hierarchy_study,
)

DIGITS_H = "low:0,1,2,3,4;high:5,6,7,8,9"


def test_builtin_hierarchies_follow_table_5_1_and_the_documented_fashion_grouping():
    c10 = HIERARCHIES["cifar10"].describe(CIFAR10_CLASSES)
    assert c10 == {"animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
                   "vehicles": ["airplane", "automobile", "ship", "truck"]}
    fm = HIERARCHIES["fashion-mnist"].describe(FASHION_CLASSES)
    assert fm["clothing"] == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Shirt"]
    assert fm["footwear-and-bags"] == ["Sandal", "Sneaker", "Bag", "Ankle boot"]


def test_parse_hierarchy_and_its_errors():
    h = parse_hierarchy(DIGITS_H, 10)
    assert h.meta_names == ("low", "high") and h.leaves_of(1) == [5, 6, 7, 8, 9]
    y = torch.tensor([0, 4, 5, 9])
    assert h.meta_of(y).tolist() == [0, 0, 1, 1] and h.local_index(y).tolist() == [0, 4, 0, 4]
    for bad, msg in (("a:0,1;b:1,2", "two groups"), ("a:0,1", "no group"), ("a:0;b:1,7", "out of range"),
                     ("a0,1;b:2", "name:leaf"), ("a:x;b:1,2", "not a class index")):
        with pytest.raises(ValueError, match=msg):
            parse_hierarchy(bad, 3)
    with pytest.raises(ValueError, match="at least two"):
        Hierarchy("one", ("all",), (0, 0, 0))


def test_har_outputs_the_product_of_meta_and_leaf_probabilities():
    h = parse_hierarchy("a:0,2,4;b:1;c:3,5", 6)
    torch.manual_seed(0)
    meta, la, lc = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 2)
    har = HARModel(meta, [la, None, lc], h)
    x = torch.randn(7, 4)
    out = har(x)
    pm, pa, pc = meta(x).softmax(1), la(x).softmax(1), lc(x).softmax(1)
    ref = torch.stack([pm[:, 0] * pa[:, 0], pm[:, 1], pm[:, 0] * pa[:, 1], pm[:, 2] * pc[:, 0],
                       pm[:, 0] * pa[:, 2], pm[:, 2] * pc[:, 1]], dim=1)
    assert torch.allclose(out.exp(), ref, atol=1e-6)
    assert torch.allclose(out.exp().sum(1), torch.ones(7), atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (meta.weight, la.weight, lc.weight))


def test_metrics_against_hand_counts():
    h = parse_hierarchy("a:0,1;b:2,3", 4)
    y = torch.tensor([0, 0, 1, 2, 3, 3])
    pred = torch.tensor([0, 1, 2, 3, 0, 3])  # leaf wrong at 1, 2, 3, 4; meta right at 1 and 3
    logits = torch.nn.functional.one_hot(pred, 4).float()
    assert meta_accuracy(logits, y, h) == pytest.approx(4 / 6)
    assert p_meta_given_wrong_leaf(logits, y, h) == pytest.approx(2 / 4)
    assert p_meta_given_wrong_leaf(torch.nn.functional.one_hot(y, 4).float(), y, h) is None
    assert chance_meta_given_wrong_leaf(y, h) == pytest.approx(1 / 3)


def test_pgd_t_targets_lie_outside_the_true_meta_class():
    h = HIERARCHIES["cifar10"]
    d = TargetedOutsideMetaPGDTraining(h, 0.1, 0.025, 2)
    y = torch.arange(10).repeat(50)
    t = d.sample_targets(y)
    assert (h.meta_of(t) != h.meta_of(y)).all()
    assert set(t[y == 2].tolist()) == {0, 1, 8, 9}  # a bird is pushed toward every vehicle


@pytest.fixture(scope="module")
def digits_model(one_thread):
    train = load_subset("digits", None, "train", None, 0)
    test = load_subset("digits", None, "test", 150, None)
    from vision.defenses.standard import StandardTraining
    from vision.models import build_model

    torch.manual_seed(0)
    model = build_model("mnist_small", 10, 1, 8)
    fit(model, StandardTraining(), train, epochs=6, batch_size=64, optimizer=make_optimizer(model, "adam", 5e-3))
    return model.eval(), test.float(), test.y


def test_hierarchical_pgd_changes_the_coarse_class_when_it_succeeds(digits_model):
    model, x, y = digits_model
    h = parse_hierarchy(DIGITS_H, 10)
    eps = 0.15
    res = HierarchicalPGD(h, eps, eps / 4, steps=10, seed=0)(model, x, y)
    assert 0 < int(res.success.sum()) < len(y)
    assert (res.x_adv - x).abs().max() <= eps + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    pred = predict(model, res.x_adv).argmax(1)
    s = res.success
    assert torch.equal(pred[s], res.target[s])                     # the model predicts the target ...
    assert (h.meta_of(pred[s]) != h.meta_of(y[s])).all()           # ... which lies in another coarse class
    assert (res.target[~s] == -1).all() and (res.tried <= 5).all() and (res.tried[~s] == 5).all()
    # worst case over targets is at least as strong as any single target
    single = HierarchicalPGD(h, eps, eps / 4, steps=10, seed=0)
    with torch.no_grad():
        ranked_first = predict(model, x).masked_fill(
            torch.as_tensor(h.leaf_to_meta)[None, :] == h.meta_of(y)[:, None], -torch.inf).argmax(1)
    one = single.pgd(model, x, ranked_first)
    assert int(res.success.sum()) >= int(one.success.sum())


def test_tiny_study_run(tmp_path):
    cfg = HierarchyStudyConfig(dataset="digits", hierarchy=DIGITS_H, n_train=400, n_test=60, eps=0.15,
                               defenses=("standard", "pgd"), epochs=2, train_steps=2, attack_steps=4,
                               batch_size=64, lr=0.05, device="cpu")
    m = run_hierarchy_study(cfg, tmp_path / "h", progress=False)
    out = tmp_path / "h"
    for name in ("meta_robustness.md", "meta_robustness.csv", "p_meta_given_wrong_leaf.md", "meta_robustness.png",
                 "flat-standard.safetensors", "har-pgd-meta.safetensors", "har-pgd-leaf1.safetensors"):
        assert (out / name).is_file(), name
    assert [(r["family"], r["defense"]) for r in m["rows"]] == [("flat", "standard"), ("flat", "pgd"),
                                                               ("har", "standard"), ("har", "pgd")]
    for r in m["rows"]:
        assert r["hier. PGD-4 meta %"] <= r["clean meta %"] and r["clean leaf %"] <= r["clean meta %"]
    with pytest.raises(ValueError, match="flat baseline"):
        run_hierarchy_study(HierarchyStudyConfig(defenses=("pgd-t",)), tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="no built-in hierarchy"):
        run_hierarchy_study(HierarchyStudyConfig(dataset="digits"), tmp_path / "y", progress=False)
