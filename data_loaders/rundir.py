"""Run directories and safe file writing: atomic writes, JSON, pickle-free weights, device choice."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _jsonable(obj: Any) -> Any:
    """Convert dataclasses, numpy scalars/arrays and paths into plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half-written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` (dataclasses and numpy values allowed) as indented JSON."""
    return atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, naming the file in the error when it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {exc.lineno}: not valid JSON ({exc.msg})") from exc


def save_weights(
    path: str | os.PathLike, state_dict: Mapping[str, Any], metadata: Mapping[str, str] | None = None
) -> Path:
    """Save a torch state_dict as safetensors (no pickle), atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    return atomic_write_bytes(path, save(tensors, metadata=dict(metadata or {})))


def _weights_problem(path: Path) -> str:
    """Why ``path`` is not a safetensors file, in words (looked up only after loading failed)."""
    head = path.read_bytes()[:8]
    if not head:
        return "empty file (0 bytes)"
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive as torch.save writes (pickle inside); advsim never unpickles: save a state_dict " \
               "with safetensors"
    if head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5:
        return "a Python pickle; advsim never unpickles: save a state_dict with safetensors"
    return "not a safetensors file (unreadable header)"


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """Load a safetensors state_dict; a missing, empty, pickled or garbled file gets a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file (the run did not finish training?)")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an advsim weights file (safetensors expected): {_weights_problem(path)}"
                         ) from exc


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when present, else CPU; other values pass through after a check."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


INCOMPLETE = "INCOMPLETE"
_INCOMPLETE_TEXT = ("This advsim run did not finish (it failed or was interrupted). Run the same command again to "
                    "redo it; reports refuse it until then.\n")


def is_incomplete(run: str | os.PathLike) -> bool:
    """True when ``run`` carries the INCOMPLETE marker of :func:`make_run_dir` (started, never finished)."""
    return (Path(run) / INCOMPLETE).is_file()


def make_run_dir(out: str | os.PathLike, config: Any, overwrite: bool = False) -> Path:
    """Create a run directory, mark it INCOMPLETE and write its config.json; :func:`finish_run` ends it.

    A finished run (metrics.json, no marker) is refused unless ``overwrite`` (the ``--overwrite`` flag); an
    INCOMPLETE run is taken over and redone; a folder holding other files that is not an advsim run is refused.
    The old metrics.json is removed first, so a failure never leaves an old result looking current.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir():
        finished = (out / "metrics.json").exists() and not is_incomplete(out)
        if finished and not overwrite:
            raise FileExistsError(f"{out}: already holds a finished run (metrics.json); use --overwrite to replace "
                                  "it or choose another --out")
        if not finished and not (out / "config.json").exists() and not is_incomplete(out) and any(out.iterdir()):
            raise FileExistsError(f"{out}: holds other files and is not an advsim run directory; choose a new or "
                                  "empty --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / INCOMPLETE, _INCOMPLETE_TEXT)
    (out / "metrics.json").unlink(missing_ok=True)
    write_json(out / "config.json", config)
    return out


def finish_run(out: str | os.PathLike, metrics: Any) -> Path:
    """Write the run's metrics.json (atomically), then remove its INCOMPLETE marker."""
    out = Path(out)
    path = write_json(out / "metrics.json", metrics)
    (out / INCOMPLETE).unlink(missing_ok=True)
    return path


def stored_path(path: str | os.PathLike, run_dir: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """How a run records a data path: relative to ``run_dir`` (POSIX, e.g. ``data/X.csv`` or ``../../data/X.csv``)
    when the file lies inside ``root`` (default ``run_dir``), so the run can be moved with its data; else
    absolute."""
    p = Path(path).resolve()
    run = Path(run_dir).resolve()
    top = Path(root).resolve() if root is not None else run
    if p == top or top in p.parents:
        return Path(os.path.relpath(p, run)).as_posix()
    return str(p)


def resolve_stored_path(stored: str, run_dir: str | os.PathLike) -> Path:
    """The file a run's recorded path points to now (relative paths are relative to ``run_dir``)."""
    p = Path(stored)
    return p if p.is_absolute() else Path(run_dir) / p
