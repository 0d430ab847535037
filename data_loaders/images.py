"""Image datasets -> uint8 tensors: MNIST/Fashion-MNIST (IDX), CIFAR-10 (python or binary batches, image folders,
tar archives, the lossless PNG subset), and scikit-learn's 8x8 digits as the embedded default.

Everything returns an :class:`ImageSet` with ``x`` uint8 (N, C, H, W) and ``y`` int64; nothing is ever unpickled
(the CIFAR-10 python batches are read by a restricted opcode interpreter that builds only dicts, lists, strings,
numbers and uint8 arrays).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickletools
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_CLASSES = [str(i) for i in range(10)]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "folder")


class ImageFormatError(ValueError):
    """A dataset file is malformed; the message names the file (and the record) and the problem."""


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W), labels int64 (N,), class names, and where they came from."""

    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    source: str = ""

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"ImageSet.x must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.ndim != 1 or len(self.y) != len(self.x):
            raise ValueError(f"ImageSet.y must be (N,) with N={len(self.x)}, got {tuple(self.y.shape)}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(int(s) for s in self.x.shape[1:])  # type: ignore[return-value]

    def to(self, device: str | torch.device) -> ImageSet:
        """The same set with tensors on ``device`` (still uint8: 4x less memory than float)."""
        return ImageSet(self.x.to(device), self.y.to(device), self.classes, self.source)

    def subset(self, index: torch.Tensor | np.ndarray | slice) -> ImageSet:
        """Rows ``index`` of the set."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        if isinstance(index, torch.Tensor):
            index = index.to(self.x.device)
        return ImageSet(self.x[index], self.y[index], self.classes, self.source)

    def float(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return self.x.float().div_(255.0)


def _make_set(x: np.ndarray, y: np.ndarray, classes: list[str], source: str) -> ImageSet:
    x = np.ascontiguousarray(x, dtype=np.uint8)
    y = np.ascontiguousarray(y, dtype=np.int64)
    x = x if x.flags.writeable else x.copy()
    y = y if y.flags.writeable else y.copy()
    return ImageSet(torch.from_numpy(x), torch.from_numpy(y), list(classes), source)


def default_data_dir() -> Path:
    """The shared real-data folder: ``$ADVSIM_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("ADVSIM_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"),
               0x0E: np.dtype(">f8")}


def _read_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{path}: no such file") from exc
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ImageFormatError(f"{path}: corrupt gzip data ({exc})") from exc
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (.gz or plain): validates the magic number, the dimensions and the byte count."""
    path = Path(path)
    data = _read_maybe_gz(path)
    if len(data) < 4:
        raise ImageFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    if data[0] != 0 or data[1] != 0:
        raise ImageFormatError(f"{path}: bad IDX magic number 0x{data[:4].hex()} (must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ImageFormatError(f"{path}: unknown IDX data type code 0x{code:02x}")
    if ndim < 1 or len(data) < 4 + 4 * ndim:
        raise ImageFormatError(f"{path}: IDX header with {ndim} dimensions is truncated")
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != expected:
        raise ImageFormatError(f"{path}: IDX dimensions {dims} need {expected} data bytes, file has {len(body)}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find_file(root: Path, stems: list[str]) -> Path:
    for stem in stems:
        for cand in (stem + ".gz", stem):
            if (root / cand).is_file():
                return root / cand
    raise FileNotFoundError(f"{root}: none of {', '.join(s + '[.gz]' for s in stems)} found")


def load_idx_dataset(root: str | os.PathLike, split: str = "train", classes: list[str] | None = None,
                     source: str = "idx") -> ImageSet:
    """MNIST-layout IDX files in ``root``: ``train-``/``t10k-`` ``images-idx3-ubyte[.gz]`` and ``labels-idx1-ubyte``."""
    root = Path(root)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    img_path = _find_file(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    lab_path = _find_file(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ImageFormatError(f"{img_path}: expected a 3-d uint8 IDX array (N, H, W), got {images.ndim}-d "
                               f"{images.dtype}")
    if labels.ndim != 1 or labels.dtype != np.uint8:
        raise ImageFormatError(f"{lab_path}: expected a 1-d uint8 IDX array of labels, got {labels.ndim}-d")
    if len(labels) != len(images):
        raise ImageFormatError(f"{lab_path}: {len(labels)} labels but {img_path.name} holds {len(images)} images")
    classes = classes or MNIST_CLASSES
    bad = np.flatnonzero(labels >= len(classes))
    if len(bad):
        raise ImageFormatError(f"{lab_path}: record {bad[0]}: label {labels[bad[0]]} >= {len(classes)} classes")
    return _make_set(images[:, None], labels, classes, f"{source}:{img_path}")


# ---------------------------------------------------------------------------------------------------------------------
# CIFAR-10 binary and python batches

_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


def read_cifar_binary(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes of 32x32)."""
    path = Path(path)
    raw = np.frombuffer(_read_maybe_gz(path), dtype=np.uint8)
    rec = 1 + 3 * 32 * 32
    if raw.size == 0 or raw.size % rec:
        raise ImageFormatError(f"{path}: {raw.size} bytes is not a whole number of {rec}-byte CIFAR-10 records")
    raw = raw.reshape(-1, rec)
    labels = raw[:, 0]
    bad = np.flatnonzero(labels >= 10)
    if len(bad):
        raise ImageFormatError(f"{path}: record {bad[0]}: label byte {labels[bad[0]]} is not a CIFAR-10 class 0-9")
    return raw[:, 1:].reshape(-1, 3, 32, 32), labels.astype(np.int64)


