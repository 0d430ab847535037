"""Every expected failure of the CLI is ONE line on stderr, exit code != 0, no traceback, and no new or changed
files in the folders the command would write (issue 19). Plus: --debug shows the traceback, resume says its
step and reuses its data, a moved run still evaluates, a failed attack leaves a marked run the next call redoes,
and a vision evaluation of another setting never replaces an earlier one.

The runs are made once per module through the CLI at a tiny size (2 synthetic days x 6 min, 0.1 s grid, 20 s
windows, a few training steps).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli import main

TINY = ["--dt", "0.1", "--window", "20", "--horizon", "5", "--steps", "4", "--batch", "16", "--eval-n", "40",
        "--threads", "1", "--device", "cpu"]
SYNTH = ["--days", "2", "--hours", "0.1", "--threads", "1"]
_BAR = re.compile(r"\d+%\||\|\s*\d+/\d+ \[|it/s\]|s/it\]")


def run_cli(args: list[str], **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


def message_lines(stderr: str) -> list[str]:
    """stderr without progress bars (tqdm redraws with carriage returns)."""
    return [ln for ln in re.split(r"[\r\n]+", stderr) if ln.strip() and not _BAR.search(ln)]


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every file and folder under ``folders``: size, mtime and content hash (absent folders are empty)."""
    out: dict[str, tuple] = {}
    for folder in folders:
        out[str(folder)] = (folder.exists(),)
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                st = p.stat()
                digest = hashlib.blake2b(p.read_bytes(), digest_size=8).hexdigest() if p.is_file() else "dir"
                out[str(p)] = (st.st_size, st.st_mtime_ns, digest)
    return out


def assert_one_line_error(res, before: dict, *folders: Path, code: int | None = None) -> str:
    """The contract of issue 19 for an expected failure; returns the error line."""
    assert "Traceback" not in res.output and "Traceback" not in (res.stderr or "")
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code != 0 if code is None else res.exit_code == code, (res.exit_code, res.output)
    lines = message_lines(res.stderr)
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert "np.float" not in lines[0] and "np.int" not in lines[0]
    assert snapshot(*folders) == before, "the failed command changed files"
    return lines[0]


