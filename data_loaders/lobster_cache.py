"""Parquet cache of parsed LOBSTER days, keyed by a blake2b hash of the source files' bytes.

One file per day: ``<cache_dir>/lobster/<key>.parquet`` (zstd) with the six message columns and the book as two
fixed-size-list columns (2*L int64 per row, side-major). Written atomically; an unreadable entry is ignored
and rebuilt. ``<cache_dir>/lobster/stat/`` remembers the key of unchanged files (path, size, mtime).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np

CACHE_FORMAT = b"advsim-lobster-cache-v1"


def default_cache_dir() -> Path:
    """``$ADVSIM_CACHE`` or ``~/.cache/advsim``."""
    env = os.environ.get("ADVSIM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "advsim"


def content_key(message_bytes: bytes, orderbook_bytes: bytes) -> str:
    """blake2b over the format tag and both files' bytes (lengths included so the split is unambiguous)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(CACHE_FORMAT)
    for data in (message_bytes, orderbook_bytes):
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()


def _stat_path(stat_id: str, cache_dir: str | os.PathLike | None) -> Path:
    h = hashlib.blake2b(stat_id.encode("utf-8"), digest_size=16).hexdigest()
    return Path(cache_dir or default_cache_dir()) / "lobster" / "stat" / f"{h}.key"


def key_for_stat(stat_id: str, cache_dir: str | os.PathLike | None = None) -> str | None:
    """The content key remembered for these files' (path, size, mtime), or None."""
    p = _stat_path(stat_id, cache_dir)
    try:
        stored_id, key = p.read_text(encoding="utf-8").rsplit("\n", 1)
    except (OSError, ValueError):
        return None
    return key if stored_id == stat_id and len(key) == 40 else None


def remember_stat(stat_id: str, key: str, cache_dir: str | os.PathLike | None = None) -> None:
    """Record that files with this (path, size, mtime) have content key ``key``."""
    from data_loaders.rundir import atomic_write_text

    atomic_write_text(_stat_path(stat_id, cache_dir), f"{stat_id}\n{key}")


def cache_path(key: str, cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or default_cache_dir()) / "lobster" / f"{key}.parquet"


def write(key: str, day, cache_dir: str | os.PathLike | None = None) -> Path:
    """Store a LobsterDay under ``key`` (atomic: temporary file + rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_loaders.rundir import atomic_write_bytes

    n, L = day.n_rows, day.levels
    cols = {name: pa.array(getattr(day, name)) for name in
            ("time", "event_type", "order_id", "size", "price", "direction")}
    for name in ("book_prices", "book_sizes"):
        flat = pa.array(np.ascontiguousarray(getattr(day, name)).reshape(-1))
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, 2 * L) if n else pa.array([], pa.list_(pa.int64(), 2 * L))
    meta = {"ticker": day.ticker, "date": day.date, "levels": str(L), "source": day.source,
            "format": CACHE_FORMAT.decode()}
    table = pa.table(cols).replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return atomic_write_bytes(cache_path(key, cache_dir), buf.getvalue())


def read(key: str, cache_dir: str | os.PathLike | None = None):
    """The cached LobsterDay for ``key``, or None when absent or unreadable (a warning says so)."""
    import pyarrow.parquet as pq

    from data_loaders.lobster import LobsterDay

    path = cache_path(key, cache_dir)
    if not path.is_file():
        return None
    try:
        table = pq.read_table(path)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get("format") != CACHE_FORMAT.decode():
            return None
        L = int(meta["levels"])
        n = table.num_rows
        arrays = {name: table.column(name).to_numpy() for name in
                  ("time", "event_type", "order_id", "size", "price", "direction")}
        for name in ("book_prices", "book_sizes"):
            flat = table.column(name).combine_chunks().flatten().to_numpy()
            arrays[name] = flat.reshape(n, 2, L)
        return LobsterDay(ticker=meta["ticker"], date=meta["date"], levels=L, source=meta["source"], **arrays)
    except Exception as exc:  # noqa: BLE001 - a broken cache entry must never stop a load
        warnings.warn(f"{path}: unreadable cache entry ignored ({exc})", stacklevel=2)
        return None
