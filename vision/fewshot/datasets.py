"""Few-shot datasets: images with a class split (base / val / novel), from standard on-disk layouts or from the
stand-in splits of the data this project has.

Standard layouts (each loader takes the dataset's root folder; images become uint8 (N, C, H, W)):

- **CIFAR-FS** (``cifar-fs``, 64/16/20 CIFAR-100 classes, 32x32): the R2-D2 layout ``data/<class>/*.png`` with
  ``splits/bertinetto/{train,val,test}.txt`` (one class name per line); MetaOptNet's
  ``CIFAR_FS_{train,val,test}.pickle`` (read by the restricted reader of :mod:`data_loaders.images`, never
  unpickled); or split folders ``{train,val,test}/<class>/*.png``.
- **mini-ImageNet** (``mini-imagenet``, 64/16/20 classes, 84x84): Ravi & Larochelle's ``images/`` with
  ``{train,val,test}.csv`` (``filename,label``); split folders ``{train,val,test}/<wnid>/*.jpg``; or MetaOptNet's
  ``miniImageNet_category_split_{train_phase_train,val,test}.pickle``.
- **Omniglot** (``omniglot``): Lake's ``images_background/<alphabet>/<character>/*.png`` (base) and
  ``images_evaluation/...`` (novel); resized to 28x28 and inverted (strokes bright, as in MNIST).

Splits are named ``base`` (train), ``val`` and ``novel`` (test).

Stand-ins (no CIFAR-FS, mini-ImageNet or Omniglot copy is available here; these are NOT those benchmarks):

- ``mnist-fashion``: base = the 10 Fashion-MNIST classes and MNIST digits 0-4 (training images), novel = MNIST
  digits 5-9 (test images); 28x28 grey. 5-way novel episodes therefore always use the same five digits, in a
  random order with random images.
- ``cifar10-6-4``: base = CIFAR-10 classes 0-5 (airplane ... dog, from the JPEG training archive), novel = classes
  6-9 (frog, horse, ship, truck, from the lossless test subset): at most 4-way on novel classes.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from data_loaders.images import ImageFormatError, load_images, read_restricted_pickle

FEWSHOT_DATASETS = ("mnist-fashion", "cifar10-6-4", "cifar-fs", "mini-imagenet", "omniglot")
SPLIT_NAMES = {"train": "base", "val": "val", "test": "novel"}

__all__ = ["FEWSHOT_DATASETS", "FewShotData", "load_fewshot", "stand_in_mnist_fashion", "stand_in_cifar10",
           "load_cifar_fs", "load_mini_imagenet", "load_omniglot"]


@dataclass
class FewShotData:
    """Images uint8 (N, C, H, W), global labels (N,), class names, and the class ids of each split."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    splits: dict[str, list[int]]
    source: str = ""
    notes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"{self.source}: images must be uint8 (N, C, H, W), got {self.x.dtype} "
                             f"{tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"{self.source}: labels must be (N,), got {tuple(self.y.shape)}")
        seen: set[int] = set()
        for name, ids in self.splits.items():
            overlap = seen & set(ids)
            if overlap:
                raise ValueError(f"{self.source}: split {name!r} shares classes {sorted(overlap)[:5]} with another "
                                 "split")
            seen |= set(ids)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> FewShotData:
        return FewShotData(self.x.to(device), self.y.to(device), self.classes, self.splits, self.source, self.notes)

    def summary(self) -> dict[str, object]:
        counts = torch.bincount(self.y.cpu(), minlength=len(self.classes))
        return {"source": self.source, "shape": list(self.shape), "images": int(self.x.shape[0]),
                "splits": {k: {"classes": len(v), "images": int(counts[v].sum()) if v else 0,
                               "names": [self.classes[i] for i in v]} for k, v in self.splits.items()},
                **({"notes": self.notes} if self.notes else {})}


