"""Multi-day data: folders, several folders, globs and zips as one dataset; `data inspect` / `data ingest` on them."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main
from data_loaders.lobster import load_day
from data_loaders.synthetic import write_days
from lobsim.dataset import Market, expand_day_paths

HOURS = 0.05  # three minutes per day: fast, and long enough for a 5 s window


@pytest.fixture(scope="module")
def days3(tmp_path_factory) -> Path:
    """A folder with three days of the project's own synthetic output (csv pairs)."""
    out = tmp_path_factory.mktemp("days3")
    write_days(out, "thick", days=3, hours=HOURS, seed=1)
    return out


@pytest.fixture(scope="module")
def zips2(tmp_path_factory) -> Path:
    """A folder with two zipped days of another ticker, later dates."""
    out = tmp_path_factory.mktemp("zips2")
    write_days(out, "thin", days=2, hours=HOURS, seed=2, zip=True, start_date="2019-09-10")
    return out


def _run(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_inspect_folder_of_three_days_lists_all(days3: Path, tmp_path: Path) -> None:
    res = _run(["data", "inspect", str(days3), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    day_lines = [ln for ln in lines if ln.startswith("THICK")]
    assert [ln.split()[1] for ln in day_lines] == ["2019-09-03", "2019-09-04", "2019-09-05"]
    # Totals against the days loaded one by one (independent of the table code).
    days = [load_day(p, use_cache=False) for p in sorted(days3.glob("*_message_*.csv"))]
    total = lines[-1]
    assert total.startswith("total: 3 day(s), 1 ticker(s), 3 date(s)")
    assert f"{sum(d.n_rows for d in days):,} rows" in total
    n_exec = sum(int(((d.event_type == 4) | (d.event_type == 5)).sum()) for d in days)
    assert f"{n_exec:,} executions" in total
    for d, ln in zip(days, day_lines):
        assert f"{d.n_rows:,}" in ln.split()


def test_inspect_json_many_days(days3: Path, zips2: Path, tmp_path: Path) -> None:
    res = _run(["data", "inspect", str(days3), str(zips2), "--json", "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert [(d["ticker"], d["date"]) for d in doc["days"]] == [
        ("THICK", "2019-09-03"), ("THICK", "2019-09-04"), ("THICK", "2019-09-05"),
        ("THIN", "2019-09-10"), ("THIN", "2019-09-11")]
    t = doc["totals"]
    assert (t["days"], t["tickers"], t["dates"], t["failed"]) == (5, 2, 5, 0)
    assert t["rows"] == sum(d["rows"] for d in doc["days"])


def test_inspect_one_day_keeps_the_detailed_summary(days3: Path, tmp_path: Path) -> None:
    one = tmp_path / "one"
    one.mkdir()
    for f in sorted(days3.iterdir())[:2]:  # the first message/orderbook pair (sorted names pair up)
        shutil.copy(f, one / f.name)
    res = _run(["data", "inspect", str(one), "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 0, res.output
    assert "SWA volatility" in res.stdout and "total:" not in res.stdout


def test_bad_day_is_listed_and_the_others_still_inspected(days3: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(days3, bad)
    msg = sorted(bad.glob("*2019-09-04*_message_*.csv"))[0]
    lines = msg.read_text().splitlines()
    lines[4] = lines[4].replace(",", ",x", 1)
    msg.write_text("\n".join(lines) + "\n")
    res = _run(["data", "inspect", str(bad), "--no-cache"])
    assert res.exit_code == 1
    assert sum(ln.startswith("THICK") for ln in res.stdout.splitlines()) == 2
    assert f"{msg.name}: row 5" in res.stdout and "1 day(s) FAILED" in res.stdout
    assert "Traceback" not in res.output
    ing = _run(["data", "ingest", str(bad), "--cache-dir", str(tmp_path / "c"), "--threads", "1"])
    assert ing.exit_code == 1 and "cached 2 of 3 day(s)" in ing.stdout
    assert len(list((tmp_path / "c" / "lobster").glob("*.parquet"))) == 2


def test_ingest_caches_every_day_of_several_folders(days3: Path, zips2: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    res = _run(["data", "ingest", str(days3), str(zips2), "--cache-dir", str(cache), "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "cached 5 of 5 day(s)" in res.stdout
    assert res.stderr.count("ingest: 100%") <= 1  # one bar, not one per folder or day
    assert len(list((cache / "lobster").glob("*.parquet"))) == 5


def test_expand_day_paths_globs_folders_zips_and_order(days3: Path, zips2: Path, tmp_path: Path) -> None:
    all5 = expand_day_paths([zips2, days3])  # folders keep the order given, days inside sorted by date
    assert [Path(p).suffix for p in all5] == [".zip", ".zip", ".csv", ".csv", ".csv"]
    # A glob over several folders: one dataset sorted by (date, ticker); a day named twice is kept once.
    root = tmp_path / "root"
    shutil.copytree(zips2, root / "a")
    shutil.copytree(days3, root / "b")
    g = expand_day_paths([str(root / "*"), str(root / "b")])
    assert [Path(p).parent.name for p in g] == ["b", "b", "b", "a", "a"]  # THICK days come first by date
    assert g[:3] == expand_day_paths([root / "b"])
    msgs = expand_day_paths([str(days3 / "*_message_*.csv")])
    assert [Path(p).name[6:16] for p in msgs] == ["2019-09-03", "2019-09-04", "2019-09-05"]
    assert expand_day_paths([str(days3 / "*.csv")]) == msgs  # orderbook files are not days of their own
    z = sorted(zips2.glob("*.zip"))
    assert expand_day_paths([z[1], z[0]]) == [str(z[1]), str(z[0])]  # explicit files keep their order


def test_expand_day_paths_errors(tmp_path: Path, days3: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        expand_day_paths([tmp_path / "nope"])
    with pytest.raises(FileNotFoundError, match="no file or folder matches"):
        expand_day_paths([str(tmp_path / "nope*")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no LOBSTER day found"):
        expand_day_paths([tmp_path / "empty"])
    two = tmp_path / "two" / "LOBSTER_two.zip"
    two.parent.mkdir()
    with zipfile.ZipFile(two, "w") as zf:
        for f in sorted(days3.iterdir())[:4]:
            zf.write(f, f.name)
    with pytest.raises(ValueError, match="holds 2 LOBSTER days"):
        expand_day_paths([two.parent])
    res = _run(["data", "inspect", str(tmp_path / "nope*")])
    assert res.exit_code == 1 and "no file or folder matches" in res.output and "Traceback" not in res.output


def test_market_from_folder_splits_by_day_or_time(days3: Path, zips2: Path) -> None:
    from lobsim.dataset import FeatureConfig

    f = FeatureConfig(dt=0.1, window_s=5.0, horizon_s=2.0)
    m3 = Market.from_paths([days3], dt=0.1, features=f)
    assert (len(m3.books), m3.split, m3.train_days, m3.test_days) == (3, "day", [0, 1], [2])
    assert [b.date for b in m3.books] == ["2019-09-03", "2019-09-04", "2019-09-05"]
    z1 = zips2 / sorted(p.name for p in zips2.glob("*.zip"))[0]
    one = Path(str(z1.parent) + "_one")
    one.mkdir(exist_ok=True)
    shutil.copy(z1, one / z1.name)
    m1 = Market.from_paths([one], dt=0.1, features=f)  # a folder holding one zipped day: split by time
    assert (len(m1.books), m1.split, m1.books[0].ticker) == (1, "time", "THIN")