_ARRAY_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_ALLOWED_GLOBALS = _ARRAY_GLOBALS | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
                                     ("__builtin__", "bytes"), ("builtins", "bytes")}


class _Tag:
    """A placeholder object built by the restricted reader (never a real imported callable)."""

    def __init__(self, kind: str, args: tuple = ()) -> None:
        self.kind, self.args, self.state = kind, args, None


def read_restricted_pickle(path: str | os.PathLike) -> object:
    """Interpret a pickle of dicts/lists/strings/numbers/numpy arrays WITHOUT unpickling.

    Only a whitelist of opcodes and of globals (numpy array reconstruction, ``_codecs.encode``) is understood;
    nothing is imported or called. Anything else raises :class:`ImageFormatError` naming the opcode position.
    """
    path = Path(path)
    data = _read_maybe_gz(path)
    stack: list = []
    memo: dict = {}
    marks: list[int] = []

    def fail(pos: int, msg: str) -> ImageFormatError:
        return ImageFormatError(f"{path}: byte {pos}: {msg} (only CIFAR-style pickles of dicts/lists/arrays are read)")

    def pop_mark() -> list:
        start = marks.pop()
        items = stack[start:]
        del stack[start:]
        return items

    try:
        ops = list(pickletools.genops(data))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a format error
        raise ImageFormatError(f"{path}: not a readable pickle stream ({exc})") from exc
    for op, arg, pos in ops:
        name = op.name
        if name in ("PROTO", "FRAME"):
            continue
        if name == "STOP":
            break
        if name in ("EMPTY_DICT",):
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "MARK":
            marks.append(len(stack))
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[arg] = stack[-1]
        elif name == "MEMOIZE":
            memo[len(memo)] = stack[-1]
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            stack.append(memo[arg])
        elif name in ("BININT", "BININT1", "BININT2", "LONG1", "LONG4", "INT", "LONG", "BINFLOAT", "FLOAT"):
            stack.append(arg)
        elif name in ("SHORT_BINSTRING", "BINSTRING", "STRING"):
            stack.append(arg.encode("latin-1") if isinstance(arg, str) else bytes(arg))
        elif name in ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8", "UNICODE"):
            stack.append(str(arg))
        elif name in ("SHORT_BINBYTES", "BINBYTES", "BINBYTES8"):
            stack.append(bytes(arg))
        elif name == "NONE":
            stack.append(None)
        elif name in ("NEWTRUE", "NEWFALSE"):
            stack.append(name == "NEWTRUE")
        elif name == "TUPLE":
            stack.append(tuple(pop_mark()))
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            items = tuple(stack[-n:])
            del stack[-n:]
            stack.append(items)
        elif name == "LIST":
            stack.append(pop_mark())
        elif name == "DICT":
            items = pop_mark()
            stack.append(dict(zip(items[::2], items[1::2])))
        elif name == "APPEND":
            v = stack.pop()
            stack[-1].append(v)
        elif name == "APPENDS":
            items = pop_mark()
            stack[-1].extend(items)
        elif name == "SETITEM":
            v, k = stack.pop(), stack.pop()
            stack[-1][k] = v
        elif name == "SETITEMS":
            items = pop_mark()
            stack[-1].update(zip(items[::2], items[1::2]))
        elif name in ("GLOBAL", "STACK_GLOBAL"):
            if name == "GLOBAL":
                module, qual = arg.split(" ", 1)
            else:
                qual, module = stack.pop(), stack.pop()
            if (module, qual) not in _ALLOWED_GLOBALS:
                raise fail(pos, f"refusing global {module}.{qual}")
            stack.append(_Tag(f"{module}.{qual}"))
        elif name == "REDUCE":
            args, func = stack.pop(), stack.pop()
            if not isinstance(func, _Tag):
                raise fail(pos, "REDUCE on something that is not an allowed global")
            mod_qual = tuple(func.kind.rsplit(".", 1))
            if mod_qual == ("_codecs", "encode"):
                stack.append(str(args[0]).encode(args[1] if len(args) > 1 else "utf-8"))
            elif mod_qual in (("__builtin__", "bytes"), ("builtins", "bytes")):
                stack.append(bytes(*args))
            elif mod_qual in _ARRAY_GLOBALS:
                stack.append(_Tag("ndarray"))
            elif mod_qual == ("numpy", "dtype"):
                stack.append(_Tag("dtype", args))
            else:
                raise fail(pos, f"cannot call {func.kind}")
        elif name == "BUILD":
            state = stack.pop()
            obj = stack[-1]
            if not isinstance(obj, _Tag):
                raise fail(pos, "BUILD on a plain object")
            obj.state = state
            if obj.kind == "ndarray":
                stack[-1] = _array_from_state(state, fail, pos)
        else:
            raise fail(pos, f"unsupported pickle opcode {name}")
    if len(stack) != 1:
        raise ImageFormatError(f"{path}: pickle stream did not end with exactly one object")
    return stack[0]


