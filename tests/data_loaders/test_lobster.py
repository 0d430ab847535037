"""LOBSTER ingestion: parsing, every validation error class, zips, the parquet cache, day_stats, real files."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from data_loaders import lobster, lobster_cache
from data_loaders.lobster import (
    EMPTY_ASK,
    EMPTY_BID,
    LobsterFormatError,
    find_days,
    level_mask,
    load_day,
)
from data_loaders.lobster_stats import day_stats
from tests.conftest import shared_path

# --------------------------------------------------------------------------- an independent reference market


def simulate_day(seed: int = 0, n: int = 400, levels: int = 3, halts: bool = True):
    """A small order-level market kept as a dict of orders; returns (messages (n,6), top-L book rows (n, 4L)).

    Every message is written (also those deep in the book) and the orderbook row is the top L of the full
    book after it, built straight from the dict: an independent reference for the Numba rebuild.
    """
    rng = np.random.default_rng(seed)
    orders: dict[int, list] = {}  # id -> [side(+1 buy / -1 sell), price, size]
    next_id = 1
    t = 34200.0
    msgs, rows = [], []

    def top(side: int) -> list[tuple[int, int]]:
        agg: dict[int, int] = {}
        for s, p, q in orders.values():
            if s == side:
                agg[p] = agg.get(p, 0) + q
        return sorted(agg.items(), reverse=(side == 1))[:levels]

    def row() -> list[int]:
        bids, asks = top(1), top(-1)
        out = []
        for j in range(levels):
            ap, as_ = asks[j] if j < len(asks) else (EMPTY_ASK, 0)
            bp, bs = bids[j] if j < len(bids) else (EMPTY_BID, 0)
            out += [ap, as_, bp, bs]
        return out

    halted = False
    while len(msgs) < n:
        t += float(rng.exponential(0.05))
        bids, asks = top(1), top(-1)
        best_bid = bids[0][0] if bids else 1_000_000
        best_ask = asks[0][0] if asks else best_bid + 300
        u = rng.random()
        if halts and u < 0.01:
            msgs.append([t, 7, 0, 0, 1 if halted else -1, -1])
            halted = not halted
        elif u < 0.5 or not orders:
            side = 1 if rng.random() < 0.5 else -1
            off = 100 * int(rng.integers(0, 2 * levels + 2))
            price = best_ask - 100 - off if side == 1 else best_bid + 100 + off
            if (side == 1 and price >= best_ask) or (side == -1 and price <= best_bid):
                price = best_bid - off - 100 if side == 1 else best_ask + off + 100
            size = int(rng.integers(1, 5)) * 100
            orders[next_id] = [side, price, size]
            msgs.append([t, 1, next_id, size, price, side])
            next_id += 1
        elif u < 0.75:
            oid = int(rng.choice(list(orders)))
            side, price, size = orders[oid]
            if size > 100 and rng.random() < 0.3:
                cut = 100 * int(rng.integers(1, size // 100))
                orders[oid][2] -= cut
                msgs.append([t, 2, oid, cut, price, side])
            else:
                del orders[oid]
                msgs.append([t, 3, oid, size, price, side])
        elif u < 0.93:
            side = 1 if rng.random() < 0.5 else -1
            lv = top(side)
            if not lv:
                continue
            price = lv[0][0]
            oid = min(i for i, o in orders.items() if o[0] == side and o[1] == price)
            q = orders[oid][2]
            take = q if rng.random() < 0.6 else 100 * int(rng.integers(1, max(q // 100, 2)))
            take = min(take, q)
            orders[oid][2] -= take
            if orders[oid][2] == 0:
                del orders[oid]
            msgs.append([t, 4, oid, take, price, side])
        else:
            side = 1 if rng.random() < 0.5 else -1
            msgs.append([t, 5, 0, int(rng.integers(1, 300)), (best_bid + best_ask) // 2, side])
        rows.append(row())
    return np.array(msgs, dtype=object), np.array(rows, dtype=np.int64)


def _fmt_msg(m) -> str:
    return f"{m[0]:.9f},{int(m[1])},{int(m[2])},{int(m[3])},{int(m[4])},{int(m[5])}"


def write_day(folder: Path, msgs, rows, ticker: str = "TEST", date: str = "2012-06-21",
              levels: int | None = None) -> Path:
    """Write a LOBSTER pair with canonical names; returns the message file path."""
    L = rows.shape[1] // 4 if levels is None else levels
    folder.mkdir(parents=True, exist_ok=True)
    mpath = folder / f"{ticker}_{date}_34200000_57600000_message_{L}.csv"
    opath = folder / f"{ticker}_{date}_34200000_57600000_orderbook_{L}.csv"
    mpath.write_text("\n".join(_fmt_msg(m) for m in msgs) + "\n")
    opath.write_text("\n".join(",".join(str(int(v)) for v in r) for r in rows) + "\n")
    return mpath


@pytest.fixture(scope="module")
def sim():
    return simulate_day(seed=1, n=400, levels=3)


@pytest.fixture
def day_files(tmp_path, sim):
    return write_day(tmp_path / "day", *sim)


def _edit_line(path: Path, line: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _orderbook_of(mpath: Path) -> Path:
    return mpath.with_name(mpath.name.replace("_message_", "_orderbook_"))


# --------------------------------------------------------------------------- parsing


def test_constants_match_grid():
    from lobsim import grid

    assert (lobster.EMPTY_ASK, lobster.EMPTY_BID) == (grid.EMPTY_ASK, grid.EMPTY_BID)
    p = np.array([1, EMPTY_ASK, EMPTY_BID, 5])
    assert level_mask(p).tolist() == grid.level_mask(p).tolist() == [True, False, False, True]


def test_load_generated_day_matches_written_values(day_files, sim):
    msgs, rows = sim
    day = load_day(day_files, use_cache=False)
    assert (day.ticker, day.date, day.levels, day.n_rows) == ("TEST", "2012-06-21", 3, len(msgs))
    np.testing.assert_allclose(day.time, msgs[:, 0].astype(float), rtol=0, atol=1e-9)
    assert day.event_type.dtype == np.int8 and day.price.dtype == np.int64
    np.testing.assert_array_equal(day.order_id, msgs[:, 2].astype(np.int64))
    ob = rows.reshape(len(rows), 3, 4)
    np.testing.assert_array_equal(day.book_prices[:, 1, :], ob[:, :, 0])  # ask price
    np.testing.assert_array_equal(day.book_sizes[:, 1, :], ob[:, :, 1])
    np.testing.assert_array_equal(day.book_prices[:, 0, :], ob[:, :, 2])  # bid price
    np.testing.assert_array_equal(day.book_sizes[:, 0, :], ob[:, :, 3])
    assert not day.book_prices.flags.writeable


def test_dir_orderbook_and_explicit_pair_load_the_same(day_files):
    a = load_day(day_files, use_cache=False)
    b = load_day(day_files.parent, use_cache=False)
    c = load_day(_orderbook_of(day_files), use_cache=False)  # the orderbook name finds its message file
    d = load_day(day_files, _orderbook_of(day_files), use_cache=False)
    for other in (b, c, d):
        np.testing.assert_array_equal(a.book_prices, other.book_prices)
        np.testing.assert_array_equal(a.time, other.time)


def test_halts_are_surfaced(day_files, sim):
    msgs, _ = sim
    day = load_day(day_files, use_cache=False)
    n_halts = int((msgs[:, 1] == 7).sum())
    assert n_halts > 0
    assert day.halt_rows.size == n_halts
    assert f"halts (type 7): {n_halts}" in day.summary()
    st = day_stats(day)
    assert st["halts"] == n_halts and len(st["halt_times"]) == n_halts


def test_zip_is_read_in_memory_and_equals_csv(tmp_path, day_files):
    z = tmp_path / "LOBSTER_SampleFile_TEST_2012-06-21_3.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(day_files, day_files.name)
        zf.write(_orderbook_of(day_files), _orderbook_of(day_files).name)
        zf.writestr("LOBSTER_SampleFiles_ReadMe.txt", "readme")
    a, b = load_day(day_files, use_cache=False), load_day(z, use_cache=False)
    np.testing.assert_array_equal(a.book_sizes, b.book_sizes)
    assert b.source.startswith(str(z)) and "!" in b.source
    assert [p.ticker for p in find_days(z)] == ["TEST"]


def test_directory_with_two_pairs_lists_them(tmp_path, sim):
    msgs, rows = sim
    write_day(tmp_path, msgs, rows, ticker="AAA")
    write_day(tmp_path, msgs, rows, ticker="BBB")
    assert [p.ticker for p in find_days(tmp_path)] == ["AAA", "BBB"]
    with pytest.raises(LobsterFormatError, match=r"2 LOBSTER pairs.*AAA.*BBB"):
        load_day(tmp_path, use_cache=False)


# --------------------------------------------------------------------------- one test per error class


def test_error_wrong_column_count(day_files):
    _edit_line(day_files, 7, "34200.5,1,99,100,1000000")
    with pytest.raises(LobsterFormatError, match=rf"{day_files.name}: row 7: expected 6 columns, found 5"):
        load_day(day_files, use_cache=False)


def test_error_orderbook_columns_disagree_with_levels(tmp_path, sim):
    msgs, rows = sim
    m = write_day(tmp_path, msgs, rows, levels=5)  # name says 5 levels, the file has 12 columns = 3 levels
    with pytest.raises(LobsterFormatError, match=r"orderbook_5.csv: row 1: file name says 5 levels.*12 columns"):
        load_day(m, use_cache=False)
    ob = _orderbook_of(m)
    ob.write_text("\n".join(",".join(str(v) for v in r[:-1]) for r in rows) + "\n")  # 11 columns
    with pytest.raises(LobsterFormatError, match=r"row 1: 11 columns is not a multiple of 4"):
        load_day(m, use_cache=False)


def test_error_non_numeric_cell(day_files):
    _edit_line(day_files, 12, "34200.6,1,99,1x0,1000000,1")
    with pytest.raises(LobsterFormatError, match=r"row 12: column 4 is not an integer: '1x0'"):
        load_day(day_files, use_cache=False)


def test_error_nan_or_empty_cell(day_files):
    ob = _orderbook_of(day_files)
    first = ob.read_text().splitlines()[4].split(",")
    first[1] = "NaN"
    _edit_line(ob, 5, ",".join(first))
    with pytest.raises(LobsterFormatError, match=rf"{ob.name}: row 5: column 2 is NaN"):
        load_day(day_files, use_cache=False)
    first[1] = ""
    _edit_line(ob, 5, ",".join(first))
    with pytest.raises(LobsterFormatError, match=r"row 5: column 2 is empty"):
        load_day(day_files, use_cache=False)


def test_error_row_count_mismatch(day_files):
    lines = day_files.read_text().splitlines()
    day_files.write_text("\n".join(lines[:-3]) + "\n")
    with pytest.raises(LobsterFormatError,
                       match=r"row-count mismatch: message file has 397 rows, orderbook file has 400"):
        load_day(day_files, use_cache=False)


def test_error_time_goes_backwards(day_files):
    lines = day_files.read_text().splitlines()
    cells = lines[19].split(",")
    cells[0] = "34100.0"
    _edit_line(day_files, 20, ",".join(cells))
    with pytest.raises(LobsterFormatError, match=rf"{day_files.name}: row 20: time goes backwards"):
        load_day(day_files, use_cache=False)


def test_error_unknown_event_type(day_files):
    cells = day_files.read_text().splitlines()[29].split(",")
    cells[1] = "6"
    _edit_line(day_files, 30, ",".join(cells))
    with pytest.raises(LobsterFormatError, match=r"row 30: unknown event type 6"):
        load_day(day_files, use_cache=False)


def _ob_row(ob: Path, line: int) -> list[int]:
    return [int(v) for v in ob.read_text().splitlines()[line - 1].split(",")]


def test_error_crossed_book(day_files):
    ob = _orderbook_of(day_files)
    line = next(i for i in range(40, 400)
                if EMPTY_BID not in _ob_row(ob, i)[:4] and EMPTY_ASK not in _ob_row(ob, i)[:4])
    r = _ob_row(ob, line)
    r[2] = r[0]  # best bid = best ask
    _edit_line(ob, line, ",".join(map(str, r)))
    with pytest.raises(LobsterFormatError, match=rf"{ob.name}: row {line}: crossed book: best bid"):
        load_day(day_files, use_cache=False)


def test_error_ladder_out_of_order(day_files):
    ob = _orderbook_of(day_files)
    line = next(i for i in range(50, 400) if all(v not in (EMPTY_ASK, EMPTY_BID) for v in _ob_row(ob, i)))
    r = _ob_row(ob, line)
    r[0], r[4] = r[4], r[0]  # swap ask prices of levels 1 and 2
    _edit_line(ob, line, ",".join(map(str, r)))
    with pytest.raises(LobsterFormatError, match=rf"row {line}: ask ladder out of order at levels 1-2"):
        load_day(day_files, use_cache=False)


def test_error_dummy_price_with_size(day_files):
    ob = _orderbook_of(day_files)
    r = _ob_row(ob, 3)
    r[-2], r[-1] = EMPTY_BID, 100  # deepest bid: dummy price, non-zero size
    _edit_line(ob, 3, ",".join(map(str, r)))
    with pytest.raises(LobsterFormatError, match=r"row 3: bid level 3 has a dummy price with non-zero size 100"):
        load_day(day_files, use_cache=False)


def test_error_bad_zip_member_path(tmp_path, day_files):
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.write(day_files, "../" + day_files.name)
        zf.write(_orderbook_of(day_files), _orderbook_of(day_files).name)
    with pytest.raises(LobsterFormatError, match=r"evil.zip: member '\.\./TEST.*unsafe path"):
        load_day(z, use_cache=False)
    z2 = tmp_path / "abs.zip"
    with zipfile.ZipFile(z2, "w") as zf:
        zf.writestr(zipfile.ZipInfo("/etc/" + day_files.name), day_files.read_bytes())
    with pytest.raises(LobsterFormatError, match="unsafe path"):
        find_days(z2)


def test_error_name_without_convention_needs_orderbook(tmp_path, day_files):
    odd = tmp_path / "messages.csv"
    odd.write_bytes(day_files.read_bytes())
    with pytest.raises(LobsterFormatError, match="does not follow the LOBSTER convention"):
        load_day(odd, use_cache=False)
    day = load_day(odd, _orderbook_of(day_files), use_cache=False)  # explicit pair: levels from the columns
    assert day.levels == 3 and day.ticker == "messages"


# --------------------------------------------------------------------------- cache


def test_cache_second_load_skips_parsing(tmp_path, day_files, monkeypatch):
    cache = tmp_path / "cache"
    first = load_day(day_files, cache_dir=cache)
    files = list((cache / "lobster").glob("*.parquet"))
    assert len(files) == 1 and not list((cache / "lobster").glob("*.tmp"))

    def no_parse(*a, **k):
        raise AssertionError("parsed again although cached")

    monkeypatch.setattr(lobster, "parse_day", no_parse)
    second = load_day(day_files, cache_dir=cache)
    for f in ("time", "event_type", "order_id", "size", "price", "direction", "book_prices", "book_sizes"):
        a, b = getattr(first, f), getattr(second, f)
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert (second.ticker, second.date, second.levels) == (first.ticker, first.date, first.levels)
    monkeypatch.undo()
    # a changed file (same name, one digit of one size) is a new key: parsed again, a second entry
    cells = day_files.read_text().splitlines()[0].split(",")
    cells[3] = str(int(cells[3]) + 1)
    _edit_line(day_files, 1, ",".join(cells))
    third = load_day(day_files, cache_dir=cache)
    assert third.size[0] == first.size[0] + 1
    assert len(list((cache / "lobster").glob("*.parquet"))) == 2
    assert lobster_cache.content_key(b"a", b"bc") != lobster_cache.content_key(b"ab", b"c")


def test_cache_unchanged_files_are_not_read_again(tmp_path, day_files, monkeypatch):
    cache = tmp_path / "cache"
    first = load_day(day_files, cache_dir=cache)
    copy = write_day(tmp_path / "copy", *simulate_day(seed=1, n=400, levels=3))  # same bytes, other place
    monkeypatch.setattr(lobster, "parse_day", lambda *a, **k: pytest.fail("parsed although the content is cached"))
    from_copy = load_day(copy, cache_dir=cache)  # new path: read + hashed, found by content
    assert from_copy.source == str(copy)
    np.testing.assert_array_equal(first.book_sizes, from_copy.book_sizes)
    monkeypatch.setattr(lobster._Source, "read", lambda self: pytest.fail("read although unchanged"))
    again = load_day(day_files, cache_dir=cache)  # unchanged path, size and mtime: neither read nor hashed
    np.testing.assert_array_equal(first.book_prices, again.book_prices)


def test_cache_env_default_and_corrupt_entry(tmp_path, day_files, monkeypatch):
    monkeypatch.setenv("ADVSIM_CACHE", str(tmp_path / "envcache"))
    assert lobster_cache.default_cache_dir() == tmp_path / "envcache"
    day = load_day(day_files)
    (entry,) = (tmp_path / "envcache" / "lobster").glob("*.parquet")
    entry.write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="unreadable cache entry"):
        again = load_day(day_files)
    np.testing.assert_array_equal(day.book_prices, again.book_prices)


# --------------------------------------------------------------------------- statistics


def test_day_stats_against_plain_loops(day_files):
    day = load_day(day_files, use_cache=False)
    st = day_stats(day)
    t = day.time
    num_s = den = num_db = 0.0
    for k in range(day.n_rows - 1):
        w = t[k + 1] - t[k]
        bp, ap = day.book_prices[k, 0, 0], day.book_prices[k, 1, 0]
        if bp != EMPTY_BID and ap != EMPTY_ASK:
            num_s += (ap - bp) / 1e4 * w
            den += w
        num_db += sum(int(s) for p, s in zip(day.book_prices[k, 0], day.book_sizes[k, 0]) if p != EMPTY_BID) * w
    assert st["mean_spread"] == pytest.approx(num_s / den, rel=1e-12)
    assert st["mean_depth_bid"] == pytest.approx(num_db / (t[-1] - t[0]), rel=1e-12)
    n_ex = sum(1 for e in day.event_type if e in (4, 5))
    assert st["executions"] == n_ex
    assert st["executions_per_hour"] == pytest.approx(n_ex / ((t[-1] - t[0]) / 3600))
    assert st["rows"] == day.n_rows and np.isfinite(st["swa_vol_1s"])


# --------------------------------------------------------------------------- real files


def test_real_goog_l10_zip_equals_unpacked(tmp_path):
    folder = shared_path("lobster-goog-l10-2012-06-21")
    z = shared_path("lobster-sample-2012-06-21-zips", "LOBSTER_SampleFile_GOOG_2012-06-21_10.zip")
    a = load_day(folder, cache_dir=tmp_path)
    b = load_day(z, use_cache=False)
    assert (a.ticker, a.date, a.levels, a.n_rows) == ("GOOG", "2012-06-21", 10, 147_916)
    assert a.time[0] == 34200.015105074 and a.time[-1] == 57599.871751084  # values pinned in SOURCE.md
    np.testing.assert_array_equal(a.book_prices, b.book_prices)
    np.testing.assert_array_equal(a.book_sizes, b.book_sizes)
    assert level_mask(a.book_prices).all()  # SOURCE.md: no dummy levels in this file
    c = load_day(folder, cache_dir=tmp_path)  # from the cache
    np.testing.assert_array_equal(a.book_sizes, c.book_sizes)


@pytest.mark.parametrize("folder, rows, levels", [
    ("lobster-aapl-l10-2012-06-21-first999", 999, 10),
    ("lobster-msft-l50-2012-06-21-1000rows", 1000, 50),
    ("lobster-amzn-l1-2012-06-21", 57_515, 1),
])
def test_real_small_files(folder, rows, levels):
    day = load_day(shared_path(folder), use_cache=False)
    assert (day.n_rows, day.levels) == (rows, levels)
    assert day.halt_rows.size == 0


def test_real_zip_listing():
    z = shared_path("lobster-sample-2012-06-21-zips", "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip")
    (pair,) = find_days(z)
    assert (pair.ticker, pair.levels, pair.archive) == ("AAPL", 1, str(z))
    with zipfile.ZipFile(z) as zf:
        assert pair.message in zf.namelist()


# --------------------------------------------------------------------------- CLI


def test_cli_inspect_check_ingest(tmp_path, day_files):
    import json

    from click.testing import CliRunner

    from cli import main

    runner = CliRunner()
    cache = str(tmp_path / "c")
    res = runner.invoke(main, ["data", "inspect", str(day_files), "--json", "--cache-dir", cache])
    assert res.exit_code == 0, res.output
    st = json.loads(res.output)
    assert st["rows"] == 400 and st["levels"] == 3
    res = runner.invoke(main, ["data", "inspect", str(day_files), "--levels-shown", "2", "--cache-dir", cache])
    assert res.exit_code == 0 and "level  2: mean bid size" in res.output
    res = runner.invoke(main, ["data", "check", str(day_files.parent), "--no-cache"])
    assert res.exit_code == 0 and "mismatches: 0" in res.output
    res = runner.invoke(main, ["data", "ingest", str(day_files.parent), "--cache-dir", cache])
    assert res.exit_code == 0 and "cached 1 of 1 day(s), 400 rows" in res.output
    ob = _orderbook_of(day_files)
    r = _ob_row(ob, 100)
    r[1] += 1  # ask size of level 1 on row 100 no longer follows from the messages
    _edit_line(ob, 100, ",".join(map(str, r)))
    res = runner.invoke(main, ["data", "check", str(day_files), "--no-cache"])
    assert res.exit_code == 1 and "row 100: rebuilt ask side differs" in res.output
    res = runner.invoke(main, ["data", "inspect", str(tmp_path / "nothing.zip")])
    assert res.exit_code != 0