@pytest.fixture(autouse=True, scope="module")
def _private_cache(tmp_path_factory):
    """The parquet cache of the LOBSTER loader lives in the test's temporary folder, not in ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADVSIM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory, _private_cache):
    """Synthetic days and tiny runs made through the CLI: models on one market and on other grids / markets."""
    root = tmp_path_factory.mktemp("world")
    w = {"root": root}

    def ok(args):
        res = run_cli(args)
        assert res.exit_code == 0, res.output
        return res

    ok(["lob", "synth", "--market", "thick", *SYNTH, "--out", root / "data"])
    ok(["lob", "synth", "--market", "thick", *SYNTH, "--seed", "1", "--out", root / "data_seed1"])
    for name, extra in {"mlp": ["--model", "mlp"], "lin": ["--model", "linear"],
                        "grid": ["--model", "linear", "--dt", "0.05"],
                        "window": ["--model", "linear", "--window", "10"]}.items():
        ok(["lob", "train", "--data", root / "data", *TINY, *extra, "--out", root / name])
        w[name] = root / name
    ok(["lob", "train", "--data", root / "data_seed1", *TINY, "--model", "linear", "--out", root / "other_market"])
    w["other_market"] = root / "other_market"
    ok(["vision", "train", "--dataset", "digits", "--epochs", "1", "--batch-size", "64", "--n-test", "30",
        "--optimizer", "adam", "--lr-max", "1e-3", "--device", "cpu", "--quiet", "--threads", "1",
        "--out", root / "vis"])
    w["vis"] = root / "vis"
    day = sorted((root / "data").glob("*_message_10.csv"))[0]
    w["day_msg"], w["day_ob"] = day, Path(str(day).replace("_message_", "_orderbook_"))
    return w


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def day_zip(w, path: Path, compression: int = zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.write(w["day_ob"], w["day_ob"].name)
        zf.write(w["day_msg"], w["day_msg"].name)
    return path


def flip_member_byte(path: Path, offset_in_member: int = 200) -> None:
    """Corrupt the first member's data (its CRC no longer matches) without touching the zip's directory."""
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + offset_in_member] ^= 0x5A
    path.write_bytes(bytes(data))


# ---- the bad inputs -------------------------------------------------------------------------------------------


@dataclass
class Case:
    args: list
    watch: list[Path]
    expect: list[str] = field(default_factory=list)  # substrings of the error output
    forbid: list[str] = field(default_factory=list)
    code: int | None = None


def _weights(kind):
    def make(w, tmp):
        run = copy_run(w["mlp"], tmp / f"w_{kind}")
        f = run / "weights.safetensors"
        if kind == "pickle":
            torch.save({"w": torch.zeros(3)}, f)
        elif kind == "random":
            f.write_bytes(bytes(range(256)) * 8)
        elif kind == "empty":
            f.write_bytes(b"")
        else:
            f.unlink()
        expect = {"pickle": "never unpickles", "random": "not a safetensors file", "empty": "empty file",
                  "missing": "no such weights file"}[kind]
        return Case(["lob", "evaluate", run, "--n", "10", "--threads", "1"], [run], [str(f), expect])
    return make


def _bad_crc(command, compression):
    def make(w, tmp):
        folder = tmp / "zips"
        folder.mkdir()
        z = day_zip(w, folder / "LOBSTER_SampleFile_THICK_2019-09-03_10.zip", compression)
        flip_member_byte(z)
        cache = tmp / "cache"
        args = ["data", command, z, "--cache-dir", cache] + (["--no-cache"] if command == "inspect" else [])
        return Case(args, [folder, cache], [str(z), "corrupt zip archive"])
    return make


def _truncated(command):
    def make(w, tmp):
        folder = tmp / "zips"
        folder.mkdir()
        z = day_zip(w, folder / "LOBSTER_SampleFile_THICK_2019-09-03_10.zip", zipfile.ZIP_DEFLATED)
        z.write_bytes(z.read_bytes()[:5000])
        cache = tmp / "cache"
        return Case(["data", command, z, "--cache-dir", cache], [folder, cache],
                    [str(z), "truncated or corrupt"], ["orderbook_path"])
    return make


def _odd_name(w, tmp):
    f = tmp / "in" / "my_day.csv"
    f.parent.mkdir()
    shutil.copy(w["day_msg"], f)
    return Case(["data", "inspect", f, "--no-cache"], [f.parent], ["--orderbook"], ["orderbook_path"])


def _time_backwards(w, tmp):
    folder = tmp / "in"
    folder.mkdir()
    lines = w["day_msg"].read_text().splitlines()
    t2 = float(lines[2].split(",")[0])
    lines[3] = ",".join([f"{t2 - 0.5:.9f}"] + lines[3].split(",")[1:])
    (folder / w["day_msg"].name).write_text("\n".join(lines) + "\n")
    shutil.copy(w["day_ob"], folder / w["day_ob"].name)
    return Case(["data", "inspect", folder / w["day_msg"].name, "--no-cache"], [folder],
                ["row 4", "time goes backwards"], ["np.float64"])


def _table_duplicates(w, tmp):
    twin = copy_run(w["mlp"], tmp / "mlp_again")
    out = tmp / "table"
    return Case(["lob", "table", w["mlp"], twin, "--out", out], [out], ["both fill THICK / MLP"])


def _attack_over_finished(w, tmp):
    out = tmp / "done"
    out.mkdir()
    (out / "config.json").write_text("{}\n")
    (out / "metrics.json").write_text("{}\n")
    return Case(["lob", "attack", "random", "--model", w["mlp"], "--n", "4", "--out", out, "--threads", "1"],
                [out], ["--overwrite"], ["pass overwrite"])


def _victim(name, what):
    def make(w, tmp):
        out = tmp / "attack"
        return Case(["lob", "attack", "capital", "--model", w["mlp"], "--victims", w[name], "--n", "4",
                     "--max-iter", "3", "--out", out, "--threads", "1", "--device", "cpu"],
                    [out, w["mlp"], w[name]], [what, "--victims"])
    return make


def _config(kind):
    def make(w, tmp):
        run = copy_run(w["mlp"], tmp / "run")
        if kind == "missing":
            (run / "config.json").unlink()
        else:
            (run / "config.json").write_text('{"model": {"kind": "mlp"')
        return Case(["lob", "evaluate", run, "--n", "10", "--threads", "1"], [run],
                    ["config.json", "missing" if kind == "missing" else "not valid JSON"])
    return make


def _data_moved(w, tmp):
    data = tmp / "mydata"
    shutil.copytree(w["root"] / "data", data)
    run = tmp / "run"
    res = run_cli(["lob", "train", "--data", data, *TINY, "--model", "linear", "--out", run])
    assert res.exit_code == 0, res.output
    data.rename(tmp / "elsewhere")
    return Case(["lob", "evaluate", run, "--n", "10", "--threads", "1"], [run], ["data has moved", "--data"])


def _option(args, expect):
    def make(w, tmp):
        out = tmp / "out"
        full = [a if a != "RUN" else w["vis"] for a in args]
        full = [a if a != "MODEL" else w["mlp"] for a in full]
        return Case(full + (["--out", out] if "--out" in expect or args[1] in ("train", "attack") else []),
                    [out, w["vis"], w["mlp"]], [expect])
    return make


def _resume_other_config(w, tmp):
    run = tmp / "run"
    first = run_cli(["lob", "train", "--data", w["root"] / "data", *TINY, "--model", "linear", "--out", run])
    assert first.exit_code == 0, first.output
    return Case(["lob", "train", "--data", w["root"] / "data", *TINY, "--model", "linear", "--lr", "0.5",
                 "--out", run], [run], ["different config", "--fresh"])


def _report_incomplete(w, tmp):
    run = tmp / "half"
    run.mkdir()
    (run / "INCOMPLETE").write_text("x")
    (run / "config.json").write_text("{}")
    out = tmp / "rep"
    return Case(["lob", "report", run, "--out", out], [run, out], ["INCOMPLETE"])


def _vision_pickle(w, tmp):
    run = copy_run(w["vis"], tmp / "vis")
    torch.save({"w": torch.zeros(2)}, run / "weights.safetensors")
    return Case(["vision", "evaluate", run, "--n", "5", "--steps", "1", "--restarts", "1", "--device", "cpu",
                 "--threads", "1", "--quiet"], [run], ["never unpickles"])


CASES = {
    "weights-pickle": _weights("pickle"),
    "weights-random-bytes": _weights("random"),
    "weights-empty": _weights("empty"),
    "weights-missing": _weights("missing"),
    "zip-bad-crc-inspect": _bad_crc("inspect", zipfile.ZIP_STORED),
    "zip-bad-crc-ingest": _bad_crc("ingest", zipfile.ZIP_STORED),
    "zip-bad-deflate-inspect": _bad_crc("inspect", zipfile.ZIP_DEFLATED),
    "zip-truncated-inspect": _truncated("inspect"),
    "zip-truncated-ingest": _truncated("ingest"),
    "csv-name-without-orderbook": _odd_name,
    "csv-time-backwards-no-numpy-repr": _time_backwards,
    "table-duplicate-runs": _table_duplicates,
    "attack-over-finished-run": _attack_over_finished,
    "victim-other-grid": _victim("grid", "grid step"),
    "victim-other-window": _victim("window", "input window"),
    "victim-other-market": _victim("other_market", "market"),
    "run-config-missing": _config("missing"),
    "run-config-corrupt": _config("corrupt"),
    "run-data-moved": _data_moved,
    "vision-evaluate-n-0": _option(["vision", "evaluate", "RUN", "--n", "0"], "--n"),
    "vision-evaluate-steps-0": _option(["vision", "evaluate", "RUN", "--steps", "0"], "--steps"),
    "vision-evaluate-negative-eps": _option(["vision", "evaluate", "RUN", "--eps", "-0.1"], "--eps"),
    "vision-train-epochs-0": _option(["vision", "train", "--epochs", "0"], "--epochs"),
    "vision-evaluate-pickled-weights": _vision_pickle,
    "attack-negative-budget": _option(["lob", "attack", "capital", "--model", "MODEL", "--budget", "-5"], "--budget"),
    "attack-bad-budgets": _option(["lob", "attack", "capital", "--model", "MODEL", "--budgets", "1e4,lots"],
                                  "budgets"),
    "train-resume-other-config": _resume_other_config,
    "report-incomplete-run": _report_incomplete,
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(world, tmp_path, name):
    case = CASES[name](world, tmp_path)
    before = snapshot(*case.watch)
    res = run_cli(case.args)
    line = assert_one_line_error(res, before, *case.watch, code=case.code)
    for text in case.expect:
        assert text in res.output, (text, line)
    for text in case.forbid:
        assert text not in res.output, (text, line)


def test_ctrl_c_during_synth_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    import data_loaders.synthetic as synthetic

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(synthetic, "simulate_day", interrupted)
    out = tmp_path / "days"
    out.mkdir()
    before = snapshot(out)
    res = run_cli(["lob", "synth", *SYNTH, "--out", out])
    line = assert_one_line_error(res, before, out, code=130)
    assert "interrupted (Ctrl-C)" in line


def test_debug_shows_the_traceback(world, tmp_path):
    run = copy_run(world["mlp"], tmp_path / "run")
    (run / "weights.safetensors").write_bytes(b"")
    res = run_cli(["--debug", "lob", "evaluate", run, "--n", "5", "--threads", "1"])
    assert res.exit_code != 0 and isinstance(res.exception, ValueError) and "empty file" in str(res.exception)


def test_resume_says_its_step_and_reuses_its_synthetic_days(tmp_path):
    run = tmp_path / "run"
    args = ["lob", "train", "--synthetic", "thick", "--days", "2", "--hours", "0.1", "--model", "linear", *TINY]
    first = run_cli(args + ["--out", run])
    assert first.exit_code == 0, first.output
    days = snapshot(run / "data")
    again = run_cli(args + ["--steps", "7", "--out", run])  # later --steps win: continue the finished run
    assert again.exit_code == 0, again.output
    assert "resuming from step 4 of 7" in again.stderr and "reusing the 2 synthetic day(s)" in again.stderr
    assert snapshot(run / "data") == days  # not simulated again
    assert json.loads((run / "train_log.json").read_text())["log"][-1]["step"] == 7
    stored = json.loads((run / "config.json").read_text())["data"]["paths"]
    assert all(p.startswith("data/") for p in stored)  # inside the run: relative


def test_a_moved_run_still_evaluates(world, tmp_path):
    run = tmp_path / "a" / "run"
    res = run_cli(["lob", "train", "--synthetic", "thick", "--days", "2", "--hours", "0.1", "--model", "linear",
                   *TINY, "--out", run])
    assert res.exit_code == 0, res.output
    acc = json.loads((run / "metrics.json").read_text())["eval"]["accuracy"]
    moved = tmp_path / "b" / "moved"
    moved.parent.mkdir()
    run.rename(moved)
    res = run_cli(["lob", "evaluate", moved, "--n", "40", "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((moved / "metrics.json").read_text())["eval"]["accuracy"] == acc
    # data elsewhere: --data says where they are now
    shutil.move(str(moved / "data"), str(tmp_path / "days"))
    res = run_cli(["lob", "evaluate", moved, "--n", "40", "--threads", "1"])
    assert res.exit_code != 0 and "data has moved" in res.stderr
    res = run_cli(["lob", "evaluate", moved, "--n", "40", "--threads", "1", "--device", "cpu",
                   "--data", tmp_path / "days"])
    assert res.exit_code == 0, res.output


def test_failed_attack_leaves_a_marked_run_that_the_next_call_redoes(world, tmp_path, monkeypatch):
    import lobsim.experiments as experiments

    out = tmp_path / "attack"
    args = ["lob", "attack", "capital", "--model", world["mlp"], "--victims", world["lin"], "--n", "4",
            "--max-iter", "3", "--step-shares", "3", "--out", out, "--threads", "1", "--device", "cpu"]
    real = experiments.capital_results

    def interrupted(*a, **k):  # Ctrl-C after the attack ran and wrote its records, before the metrics
        raise KeyboardInterrupt

    monkeypatch.setattr(experiments, "capital_results", interrupted)
    res = run_cli(args)
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert (out / "INCOMPLETE").is_file() and not (out / "metrics.json").exists()
    rep = run_cli(["lob", "report", out, "--out", tmp_path / "rep"])
    assert rep.exit_code != 0 and "INCOMPLETE" in rep.stderr
    monkeypatch.setattr(experiments, "capital_results", real)
    res = run_cli(args)  # no --overwrite needed: the marked run is redone
    assert res.exit_code == 0, res.output
    assert not (out / "INCOMPLETE").exists() and (out / "metrics.json").is_file()
    res = run_cli(args)  # a finished run is kept
    assert res.exit_code != 0 and "--overwrite" in res.stderr


def test_lob_evaluation_of_another_setting_keeps_the_first(world, tmp_path):
    run = copy_run(world["mlp"], tmp_path / "run")
    first = json.loads((run / "metrics.json").read_text())
    assert first["eval"]["n"] == 40 and first["eval_seed"] == 0  # written by `lob train --eval-n 40`
    res = run_cli(["lob", "evaluate", run, "--n", "20", "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics-n40-seed0.json").read_text()) == first
    assert json.loads((run / "metrics.json").read_text())["eval"]["n"] == 20
    res = run_cli(["lob", "evaluate", run, "--n", "20", "--threads", "1", "--device", "cpu"])  # same setting
    assert res.exit_code == 0 and sorted(p.name for p in run.glob("metrics*.json")) == [
        "metrics-n40-seed0.json", "metrics.json"]


def test_vision_evaluation_of_another_setting_keeps_the_first(world, tmp_path):
    run = copy_run(world["vis"], tmp_path / "vis")
    base = ["vision", "evaluate", run, "--eps", "0.1", "--steps", "2", "--restarts", "1", "--device", "cpu",
            "--threads", "1", "--quiet"]
    assert run_cli(base + ["--n", "20"]).exit_code == 0
    first = json.loads((run / "eval-pgd-linf-0.1.json").read_text())
    assert run_cli(base + ["--n", "8"]).exit_code == 0
    assert json.loads((run / "eval-pgd-linf-0.1.json").read_text()) == first  # not replaced
    others = [json.loads(p.read_text()) for p in run.glob("eval-pgd-linf-0.1-*.json")]
    assert [o["n"] for o in others] == [8] and others[0]["setting"]["n"] == 8
    assert run_cli(base + ["--n", "20"]).exit_code == 0  # the same setting again replaces its own file
    assert len(list(run.glob("eval-pgd-linf-0.1*.json"))) == 2
