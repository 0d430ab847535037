"""The sweep folder: one sub-folder per cell, written atomically, so an interrupted sweep loses nothing.

``OUT/cells/<cell id>/`` holds ``records.jsonl`` (per-snippet attack records, when the attack has them), then
``result.json`` (written last, atomically: its presence with the cell's key means *finished*). A failed cell
gets ``error.txt`` (one-line message, then the traceback) instead; the next run retries it and removes the
error file when it succeeds. Nothing else in the folder is needed to resume.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_text, read_json, write_json

RESULT_FORMAT = "advsim.sweep-cell"


def cell_dir(out: Path, cell_id: str) -> Path:
    return out / "cells" / cell_id


def is_finished(out: Path, cell_id: str) -> bool:
    """A cell is finished when its result.json exists: it is written last and atomically, and the cell's name
    ends with the hash of its key, so a changed cell has another folder."""
    return (cell_dir(out, cell_id) / "result.json").is_file()


def read_result(out: Path, cell_id: str, key: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The finished result of a cell, or None (absent, unreadable, or computed for another key)."""
    path = cell_dir(out, cell_id) / "result.json"
    if not path.is_file():
        return None
    try:
        res = read_json(path)
    except (ValueError, OSError):
        return None
    if not isinstance(res, dict) or res.get("format") != RESULT_FORMAT:
        return None
    if key is not None and json.dumps(res.get("key"), sort_keys=True) != json.dumps(key, sort_keys=True):
        return None
    return res


def write_result(out: Path, cell: dict[str, Any], payload: dict[str, Any]) -> Path:
    """Store a finished cell: records first, result.json last (atomic); clear an old error file."""
    d = cell_dir(out, cell["id"])
    d.mkdir(parents=True, exist_ok=True)
    records = payload.get("records")
    if records is not None:
        lines = [json.dumps(r, separators=(",", ":")) for r in records]
        atomic_write_text(d / "records.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    result = {"format": RESULT_FORMAT, "id": cell["id"], "key": cell["key"], "rows": payload["rows"],
              "info": payload.get("info", {}), "resources": payload.get("resources", {})}
    path = write_json(d / "result.json", result)
    err = d / "error.txt"
    if err.exists():
        err.unlink()
    return path


def write_error(out: Path, cell_id: str, message: str, traceback_text: str = "") -> Path:
    """Store a failed cell's error: the one-line message, then the traceback."""
    text = message.strip() + "\n" + (f"\n{traceback_text.rstrip()}\n" if traceback_text else "")
    return atomic_write_text(cell_dir(out, cell_id) / "error.txt", text)


def read_error(out: Path, cell_id: str) -> str | None:
    """The one-line message of a failed cell, or None."""
    path = cell_dir(out, cell_id) / "error.txt"
    if not path.is_file():
        return None
    return path.read_text(encoding="utf-8").splitlines()[0] if path.stat().st_size else ""