def _take(n: int, per_class: int | None, gen: torch.Generator) -> torch.Tensor:
    perm = torch.randperm(n, generator=gen)
    return perm if per_class is None else perm[:per_class]


def _assemble(groups: list[tuple[str, str, np.ndarray | torch.Tensor]], source: str, per_class: int | None,
              seed: int, notes: dict[str, str] | None = None) -> FewShotData:
    """groups: (split, class name, images uint8 (n, C, H, W)) -> FewShotData (seeded per-class subsampling)."""
    gen = torch.Generator().manual_seed(int(seed))
    xs, ys, names = [], [], []
    splits: dict[str, list[int]] = {}
    for split, name, imgs in groups:
        t = torch.as_tensor(np.ascontiguousarray(imgs)) if isinstance(imgs, np.ndarray) else imgs
        if t.dtype != torch.uint8 or t.ndim != 4:
            raise ImageFormatError(f"{source}: class {name!r}: images must be uint8 (n, C, H, W)")
        if xs and t.shape[1:] != xs[0].shape[1:]:
            raise ImageFormatError(f"{source}: class {name!r}: image shape {tuple(t.shape[1:])} differs from "
                                   f"{tuple(xs[0].shape[1:])}")
        t = t[_take(len(t), per_class, gen)]
        cid = len(names)
        names.append(name)
        splits.setdefault(split, []).append(cid)
        xs.append(t)
        ys.append(torch.full((len(t),), cid, dtype=torch.int64))
    if not xs:
        raise FileNotFoundError(f"{source}: no classes found")
    return FewShotData(torch.cat(xs), torch.cat(ys), names, splits, source, notes or {})


# ---------------------------------------------------------------------------------------------------------------
# Stand-in splits of the data we have


def stand_in_mnist_fashion(per_class: int | None = 600, seed: int = 0, mnist_root: str | None = None,
                           fashion_root: str | None = None) -> FewShotData:
    """Base: Fashion-MNIST 0-9 + MNIST 0-4 (training images); novel: MNIST 5-9 (test images)."""
    fm = load_images("fashion-mnist", fashion_root, "train")
    mn_train = load_images("mnist", mnist_root, "train")
    mn_test = load_images("mnist", mnist_root, "test")
    groups: list[tuple[str, str, torch.Tensor]] = []
    for c, name in enumerate(fm.classes):
        groups.append(("base", f"fashion:{name}", fm.x[fm.y == c]))
    for d in range(5):
        groups.append(("base", f"mnist:{d}", mn_train.x[mn_train.y == d]))
    for d in range(5, 10):
        groups.append(("novel", f"mnist:{d}", mn_test.x[mn_test.y == d]))
    note = ("stand-in, not a few-shot benchmark: base = Fashion-MNIST 0-9 + MNIST 0-4 (train images), "
            "novel = MNIST 5-9 (test images)")
    return _assemble(groups, "mnist-fashion", per_class, seed, {"stand_in": note})


def stand_in_cifar10(per_class: int | None = 600, seed: int = 0, train_root: str | None = None,
                     test_root: str | None = None) -> FewShotData:
    """Base: CIFAR-10 classes 0-5 (training archive); novel: classes 6-9 (lossless test subset)."""
    train = load_images("cifar10", train_root, "train")
    test = load_images("cifar10", test_root, "test")
    groups = [("base", train.classes[c], train.x[train.y == c]) for c in range(6)]
    groups += [("novel", test.classes[c], test.x[test.y == c]) for c in range(6, 10)]
    note = ("stand-in, not a few-shot benchmark: base = CIFAR-10 classes 0-5 (JPEG training images), "
            "novel = classes 6-9 (lossless test subset); at most 4-way on novel classes")
    return _assemble(groups, "cifar10-6-4", per_class, seed, {"stand_in": note})


# ---------------------------------------------------------------------------------------------------------------
# Standard layouts


