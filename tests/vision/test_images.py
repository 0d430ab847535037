"""Image loaders on files the tests write (IDX, CIFAR batches, folders, tars, sprite sheets), bad files with clear
errors, and the real data sets when present."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from data_loaders.images import (
    ImageFormatError,
    load_cifar10,
    load_idx_dataset,
    load_image_folder,
    load_image_tar,
    load_images,
    read_cifar_python_batch,
    read_idx,
)
from tests.conftest import shared_path


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_idx_set(root, prefix, images, labels, gz=True):
    suffix = ".gz" if gz else ""
    for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
        data = _idx_bytes(arr)
        path = root / f"{prefix}-{kind}-idx{nd}-ubyte{suffix}"
        path.write_bytes(gzip.compress(data) if gz else data)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, rng, gz):
    imgs = rng.integers(0, 256, (7, 5, 6), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    _write_idx_set(tmp_path, "t10k", imgs, labels, gz)
    s = load_idx_dataset(tmp_path, "test")
    assert s.x.shape == (7, 1, 5, 6) and s.x.dtype.is_floating_point is False
    np.testing.assert_array_equal(s.x[:, 0].numpy(), imgs)
    np.testing.assert_array_equal(s.y.numpy(), labels)


def test_idx_bad_files_name_the_file(tmp_path, rng):
    bad = tmp_path / "bad-magic"
    bad.write_bytes(b"\x01\x02\x08\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(ImageFormatError, match="bad-magic.*magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(_idx_bytes(np.zeros((4, 3, 3), np.uint8))[:-5])
    with pytest.raises(ImageFormatError, match=r"short.*\(4, 3, 3\) need 36 data bytes, file has 31"):
        read_idx(short)
    # label count differs from image count
    _write_idx_set(tmp_path, "train", rng.integers(0, 256, (3, 2, 2)), rng.integers(0, 10, 4))
    with pytest.raises(ImageFormatError, match="train-labels-idx1-ubyte.gz: 4 labels but .* 3 images"):
        load_idx_dataset(tmp_path, "train")
    _write_idx_set(tmp_path, "train", rng.integers(0, 256, (3, 2, 2)), np.array([1, 12, 3]))
    with pytest.raises(ImageFormatError, match="record 1: label 12"):
        load_idx_dataset(tmp_path, "train")


def _cifar_arrays(rng, n):
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def test_cifar_binary_batches(tmp_path, rng):
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _cifar_arrays(rng, 3)
        rec = np.concatenate([y[:, None].astype(np.uint8), x.reshape(3, -1)], axis=1)
        (tmp_path / f"{name}.bin").write_bytes(rec.tobytes())
        parts.append((x, y))
    tr = load_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(tr.x.numpy(), np.concatenate([p[0] for p in parts[:5]]))
    np.testing.assert_array_equal(tr.y.numpy(), np.concatenate([p[1] for p in parts[:5]]))
    te = load_cifar10(tmp_path, "test")
    np.testing.assert_array_equal(te.x.numpy(), parts[5][0])
    (tmp_path / "test_batch.bin").write_bytes(b"\x00" * 3074)
    with pytest.raises(ImageFormatError, match="test_batch.bin: 3074 bytes is not a whole number"):
        load_cifar10(tmp_path, "test")


def test_cifar_python_batches_read_without_unpickling(tmp_path, rng):
    parts = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x, y = _cifar_arrays(rng, 2)
        d = {b"batch_label": b"x", b"labels": [int(v) for v in y], b"data": x.reshape(2, -1),
             b"filenames": [b"a.png", b"b.png"]}
        (tmp_path / name).write_bytes(pickle.dumps(d, protocol=2))
        parts.append((x, y))
    tr = load_cifar10(tmp_path, "train")
    np.testing.assert_array_equal(tr.x.numpy(), np.concatenate([p[0] for p in parts[:5]]))
    np.testing.assert_array_equal(tr.y.numpy(), np.concatenate([p[1] for p in parts[:5]]))


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_malicious_pickle_is_refused_and_never_run(tmp_path):
    marker = str(tmp_path / "pwned")
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps({"data": _Evil(marker), "labels": []}, protocol=2))
    with pytest.raises(ImageFormatError, match=r"data_batch_1: byte \d+: refusing global (posix|os)\.mkdir"):
        read_cifar_python_batch(tmp_path / "data_batch_1")
    assert not (tmp_path / "pwned").exists()


def _write_folder(root, rng, split="train", classes=("cat", "dog"), per=3, size=(5, 4), mode="RGB"):
    truth = {}
    for c in classes:
        (root / split / c).mkdir(parents=True)
        for i in range(per):
            shape = (size[0], size[1], 3) if mode == "RGB" else size
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / split / c / f"{i}.png")
            truth[(c, i)] = arr
    return truth


def test_image_folder_is_lossless_and_sorted(tmp_path, rng):
    truth = _write_folder(tmp_path, rng)
    s = load_image_folder(tmp_path, "train")
    assert s.classes == ["cat", "dog"] and s.x.shape == (6, 3, 5, 4)
    np.testing.assert_array_equal(s.y.numpy(), [0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(s.x[4].permute(1, 2, 0).numpy(), truth[("dog", 1)])
    grey = tmp_path / "grey"
    gtruth = _write_folder(grey, rng, mode="L")
    g = load_image_folder(grey, "train")
    assert g.x.shape == (6, 1, 5, 4)
    np.testing.assert_array_equal(g.x[0, 0].numpy(), gtruth[("cat", 0)])


def test_image_folder_errors_name_the_file(tmp_path, rng):
    _write_folder(tmp_path, rng)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "train" / "dog" / "9.png")
    with pytest.raises(ImageFormatError, match=r"dog/9.png: image shape"):
        load_image_folder(tmp_path, "train")
    (tmp_path / "train" / "dog" / "9.png").write_bytes(b"not an image")
    with pytest.raises(ImageFormatError, match=r"dog/9.png: not a readable image"):
        load_image_folder(tmp_path, "train")


def _tar_of(folder, path, extra=()):
    with tarfile.open(path, "w:gz") as tf:
        tf.add(folder, arcname="top")
        for name, data in extra:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_tar_matches_folder(tmp_path, rng):
    folder = tmp_path / "imgs"
    _write_folder(folder, rng)
    _write_folder(folder, rng, split="test", per=2)
    _tar_of(folder, tmp_path / "imgs.tar.gz")
    for split in ("train", "test"):
        a, b = load_image_folder(folder, split), load_image_tar(tmp_path / "imgs.tar.gz", split)
        np.testing.assert_array_equal(a.x.numpy(), b.x.numpy())
        np.testing.assert_array_equal(a.y.numpy(), b.y.numpy())
    via_name = load_images("folder", tmp_path / "imgs.tar.gz", "test")
    assert len(via_name) == 4


@pytest.mark.parametrize("bad", ["../evil.png", "/abs/train/cat/x.png", "top/../../train/cat/x.png"])
def test_tar_refuses_escaping_members(tmp_path, rng, bad):
    folder = tmp_path / "imgs"
    _write_folder(folder, rng)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(buf, format="PNG")
    _tar_of(folder, tmp_path / "x.tar.gz", [(bad, buf.getvalue())])
    with pytest.raises(ImageFormatError, match="escapes the archive"):
        load_image_tar(tmp_path / "x.tar.gz", "train")


def test_png_subset_format(tmp_path, rng):
    sheets = {b: rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8) for b in (0, 1, 50)}
    for b, arr in sheets.items():
        Image.fromarray(arr.reshape(1000, 1024, 3)).save(tmp_path / f"cifar10_batch_{b}.png", compress_level=1)
    labels = rng.integers(0, 10, 51000)
    (tmp_path / "cifar10_labels.js").write_text("var labels=[" + ",".join(map(str, labels)) + "];\n")
    tr, te = load_cifar10(tmp_path, "train"), load_cifar10(tmp_path, "test")
    assert tr.x.shape == (2000, 3, 32, 32) and te.x.shape == (1000, 3, 32, 32)
    np.testing.assert_array_equal(tr.x[1000 + 7].permute(1, 2, 0).numpy(), sheets[1][7])
    np.testing.assert_array_equal(te.x[3].permute(1, 2, 0).numpy(), sheets[50][3])
    np.testing.assert_array_equal(tr.y.numpy(), labels[:2000])
    np.testing.assert_array_equal(te.y.numpy(), labels[50000:51000])


def test_digits_default():
    tr, te = load_images("digits", split="train"), load_images("digits", split="test")
    assert tr.x.shape[1:] == (1, 8, 8) and len(tr) + len(te) == 1797
    assert int(tr.x.max()) == 255 and int(tr.x.min()) == 0
    assert set(te.y.tolist()) == set(range(10))
    with pytest.raises(ValueError, match="unknown dataset"):
        load_images("imagenet")


# ---- real data (skips when absent) ----

def test_real_mnist():
    root = shared_path("mnist")
    tr = load_images("mnist", root, "train")
    assert tr.x.shape == (60000, 1, 28, 28)
    assert tr.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    counts = np.bincount(tr.y.numpy(), minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # SOURCE.md
    assert len(load_images("mnist", root, "test")) == 10000


def test_real_fashion_mnist():
    from pathlib import Path

    root = Path("/usr/share/datasets/fashion-mnist")
    if not root.is_dir():
        pytest.skip("dataset-fashion-mnist not installed")
    te = load_images("fashion-mnist", root, "test")
    assert te.x.shape == (10000, 1, 28, 28) and np.bincount(te.y.numpy()).tolist() == [1000] * 10


def test_real_cifar_png_subset_and_jpeg_tar_agree():
    lossless = load_images("cifar10", shared_path("cifar10-convnetjs-png-subset"), "test")
    assert lossless.x.shape == (1000, 3, 32, 32)
    assert lossless.x[0, :, 0, 0].tolist() == [158, 112, 49]  # SOURCE.md
    assert lossless.y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    jpeg = load_images("cifar10", shared_path("cifar10-jpeg-q75", "CIFAR-10-images.tar.gz"), "test")
    assert jpeg.x.shape == (10000, 3, 32, 32) and np.bincount(jpeg.y.numpy()).tolist() == [1000] * 10
    # the k-th lossless test image of class c is the k-th JPEG of class c (loader sorts by class, then index)
    y = lossless.y.numpy()
    rank = np.array([(y[:i] == y[i]).sum() for i in range(len(y))])
    idx = 1000 * y + rank
    err = (jpeg.x[idx].float() - lossless.x.float()).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert float(err.mean()) < 12 and float(err.max()) < 40  # JPEG q75: about 7.6/255 RMS (SOURCE.md)
    other = (jpeg.x[idx[::-1].copy()].float() - lossless.x.float()).pow(2).mean(dim=(1, 2, 3)).sqrt()
    assert float(other.mean()) > 3 * float(err.mean())
