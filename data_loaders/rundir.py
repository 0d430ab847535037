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


def load_weights(path: str | os.PathLike, device: str = "cpu") -> dict[str, Any]:
    """Load a safetensors state_dict; a file that is not safetensors gets a clear error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ValueError(f"{path}: not an advsim weights file (safetensors expected): {exc}") from exc


def resolve_device(device: str = "auto") -> str:
    """``auto`` picks CUDA when present, else CPU; other values pass through after a check."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def make_run_dir(out: str | os.PathLike, config: Any, overwrite: bool = False) -> Path:
    """Create a run directory and write its config.json; refuse to clobber a finished run."""
    out = Path(out)
    if (out / "metrics.json").exists() and not overwrite:
        raise FileExistsError(f"{out}: already holds a finished run (metrics.json); pass overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config)
    return out