def _read_image(path: Path, size: int | None, mode: str, invert: bool = False) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ImageFormatError(f"{path}: not a readable image ({exc})") from exc
    if invert:
        arr = 255 - arr
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _images(paths: list[Path], size: int | None, mode: str, invert: bool = False) -> np.ndarray:
    return np.stack([_read_image(p, size, mode, invert) for p in paths])


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))


def _split_folders(root: Path, size: int | None, mode: str, source: str, per_class: int | None,
                   seed: int) -> FewShotData:
    groups = []
    for split, name in SPLIT_NAMES.items():
        base = root / split
        if not base.is_dir():
            continue
        for cdir in sorted(p for p in base.iterdir() if p.is_dir()):
            files = _image_files(cdir)
            if not files:
                raise ImageFormatError(f"{cdir}: class folder without images")
            groups.append((name, cdir.name, _images(files, size, mode)))
    return _assemble(groups, source, per_class, seed)


def _pickle_split(path: Path, size: int | None) -> list[tuple[int, np.ndarray]]:
    """(label, images uint8 (n, C, H, W)) per label of a MetaOptNet-style {'data', 'labels'} pickle."""
    obj = read_restricted_pickle(path)
    if not isinstance(obj, dict):
        raise ImageFormatError(f"{path}: expected a dict with 'data' and 'labels'")
    get = {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
    data, labels = get.get("data"), get.get("labels")
    if not isinstance(data, np.ndarray) or data.ndim != 4 or labels is None:
        raise ImageFormatError(f"{path}: needs 'data' (N, H, W, C) uint8 and 'labels' (N,)")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(data):
        raise ImageFormatError(f"{path}: {len(labels)} labels for {len(data)} images")
    imgs = np.ascontiguousarray(data.astype(np.uint8).transpose(0, 3, 1, 2))
    if size is not None and imgs.shape[2:] != (size, size):
        raise ImageFormatError(f"{path}: images are {imgs.shape[2]}x{imgs.shape[3]}, expected {size}x{size}")
    return [(int(c), imgs[labels == c]) for c in np.unique(labels)]


def _pickles(root: Path, files: dict[str, str], source: str, size: int | None, per_class: int | None,
             seed: int) -> FewShotData:
    groups = []
    for split, fname in files.items():
        path = root / fname
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (the pickle layout needs {', '.join(files.values())})")
        for c, imgs in _pickle_split(path, size):
            groups.append((split, f"class{c}", imgs))
    return _assemble(groups, source, per_class, seed)


def load_cifar_fs(root: str | os.PathLike, per_class: int | None = None, seed: int = 0) -> FewShotData:
    """CIFAR-FS from any of its three standard layouts (see the module docstring)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (--root of cifar-fs)")
    split_dir = root / "splits" / "bertinetto"
    if (root / "data").is_dir() and split_dir.is_dir():
        groups = []
        for split, name in SPLIT_NAMES.items():
            listing = split_dir / f"{split}.txt"
            if not listing.is_file():
                raise FileNotFoundError(f"{listing}: missing split file")
            for cls in [ln.strip() for ln in listing.read_text().splitlines() if ln.strip()]:
                cdir = root / "data" / cls
                if not cdir.is_dir():
                    raise FileNotFoundError(f"{cdir}: class {cls!r} listed in {listing.name} has no folder")
                groups.append((name, cls, _images(_image_files(cdir), 32, "RGB")))
        return _assemble(groups, f"cifar-fs:{root}", per_class, seed)
    if (root / "CIFAR_FS_train.pickle").is_file():
        files = {"base": "CIFAR_FS_train.pickle", "val": "CIFAR_FS_val.pickle", "novel": "CIFAR_FS_test.pickle"}
        return _pickles(root, files, f"cifar-fs:{root}", 32, per_class, seed)
    if (root / "train").is_dir():
        return _split_folders(root, 32, "RGB", f"cifar-fs:{root}", per_class, seed)
    raise FileNotFoundError(f"{root}: no CIFAR-FS layout found (data/ + splits/bertinetto/, CIFAR_FS_*.pickle, or "
                            "train/val/test class folders)")


def load_mini_imagenet(root: str | os.PathLike, per_class: int | None = None, seed: int = 0,
                       size: int = 84) -> FewShotData:
    """mini-ImageNet from any of its three standard layouts (see the module docstring), resized to ``size``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (--root of mini-imagenet)")
    if (root / "images").is_dir() and (root / "train.csv").is_file():
        groups = []
        for split, name in SPLIT_NAMES.items():
            listing = root / f"{split}.csv"
            if not listing.is_file():
                raise FileNotFoundError(f"{listing}: missing split file")
            by_class: dict[str, list[Path]] = {}
            rows = list(csv.reader(io.StringIO(listing.read_text())))
            for i, row in enumerate(rows[1:], start=2):
                if len(row) != 2:
                    raise ImageFormatError(f"{listing}: line {i}: expected 'filename,label', got {row}")
                by_class.setdefault(row[1], []).append(root / "images" / row[0])
            for cls in sorted(by_class):
                groups.append((name, cls, _images(by_class[cls], size, "RGB")))
        return _assemble(groups, f"mini-imagenet:{root}", per_class, seed)
    if (root / "miniImageNet_category_split_train_phase_train.pickle").is_file():
        files = {"base": "miniImageNet_category_split_train_phase_train.pickle",
                 "val": "miniImageNet_category_split_val.pickle", "novel": "miniImageNet_category_split_test.pickle"}
        return _pickles(root, files, f"mini-imagenet:{root}", size, per_class, seed)
    if (root / "train").is_dir():
        return _split_folders(root, size, "RGB", f"mini-imagenet:{root}", per_class, seed)
    raise FileNotFoundError(f"{root}: no mini-ImageNet layout found (images/ + train/val/test.csv, "
                            "miniImageNet_category_split_*.pickle, or train/val/test class folders)")


def load_omniglot(root: str | os.PathLike, per_class: int | None = None, seed: int = 0,
                  size: int = 28) -> FewShotData:
    """Omniglot: ``images_background`` (base) and ``images_evaluation`` (novel), each alphabet/character/*.png."""
    root = Path(root)
    groups = []
    for sub, split in (("images_background", "base"), ("images_evaluation", "novel")):
        base = root / sub
        if not base.is_dir():
            raise FileNotFoundError(f"{base}: missing (Omniglot needs images_background/ and images_evaluation/)")
        for alpha in sorted(p for p in base.iterdir() if p.is_dir()):
            for char in sorted(p for p in alpha.iterdir() if p.is_dir()):
                files = _image_files(char)
                if not files:
                    raise ImageFormatError(f"{char}: character folder without images")
                groups.append((split, f"{alpha.name}/{char.name}", _images(files, size, "L", invert=True)))
    return _assemble(groups, f"omniglot:{root}", per_class, seed)


def load_fewshot(name: str, root: str | None = None, per_class: int | None = 600, seed: int = 0) -> FewShotData:
    """A few-shot dataset by name (see :data:`FEWSHOT_DATASETS`); the real benchmarks need ``root``."""
    if name == "mnist-fashion":
        return stand_in_mnist_fashion(per_class, seed)
    if name == "cifar10-6-4":
        return stand_in_cifar10(per_class, seed, train_root=root)
    if name in ("cifar-fs", "mini-imagenet", "omniglot"):
        if root is None:
            raise ValueError(f"dataset {name!r} needs --root (its folder); none is shipped with this project")
        loader = {"cifar-fs": load_cifar_fs, "mini-imagenet": load_mini_imagenet, "omniglot": load_omniglot}[name]
        return loader(root, per_class, seed)
    raise ValueError(f"unknown few-shot dataset {name!r}; choose one of {', '.join(FEWSHOT_DATASETS)} (--dataset)")