def _array_from_state(state: tuple, fail, pos: int) -> np.ndarray:
    """numpy's ndarray __setstate__ tuple (version, shape, dtype, fortran, raw) -> array, for plain dtypes only."""
    if not isinstance(state, tuple) or len(state) != 5:
        raise fail(pos, "unexpected ndarray state")
    _, shape, dtype_tag, fortran, raw = state
    if not isinstance(dtype_tag, _Tag) or dtype_tag.kind != "dtype" or not dtype_tag.args:
        raise fail(pos, "ndarray without a dtype")
    code = dtype_tag.args[0]
    code = code.decode() if isinstance(code, bytes) else str(code)
    if code not in ("u1", "i1", "i2", "i4", "i8", "u2", "u4", "f4", "f8", "b1"):
        raise fail(pos, f"unsupported array dtype {code!r}")
    endian = "<"
    if isinstance(dtype_tag.state, tuple) and len(dtype_tag.state) > 1 and dtype_tag.state[1] in ("<", ">", "|", "="):
        endian = dtype_tag.state[1] if dtype_tag.state[1] in "<>" else "<"
    if isinstance(raw, str):
        raw = raw.encode("latin-1")
    dt = np.dtype(endian + code)
    shape = tuple(int(s) for s in shape)
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != int(np.prod(shape)) * dt.itemsize:
        raise fail(pos, f"array data size does not match shape {shape}")
    return np.frombuffer(raw, dtype=dt).reshape(shape, order="F" if fortran else "C").copy()


