"""LOBSTER message + orderbook files (.csv pair, a directory, or the .zip LOBSTER ships) -> a validated LobsterDay.

Prices are int64 LOBSTER units (dollars x 10,000), sizes int64 shares, time float64 seconds after midnight.
The book arrays are (N, 2, L): side 0 = bid, 1 = ask, level 0 = best; dummy prices (+-9999999999) are kept
and masked by ``level_mask``. Parsed days are cached as parquet keyed by the content hash of the source bytes
(see ``data_loaders.lobster_cache``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from numba import njit

EMPTY_ASK: int = 9999999999
EMPTY_BID: int = -9999999999
EVENT_TYPES = (1, 2, 3, 4, 5, 7)
HALT = 7
MESSAGE_COLUMNS = ("time", "event_type", "order_id", "size", "price", "direction")

_NAME = re.compile(
    r"^(?P<ticker>[^_/\\]+)_(?P<date>\d{4}-\d{2}-\d{2})_(?P<start>\d+)_(?P<end>\d+)_"
    r"(?P<kind>message|orderbook)_(?P<levels>\d+)\.csv$"
)


class LobsterFormatError(ValueError):
    """Bad LOBSTER input. The message reads ``FILE: row N: problem`` (N is the 1-based line) where a row applies."""


def level_mask(prices: np.ndarray) -> np.ndarray:
    """True where a level holds a real price (not a LOBSTER dummy)."""
    return (prices != EMPTY_ASK) & (prices != EMPTY_BID)


@dataclass(frozen=True)
class LobsterDay:
    """One validated LOBSTER file pair. ``book_*[k]`` is the top-L book after message k.

    Arrays are converted to the field dtypes below and made read-only (an array already of the right dtype
    is used as is, so the caller's array becomes read-only too).
    """

    ticker: str
    date: str
    levels: int
    source: str
    time: np.ndarray
    event_type: np.ndarray
    order_id: np.ndarray
    size: np.ndarray
    price: np.ndarray
    direction: np.ndarray
    book_prices: np.ndarray
    book_sizes: np.ndarray

    def __post_init__(self) -> None:
        """Normalise dtypes (see the class fields), make arrays C-contiguous and read-only, check shapes."""
        dtypes = {"time": np.float64, "event_type": np.int8, "order_id": np.int64, "size": np.int64,
                  "price": np.int64, "direction": np.int8, "book_prices": np.int64, "book_sizes": np.int64}
        for name, dt in dtypes.items():
            a = np.ascontiguousarray(getattr(self, name), dtype=dt)
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        n = self.time.shape[0]
        for name in ("event_type", "order_id", "size", "price", "direction"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"LobsterDay {self.source}: {name} must have shape ({n},)")
        for name in ("book_prices", "book_sizes"):
            if getattr(self, name).shape != (n, 2, self.levels):
                raise ValueError(f"LobsterDay {self.source}: {name} must have shape ({n}, 2, {self.levels}), "
                                 f"got {getattr(self, name).shape}")

    @property
    def n_rows(self) -> int:
        return int(self.time.shape[0])

    @property
    def halt_rows(self) -> np.ndarray:
        """0-based indices of the trading-halt messages (type 7)."""
        return np.flatnonzero(self.event_type == HALT)

    def summary(self) -> str:
        """A few lines: ticker, date, levels, rows, time span, halts, price range."""
        halts = self.halt_rows
        mask = level_mask(self.book_prices)
        real = self.book_prices[mask]
        lo, hi = (real.min() / 1e4, real.max() / 1e4) if real.size else (float("nan"), float("nan"))
        halt_txt = "none"
        if halts.size:
            shown = ", ".join(f"{format_clock(self.time[i])} (price {self.price[i]})" for i in halts[:5])
            halt_txt = f"{halts.size}: {shown}" + (" ..." if halts.size > 5 else "")
        return (
            f"{self.ticker} {self.date}, {self.levels} levels, {self.n_rows:,} rows "
            f"({format_clock(self.time[0])} - {format_clock(self.time[-1])})\n"
            f"halts (type 7): {halt_txt}\n"
            f"book prices: ${lo:,.4f} - ${hi:,.4f}\n"
            f"source: {self.source}"
        )


@dataclass(frozen=True)
class LobsterPair:
    """A message/orderbook file pair found by ``find_days``; ``archive`` is the zip holding them, if any."""

    ticker: str
    date: str
    levels: int
    message: str
    orderbook: str
    archive: str | None = None

    def describe(self) -> str:
        where = f" in {self.archive}" if self.archive else ""
        return f"{self.message} + {self.orderbook}{where}"


def format_clock(seconds: float) -> str:
    """Seconds after midnight -> HH:MM:SS.mmm."""
    s = float(seconds)
    h, rem = divmod(s, 3600.0)
    m, sec = divmod(rem, 60.0)
    return f"{int(h):02d}:{int(m):02d}:{sec:06.3f}"


def parse_name(name: str) -> dict | None:
    """Fields of a LOBSTER file name (ticker, date, start, end, kind, levels) or None when it does not follow it."""
    m = _NAME.match(PurePosixPath(name).name)
    if not m:
        return None
    d = m.groupdict()
    d["levels"] = int(d["levels"])
    return d


def _safe_member(zip_path: str, name: str) -> None:
    p = PurePosixPath(name.replace("\\", "/"))
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in p.parts:
        raise LobsterFormatError(f"{zip_path}: member {name!r}: unsafe path (absolute or containing '..'); refused")


def _pairs_from_names(names: list[str], archive: str | None) -> list[LobsterPair]:
    by_key: dict[tuple, dict[str, str]] = {}
    for n in names:
        f = parse_name(n)
        if f is None:
            continue
        key = (str(PurePosixPath(n.replace("\\", "/")).parent), f["ticker"], f["date"], f["start"], f["end"],
               f["levels"])
        by_key.setdefault(key, {})[f["kind"]] = n
    pairs = []
    for key, kinds in sorted(by_key.items()):
        if "message" in kinds and "orderbook" in kinds:
            pairs.append(LobsterPair(key[1], key[2], key[5], kinds["message"], kinds["orderbook"], archive))
    return pairs


def _not_a_zip(path: Path) -> LobsterFormatError:
    return LobsterFormatError(f"{path}: not a readable zip archive (truncated or corrupt: no zip directory at its "
                              "end); download it again")


def find_days(path: str | os.PathLike) -> list[LobsterPair]:
    """The LOBSTER message/orderbook pairs in a directory (not recursive) or a .zip (members are path-checked)."""
    path = Path(path)
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise LobsterFormatError(f"{path}: corrupt zip archive ({exc}); download it again") from exc
        for n in names:
            _safe_member(str(path), n)
        return _pairs_from_names(names, str(path))
    if path.is_dir():
        names = sorted(str(p) for p in path.iterdir() if p.is_file())
        return _pairs_from_names(names, None)
    if path.suffix.lower() == ".zip":
        raise _not_a_zip(path)
    raise LobsterFormatError(f"{path}: not a directory or a zip archive")


# ----------------------------------------------------------------------------------------------- reading bytes


@dataclass(frozen=True)
class _Source:
    """A resolved pair: two files on disk, or two members of ``archive``; nothing read yet."""

    message: str
    orderbook: str
    ticker: str
    date: str
    levels: int | None  # from the file name; None when the name does not follow the convention
    archive: str | None = None

    @property
    def message_name(self) -> str:
        return f"{self.archive}!{self.message}" if self.archive else self.message

    @property
    def orderbook_name(self) -> str:
        return f"{self.archive}!{self.orderbook}" if self.archive else self.orderbook

    def read(self) -> tuple[bytes, bytes]:
        if self.archive:
            import zlib

            try:
                with zipfile.ZipFile(self.archive) as zf:
                    return zf.read(self.message), zf.read(self.orderbook)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise LobsterFormatError(f"{self.archive}: corrupt zip archive ({exc}); download it again") from exc
        return Path(self.message).read_bytes(), Path(self.orderbook).read_bytes()

    def stat_id(self) -> str:
        """Absolute paths, sizes and modification times (ns) of the files (or the zip and member names)."""
        files = [self.archive] if self.archive else [self.message, self.orderbook]
        parts = []
        for f in files:
            st = os.stat(f)
            parts.append(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}")
        if self.archive:
            parts += [self.message, self.orderbook]
        return "\n".join(parts)


def _pick_one(path: Path, pairs: list[LobsterPair]) -> LobsterPair:
    if len(pairs) == 1:
        return pairs[0]
    if not pairs:
        raise LobsterFormatError(f"{path}: no LOBSTER message/orderbook pair found "
                                 "(names like TICKER_YYYY-MM-DD_START_END_message_L.csv)")
    listing = "; ".join(p.describe() for p in pairs)
    raise LobsterFormatError(f"{path}: holds {len(pairs)} LOBSTER pairs, pass one message file: {listing}")


def _resolve_source(path: str | os.PathLike, orderbook_path: str | os.PathLike | None) -> _Source:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if orderbook_path is not None:
        ob = Path(orderbook_path)
        if not ob.is_file():
            raise FileNotFoundError(f"{ob}: no such orderbook file")
        f = parse_name(path.name) or {}
        return _Source(str(path), str(ob), f.get("ticker", path.stem), f.get("date", ""), f.get("levels"))
    if path.is_file() and zipfile.is_zipfile(path):
        pair = _pick_one(path, find_days(path))
        return _Source(pair.message, pair.orderbook, pair.ticker, pair.date, pair.levels, archive=str(path))
    if path.is_dir():
        pair = _pick_one(path, find_days(path))
        return _resolve_source(pair.message, pair.orderbook)
    if path.suffix.lower() == ".zip":
        raise _not_a_zip(path)
    f = parse_name(path.name)
    if f is None:
        raise LobsterFormatError(f"{path}: file name does not follow the LOBSTER convention "
                                 "TICKER_YYYY-MM-DD_START_END_message_L.csv; name its orderbook file with --orderbook")
    msg = path if f["kind"] == "message" else path.with_name(path.name.replace("_orderbook_", "_message_"))
    ob = msg.with_name(msg.name.replace("_message_", "_orderbook_"))
    for p in (msg, ob):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (the LOBSTER pair of {path.name})")
    return _Source(str(msg), str(ob), f["ticker"], f["date"], f["levels"])


# ----------------------------------------------------------------------------------------------- parsing CSV


def _locate_csv_problem(name: str, data: bytes, ncols: int | None, float_cols: tuple[int, ...]) -> str:
    """Slow line-by-line scan that finds the first bad row (only run after the fast reader failed)."""
    text = data.decode("utf-8", errors="replace")
    expected = ncols
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            return f"{name}: row {i}: empty line"
        cells = line.split(",")
        if expected is None:
            expected = len(cells)
        if len(cells) != expected:
            return f"{name}: row {i}: expected {expected} columns, found {len(cells)}"
        for c, cell in enumerate(cells, start=1):
            s = cell.strip()
            if s == "":
                return f"{name}: row {i}: column {c} is empty"
            if s.lower() in ("nan", "-nan", "na", "n/a", "null"):
                return f"{name}: row {i}: column {c} is NaN ({s!r})"
            try:
                v = float(s) if (c - 1) in float_cols else int(s)
            except ValueError:
                kind = "number" if (c - 1) in float_cols else "integer"
                return f"{name}: row {i}: column {c} is not an {kind}: {s!r}"
            if isinstance(v, float) and not np.isfinite(v):
                return f"{name}: row {i}: column {c} is not finite: {s!r}"
    return ""


_POW10 = np.array([10.0**k for k in range(23)])


@njit(cache=True)
def _parse_numeric_csv(buf, ncols, float_col, out_int, out_float):
    """Parse a headerless CSV of integers (column ``float_col`` a plain decimal) into a row-major matrix.

    Returns (rows parsed, status, bad row, bad column): status 0 ok, 1 malformed row (the caller re-scans it
    for a precise message), 2 a decimal this parser does not take exactly (the caller falls back to pyarrow).
    """
    n = buf.shape[0]
    pos = 0
    r = 0
    nrows = out_int.shape[0]
    while pos < n and r < nrows:
        for c in range(ncols):
            neg = False
            if pos < n and buf[pos] == 45:  # '-'
                neg = True
                pos += 1
            mant = 0
            digits = 0
            frac = 0
            while pos < n and 48 <= buf[pos] <= 57:
                if digits >= 18:
                    return r, 2 if c == float_col else 1, r, c
                mant = mant * 10 + (buf[pos] - 48)
                digits += 1
                pos += 1
            if c == float_col and pos < n and buf[pos] == 46:  # '.'
                pos += 1
                while pos < n and 48 <= buf[pos] <= 57:
                    if digits >= 15 or frac >= 22:
                        return r, 2, r, c
                    mant = mant * 10 + (buf[pos] - 48)
                    digits += 1
                    frac += 1
                    pos += 1
            if digits == 0:
                return r, 1, r, c
            if c == float_col:
                v = mant / _POW10[frac]  # both exact doubles: one correctly rounded division
                out_float[r] = -v if neg else v
            out_int[r, c] = -mant if neg else mant
            if c < ncols - 1:
                if pos >= n or buf[pos] != 44:  # ','
                    return r, 1, r, c
                pos += 1
            else:
                if pos < n and buf[pos] == 13:  # '\r'
                    pos += 1
                if pos < n:
                    if buf[pos] != 10:
                        return r, 1, r, c
                    pos += 1
        r += 1
    return r, 0, -1, -1


def _read_csv_pyarrow(name: str, data: bytes, n: int, float_cols: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Fallback reader (pyarrow) for numbers the fast parser does not take exactly (e.g. exponents)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    names = [f"c{i}" for i in range(n)]
    types = {nm: (pa.float64() if i in float_cols else pa.int64()) for i, nm in enumerate(names)}
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 22),
            convert_options=pacsv.ConvertOptions(column_types=types),
        )
    except pa.ArrowInvalid as exc:
        problem = _locate_csv_problem(name, data, n, float_cols)
        raise LobsterFormatError(problem or f"{name}: unreadable CSV ({exc})") from None
    mat = np.empty((table.num_rows, n), np.int64)
    flt = np.empty(table.num_rows if float_cols else 0, np.float64)
    for i, nm in enumerate(names):
        col = table.column(nm)
        if col.null_count:
            problem = _locate_csv_problem(name, data, n, float_cols)
            raise LobsterFormatError(problem or f"{name}: empty or NaN cell in column {i + 1}")
        if i in float_cols:
            flt[:] = col.to_numpy()
            mat[:, i] = flt.astype(np.int64)
        else:
            mat[:, i] = col.to_numpy()
    return mat, flt


def _read_csv(name: str, data: bytes, ncols: int | None, float_cols: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parse a headerless numeric CSV into an (N, ncols) int64 matrix and the float column (at most one).

    Errors name the file, row and problem."""
    if not data or data.isspace():
        raise LobsterFormatError(f"{name}: file is empty")
    first = data[: data.find(b"\n")] if b"\n" in data else data
    n = len(first.split(b","))
    if ncols is not None and n != ncols:
        raise LobsterFormatError(f"{name}: row 1: expected {ncols} columns, found {n}")
    buf = np.frombuffer(data, dtype=np.uint8)
    nrows = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    out_int = np.empty((nrows, n), np.int64)
    out_float = np.empty(nrows if float_cols else 0, np.float64)
    got, status, bad_row, bad_col = _parse_numeric_csv(buf, n, float_cols[0] if float_cols else -1, out_int,
                                                       out_float)
    if status == 2:
        return _read_csv_pyarrow(name, data, n, float_cols)
    if status == 1 or got != nrows:
        problem = _locate_csv_problem(name, data, n, float_cols)
        raise LobsterFormatError(problem or f"{name}: row {bad_row + 1}: column {bad_col + 1}: malformed cell")
    return out_int, out_float


def _bad_row(name: str, bad: np.ndarray, problem: str) -> LobsterFormatError:
    i = int(np.flatnonzero(bad)[0])
    return LobsterFormatError(f"{name}: row {i + 1}: {problem(i) if callable(problem) else problem}")


def _validate_messages(name: str, t: np.ndarray, et: np.ndarray, size: np.ndarray, direction: np.ndarray) -> None:
    if not np.isfinite(t).all():
        raise _bad_row(name, ~np.isfinite(t), lambda i: f"time is not finite ({t[i]})")
    back = np.zeros(t.shape, bool)
    back[1:] = t[1:] < t[:-1]
    if back.any():
        raise _bad_row(name, back, lambda i: f"time goes backwards ({float(t[i])!r} after {float(t[i - 1])!r})")
    bad_type = ~np.isin(et, EVENT_TYPES)
    if bad_type.any():
        raise _bad_row(name, bad_type, lambda i: f"unknown event type {int(et[i])} (expected one of {EVENT_TYPES})")
    bad_dir = (direction != 1) & (direction != -1)
    if bad_dir.any():
        raise _bad_row(name, bad_dir, lambda i: f"direction must be -1 or 1, found {int(direction[i])}")
    bad_size = (size <= 0) & (et != HALT)
    if bad_size.any():
        raise _bad_row(name, bad_size, lambda i: f"size must be positive for event type {int(et[i])}, found "
                                                 f"{int(size[i])}")


_BOOK_PROBLEMS = {
    1: "dummy price of the other side (+9999999999 on the bid or -9999999999 on the ask)",
    2: "has a dummy price with non-zero size",
    3: "has a real price with non-positive size",
    4: "has a non-positive price",
    5: "ladder out of order",
    6: "crossed book",
}


@njit(cache=True)
def _split_book(mat, prices, sizes):
    """LOBSTER orderbook rows (ask price, ask size, bid price, bid size per level) -> (N, 2, L) arrays."""
    N, L = prices.shape[0], prices.shape[2]
    for r in range(N):
        for j in range(L):
            prices[r, 1, j] = mat[r, 4 * j]
            sizes[r, 1, j] = mat[r, 4 * j + 1]
            prices[r, 0, j] = mat[r, 4 * j + 2]
            sizes[r, 0, j] = mat[r, 4 * j + 3]


@njit(cache=True)
def _check_book(prices, sizes):
    """First problem of a (N, 2, L) book as (row, side, level, code); code 0 when none (see _BOOK_PROBLEMS)."""
    N, L = prices.shape[0], prices.shape[2]
    for r in range(N):
        for s in range(2):
            prev_real = True
            for j in range(L):
                p = prices[r, s, j]
                q = sizes[r, s, j]
                if (s == 0 and p == EMPTY_ASK) or (s == 1 and p == EMPTY_BID):
                    return r, s, j, 1
                real = p != EMPTY_ASK and p != EMPTY_BID
                if not real:
                    if q != 0:
                        return r, s, j, 2
                    prev_real = False
                    continue
                if q <= 0:
                    return r, s, j, 3
                if p <= 0:
                    return r, s, j, 4
                if j > 0 and (not prev_real or (s == 1 and p <= prices[r, s, j - 1]) or
                              (s == 0 and p >= prices[r, s, j - 1])):
                    return r, s, j - 1, 5
        b, a = prices[r, 0, 0], prices[r, 1, 0]
        if b != EMPTY_BID and a != EMPTY_ASK and b >= a:
            return r, 0, 0, 6
    return -1, -1, -1, 0


def validate_book(name: str, prices: np.ndarray, sizes: np.ndarray) -> None:
    """Check a (N, 2, L) book: dummies on their own side with size 0, real levels with positive size and price,
    ladders strictly monotone over real levels (dummies only after them), no crossed book. Raises
    LobsterFormatError naming the first bad row (1-based)."""
    r, s, j, code = _check_book(np.ascontiguousarray(prices, np.int64), np.ascontiguousarray(sizes, np.int64))
    if code == 0:
        return
    side = ("bid", "ask")[s]
    p, q = int(prices[r, s, j]), int(sizes[r, s, j])
    if code == 5:
        want = "increasing" if side == "ask" else "decreasing"
        problem = (f"{side} ladder out of order at levels {j + 1}-{j + 2} ({p}, {int(prices[r, s, j + 1])}); "
                   f"prices must be strictly {want} over real levels, dummies only after them")
    elif code == 6:
        problem = f"crossed book: best bid {int(prices[r, 0, 0])} >= best ask {int(prices[r, 1, 0])}"
    elif code == 2:
        problem = f"{side} level {j + 1} has a dummy price with non-zero size {q}"
    else:
        problem = f"{side} level {j + 1} (price {p}, size {q}) {_BOOK_PROBLEMS[code]}"
    raise LobsterFormatError(f"{name}: row {r + 1}: {problem}")


def parse_day(src_message: str, message_bytes: bytes, src_orderbook: str, orderbook_bytes: bytes,
              ticker: str, date: str, levels: int | None) -> LobsterDay:
    """Parse and validate the two files' bytes into a LobsterDay (no cache)."""
    msg, t = _read_csv(src_message, message_bytes, 6, (0,))
    ob, _ = _read_csv(src_orderbook, orderbook_bytes, None, ())
    ncols = ob.shape[1]
    if ncols % 4:
        raise LobsterFormatError(f"{src_orderbook}: row 1: {ncols} columns is not a multiple of 4 "
                                 "(ask price, ask size, bid price, bid size per level)")
    L = ncols // 4
    if levels is not None and levels != L:
        raise LobsterFormatError(f"{src_orderbook}: row 1: file name says {levels} levels but the file has {ncols} "
                                 f"columns = {L} levels")
    n_msg, n_ob = msg.shape[0], ob.shape[0]
    if n_msg != n_ob:
        raise LobsterFormatError(f"{src_orderbook}: row {min(n_msg, n_ob) + 1}: row-count mismatch: message file has "
                                 f"{n_msg} rows, orderbook file has {n_ob}")
    et, oid, size, price, direction = (msg[:, i] for i in range(1, 6))
    _validate_messages(src_message, t, et, size, direction)
    book_prices = np.empty((n_ob, 2, L), np.int64)
    book_sizes = np.empty((n_ob, 2, L), np.int64)
    _split_book(ob, book_prices, book_sizes)
    validate_book(src_orderbook, book_prices, book_sizes)
    return LobsterDay(
        ticker=ticker, date=date, levels=L, source=src_message,
        time=t, event_type=et, order_id=oid, size=size, price=price, direction=direction,
        book_prices=book_prices, book_sizes=book_sizes,
    )


def load_day(
    path: str | os.PathLike,
    orderbook_path: str | os.PathLike | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> LobsterDay:
    """Load one LOBSTER day from a message csv (its orderbook found by name), a directory or a LOBSTER .zip.

    With ``use_cache`` the parsed day is stored as parquet under ``cache_dir`` (default ``$ADVSIM_CACHE`` or
    ``~/.cache/advsim``), keyed by a blake2b hash of both files' bytes, so a second load skips parsing.
    A small memo maps (absolute path, size, mtime in ns) of the source files to that key, so loading unchanged
    files skips reading and hashing them too (a file rewritten with the same size within the same mtime
    would be missed: pass ``use_cache=False`` or clear the cache after editing files in place that fast).
    """
    from data_loaders import lobster_cache

    src = _resolve_source(path, orderbook_path)
    if not use_cache:
        mb, ob = src.read()
        return parse_day(src.message_name, mb, src.orderbook_name, ob, src.ticker, src.date, src.levels)
    stat_id = src.stat_id()
    key = lobster_cache.key_for_stat(stat_id, cache_dir)  # unchanged files: skip reading and hashing
    if key is not None:
        day = lobster_cache.read(key, cache_dir)
        if day is not None:
            return dataclasses.replace(day, source=src.message_name)
    mb, ob = src.read()
    key = lobster_cache.content_key(mb, ob)
    day = lobster_cache.read(key, cache_dir)
    if day is None:
        day = parse_day(src.message_name, mb, src.orderbook_name, ob, src.ticker, src.date, src.levels)
        lobster_cache.write(key, day, cache_dir)
    lobster_cache.remember_stat(stat_id, key, cache_dir)
    return dataclasses.replace(day, source=src.message_name)
