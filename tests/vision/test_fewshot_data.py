"""Few-shot data: episodes never mix base and novel classes and support/query never share an image; the loaders
read the standard CIFAR-FS, mini-ImageNet and Omniglot layouts from tiny generated folders; clear errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from vision.fewshot.datasets import FewShotData, load_cifar_fs, load_fewshot, load_mini_imagenet, load_omniglot
from vision.fewshot.episodes import EpisodeSampler


def _toy(n_per=12, base=6, novel=5, shape=(1, 4, 4)):
    xs, ys = [], []
    for c in range(base + novel):
        xs.append(torch.full((n_per, *shape), c, dtype=torch.uint8))
        ys.append(torch.full((n_per,), c))
    x = torch.cat(xs)
    x[:, 0, 0, 0] = torch.arange(len(x), dtype=torch.uint8)  # every image distinct
    return FewShotData(x, torch.cat(ys), [f"c{i}" for i in range(base + novel)],
                       {"base": list(range(base)), "novel": list(range(base, base + novel))}, "toy")


@pytest.mark.parametrize("split", ["base", "novel"])
def test_episodes_stay_in_their_split_and_support_query_are_disjoint(split):
    data = _toy()
    sampler = EpisodeSampler(data, split, way=5, shot=3, query=4, seed=1)
    allowed = set(data.splits[split])
    for _ in range(20):
        ep = sampler.sample(3)
        assert ep.support_x.shape == (3, 15, 1, 4, 4) and ep.query_x.shape == (3, 20, 1, 4, 4)
        for b in range(3):
            s, q = set(ep.support_index[b].tolist()), set(ep.query_index[b].tolist())
            assert not s & q and len(s) == 15 and len(q) == 20
            got = set(data.y[ep.support_index[b]].tolist()) | set(data.y[ep.query_index[b]].tolist())
            assert got <= allowed and got == set(ep.classes[b].tolist())
            # episode label k is the global class classes[b, k], for support and query alike
            assert torch.equal(data.y[ep.support_index[b]], ep.classes[b][ep.support_y[b]])
            assert torch.equal(data.y[ep.query_index[b]], ep.classes[b][ep.query_y[b]])
            assert torch.equal(ep.support_x[b], data.x[ep.support_index[b]])


def test_sampler_and_data_errors():
    data = _toy()
    with pytest.raises(ValueError, match="fewer than way=7"):
        EpisodeSampler(data, "novel", 7, 1, 1)
    with pytest.raises(ValueError, match="an episode needs shot"):
        EpisodeSampler(data, "base", 5, 10, 5)
    with pytest.raises(ValueError, match="no split 'val'"):
        EpisodeSampler(data, "val", 5, 1, 1)
    with pytest.raises(ValueError, match="shares classes"):
        FewShotData(data.x, data.y, data.classes, {"base": [0, 1], "novel": [1, 2]}, "bad")
    with pytest.raises(ValueError, match="needs --root"):
        load_fewshot("omniglot")
    with pytest.raises(ValueError, match="unknown few-shot dataset"):
        load_fewshot("imagenet")


def _png(path, size, mode, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.full((size, size, 3) if mode == "RGB" else (size, size), value, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)


def test_cifar_fs_layouts(tmp_path):
    # R2-D2 layout: data/<class>/*.png + splits/bertinetto/{train,val,test}.txt
    r = tmp_path / "r2d2"
    names = {"train": ["apple", "bee"], "val": ["cup"], "test": ["dog", "eel"]}
    for split, classes in names.items():
        (r / "splits" / "bertinetto").mkdir(parents=True, exist_ok=True)
        (r / "splits" / "bertinetto" / f"{split}.txt").write_text("\n".join(classes) + "\n")
        for i, c in enumerate(classes):
            for j in range(3):
                _png(r / "data" / c / f"{c}_{j}.png", 32, "RGB", 10 * i + j)
    d = load_cifar_fs(r)
    assert d.shape == (3, 32, 32) and len(d.x) == 15
    assert [d.classes[i] for i in d.splits["novel"]] == ["dog", "eel"] and len(d.splits["val"]) == 1
    # split folders
    f = tmp_path / "folders"
    for split, classes in names.items():
        for c in classes:
            for j in range(2):
                _png(f / split / c / f"{j}.png", 32, "RGB", j)
    assert sorted(d.classes) == sorted(load_cifar_fs(f).classes)
    # MetaOptNet pickles, read by the restricted reader (never unpickled)
    p = tmp_path / "pickles"
    p.mkdir()
    for k, (split, labels) in enumerate({"train": [3, 3, 7, 7], "val": [9, 9], "test": [1, 1, 2, 2]}.items()):
        data = np.full((len(labels), 32, 32, 3), k, dtype=np.uint8)
        (p / f"CIFAR_FS_{split}.pickle").write_bytes(pickle.dumps({"data": data, "labels": labels}, protocol=2))
    d = load_cifar_fs(p)
    assert [d.classes[i] for i in d.splits["base"]] == ["class3", "class7"] and d.shape == (3, 32, 32)
    with pytest.raises(FileNotFoundError, match="no CIFAR-FS layout"):
        load_cifar_fs(tmp_path / "pickles" / ".." / "r2d2" / "data")


def test_mini_imagenet_csv_layout_and_errors(tmp_path):
    root = tmp_path / "mini"
    rows = {"train": [("n01", 2), ("n02", 2)], "val": [("n03", 2)], "test": [("n04", 3)]}
    for split, classes in rows.items():
        lines = ["filename,label"]
        for c, k in classes:
            for j in range(k):
                name = f"{c}{j:04d}.jpg"
                _png(root / "images" / name, 12, "RGB", 40 * j)
                lines.append(f"{name},{c}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    d = load_mini_imagenet(root, size=16)
    assert d.shape == (3, 16, 16) and len(d.splits["base"]) == 2 and len(d.x) == 9
    (root / "val.csv").write_text("filename,label\nbroken\n")
    with pytest.raises(ValueError, match=r"val.csv: line 2: expected 'filename,label'"):
        load_mini_imagenet(root, size=16)


def test_omniglot_layout_inverts_and_resizes(tmp_path):
    for sub, alphabets in (("images_background", ["Latin", "Greek"]), ("images_evaluation", ["Runic"])):
        for a in alphabets:
            for ch in ("character01", "character02"):
                for j in range(3):
                    _png(tmp_path / sub / a / ch / f"{j}.png", 105, "L", 255)  # white background, no strokes
    d = load_omniglot(tmp_path)
    assert d.shape == (1, 28, 28) and len(d.splits["base"]) == 4 and len(d.splits["novel"]) == 2
    assert int(d.x.max()) == 0  # inverted: the white background becomes 0
    assert d.classes[d.splits["novel"][0]] == "Runic/character01"
    with pytest.raises(FileNotFoundError, match="images_evaluation"):
        load_omniglot(tmp_path / "images_background")