def read_cifar_python_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch (``data_batch_1`` ...) read by the restricted reader; never unpickled."""
    path = Path(path)
    obj = read_restricted_pickle(path)
    if not isinstance(obj, dict):
        raise ImageFormatError(f"{path}: expected a dict batch, got {type(obj).__name__}")
    norm = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    if "data" not in norm or "labels" not in norm:
        raise ImageFormatError(f"{path}: batch dict lacks 'data' or 'labels' (keys: {sorted(norm)})")
    data, labels = norm["data"], np.asarray(norm["labels"], dtype=np.int64)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ImageFormatError(f"{path}: 'data' must be a uint8 (N, 3072) array")
    if labels.shape != (data.shape[0],):
        raise ImageFormatError(f"{path}: {labels.size} labels for {data.shape[0]} images")
    bad = np.flatnonzero((labels < 0) | (labels >= 10))
    if len(bad):
        raise ImageFormatError(f"{path}: record {bad[0]}: label {labels[bad[0]]} is not a CIFAR-10 class 0-9")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar_batches(root: Path, split: str) -> ImageSet | None:
    names = _CIFAR_TRAIN if split == "train" else _CIFAR_TEST
    for sub in (root, root / "cifar-10-batches-bin", root / "cifar-10-batches-py"):
        if all((sub / f"{n}.bin").is_file() for n in names):
            parts = [read_cifar_binary(sub / f"{n}.bin") for n in names]
            kind = "cifar10-bin"
        elif all((sub / n).is_file() for n in names):
            parts = [read_cifar_python_batch(sub / n) for n in names]
            kind = "cifar10-py"
        else:
            continue
        return _make_set(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                         CIFAR10_CLASSES, f"{kind}:{sub}")
    return None


# ---------------------------------------------------------------------------------------------------------------------
# Image folders and tar archives


def _decode_image(data: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
            arr = np.asarray(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ImageFormatError(f"{where}: not a readable image ({exc})") from exc
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _stack_images(items: list[tuple[str, str, bytes]], where: str, classes: list[str] | None) -> ImageSet:
    """items: (class name, member name, bytes), already sorted. Grey and colour may not be mixed."""
    if not items:
        raise ImageFormatError(f"{where}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    classes = classes or sorted({c for c, _, _ in items})
    index = {c: i for i, c in enumerate(classes)}
    arrays, labels = [], []
    for cls, name, data in items:
        if cls not in index:
            raise ImageFormatError(f"{where}/{name}: class folder {cls!r} is not one of {classes}")
        arr = _decode_image(data, f"{where}/{name}")
        if arrays and arr.shape != arrays[0].shape:
            raise ImageFormatError(f"{where}/{name}: image shape (C,H,W)={arr.shape} differs from the first image's "
                                   f"{arrays[0].shape}")
        arrays.append(arr)
        labels.append(index[cls])
    return _make_set(np.stack(arrays), np.array(labels), classes, where)


def _sort_key(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def load_image_folder(root: str | os.PathLike, split: str = "train", classes: list[str] | None = None) -> ImageSet:
    """Images in ``root/<split>/<class>/*.png|jpg``; classes sorted by folder name unless given."""
    base = Path(root) / split
    if not base.is_dir():
        raise FileNotFoundError(f"{base}: no such folder (expected {root}/{split}/<class>/<image>)")
    items = []
    for cdir in sorted(p for p in base.iterdir() if p.is_dir()):
        for f in sorted(cdir.iterdir(), key=lambda p: _sort_key(p.name)):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                items.append((cdir.name, f"{cdir.name}/{f.name}", f.read_bytes()))
    return _stack_images(items, str(base), classes)


def _safe_member_parts(archive: Path, name: str) -> tuple[str, ...]:
    p = PurePosixPath(name)
    if p.is_absolute() or name.startswith(("/", "\\")) or ".." in p.parts or re.match(r"^[A-Za-z]:", name):
        raise ImageFormatError(f"{archive}: member {name!r} escapes the archive (absolute path or '..'); refusing")
    return tuple(part for part in p.parts if part not in ("", "."))


def load_image_tar(path: str | os.PathLike, split: str = "train", classes: list[str] | None = None) -> ImageSet:
    """Images from a tar(.gz) holding ``[top/]<split>/<class>/<image>``, read in memory (nothing is extracted)."""
    path = Path(path)
    try:
        tf = tarfile.open(path, mode="r:*")
    except (tarfile.TarError, OSError) as exc:
        raise ImageFormatError(f"{path}: not a readable tar archive ({exc})") from exc
    items = []
    with tf:
        for member in tf:
            parts = _safe_member_parts(path, member.name)
            if member.islnk() or member.issym():
                raise ImageFormatError(f"{path}: member {member.name!r} is a link; refusing links in image archives")
            if not member.isfile() or not parts or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                continue
            if len(parts) < 3 or parts[-3] != split:
                continue
            fh = tf.extractfile(member)
            if fh is None:
                continue
            items.append((parts[-2], member.name, fh.read()))
    items.sort(key=lambda it: (it[0], _sort_key(it[1])))
    return _stack_images(items, f"{path}:{split}", classes)


# ---------------------------------------------------------------------------------------------------------------------
# The lossless CIFAR-10 PNG subset (ConvNetJS sprite sheets)


def read_convnetjs_labels(path: str | os.PathLike) -> np.ndarray:
    """``var labels=[...]`` from the ConvNetJS labels file."""
    path = Path(path)
    text = path.read_text(encoding="utf-8", errors="replace")
    m = re.search(r"\[([\d,\s]*)\]", text)
    if m is None:
        raise ImageFormatError(f"{path}: no '[...]' label list found")
    labels = np.array(json.loads("[" + m.group(1) + "]"), dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= 10))
    if len(bad):
        raise ImageFormatError(f"{path}: entry {bad[0]}: label {labels[bad[0]]} is not a CIFAR-10 class")
    return labels


def load_cifar10_png_subset(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """Lossless CIFAR-10 subset: train images 0-3999 (batches 0-3) or test images 0-999 (batch 50)."""
    from PIL import Image

    root = Path(root)
    labels = read_convnetjs_labels(root / "cifar10_labels.js")
    if split == "train":
        batches = sorted(int(m.group(1)) for f in root.glob("cifar10_batch_*.png")
                         if (m := re.fullmatch(r"cifar10_batch_(\d+)\.png", f.name)) and int(m.group(1)) < 50)
        offsets = [1000 * b for b in batches]
    elif split == "test":
        batches, offsets = [50], [50000]
    else:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    xs, ys = [], []
    for b, off in zip(batches, offsets):
        f = root / f"cifar10_batch_{b}.png"
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such file")
        with Image.open(f) as im:
            arr = np.asarray(im.convert("RGB"))
        if arr.shape != (1000, 1024, 3):
            raise ImageFormatError(f"{f}: expected a 1024x1000 RGB sprite sheet, got shape {arr.shape}")
        if off + 1000 > len(labels):
            raise ImageFormatError(f"{root / 'cifar10_labels.js'}: {len(labels)} labels, need index {off + 999}")
        xs.append(arr.reshape(1000, 32, 32, 3).transpose(0, 3, 1, 2))
        ys.append(labels[off: off + 1000])
    if not xs:
        raise FileNotFoundError(f"{root}: no cifar10_batch_<b>.png files")
    return _make_set(np.concatenate(xs), np.concatenate(ys), CIFAR10_CLASSES, f"cifar10-png-subset:{root}")


# ---------------------------------------------------------------------------------------------------------------------
# Digits and the dispatcher


def load_digits_set(split: str = "train", test_fraction: float = 0.2) -> ImageSet:
    """scikit-learn's 8x8 digits (1,797 images, values 0-16 scaled to 0-255), fixed seed-0 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).astype(np.uint8)[:, None]
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    idx = {"test": perm[:n_test], "train": perm[n_test:]}.get(split)
    if idx is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return _make_set(x[idx], y[idx], MNIST_CLASSES, "sklearn-digits")


def _is_tar(p: Path) -> bool:
    return p.is_file() and p.name.endswith((".tar", ".tar.gz", ".tgz"))


def load_cifar10(root: str | os.PathLike, split: str = "train") -> ImageSet:
    """CIFAR-10 from whatever ``root`` holds: binary or python batches, the PNG subset, a tar, or a folder."""
    root = Path(root)
    if _is_tar(root):
        return load_image_tar(root, split, CIFAR10_CLASSES)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such file or folder")
    if (root / "cifar10_labels.js").is_file():
        return load_cifar10_png_subset(root, split)
    found = _load_cifar_batches(root, split)
    if found is not None:
        return found
    if (root / split).is_dir():
        return load_image_folder(root, split, CIFAR10_CLASSES)
    tars = sorted(p for p in root.iterdir() if _is_tar(p))
    if len(tars) == 1:
        return load_image_tar(tars[0], split, CIFAR10_CLASSES)
    raise FileNotFoundError(f"{root}: no CIFAR-10 data found (data_batch_*[.bin], cifar10_labels.js + PNGs, "
                            f"{split}/<class>/ images, or one .tar[.gz])")


def load_images(name: str, root: str | os.PathLike | None = None, split: str = "train") -> ImageSet:
    """Load dataset ``name`` (digits, mnist, fashion-mnist, cifar10, folder) as uint8 (N, C, H, W) tensors.

    Default roots: ``<shared data>/mnist``, ``/usr/share/datasets/fashion-mnist``, and for cifar10 the JPEG tar
    (split train) or the lossless PNG subset (split test) of the shared data folder.
    """
    name = name.lower()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "digits":
        return load_digits_set(split)
    if name == "mnist":
        return load_idx_dataset(root or default_data_dir() / "mnist", split, MNIST_CLASSES, "mnist")
    if name in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return load_idx_dataset(root or "/usr/share/datasets/fashion-mnist", split, FASHION_CLASSES, "fashion-mnist")
    if name == "cifar10":
        if root is None:
            sub = "cifar10-jpeg-q75" if split == "train" else "cifar10-convnetjs-png-subset"
            root = default_data_dir() / sub
        return load_cifar10(root, split)
    if name == "folder":
        if root is None:
            raise ValueError("dataset 'folder' needs a root (a folder with <split>/<class>/ images, or a tar)")
        root = Path(root)
        return load_image_tar(root, split) if _is_tar(root) else load_image_folder(root, split)
    raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
