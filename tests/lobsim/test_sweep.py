"""Sweeps: config checks, cell expansion, the same table with Ray and without, resume, failing cells, the CLI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from lobsim.sweep import load_config, parse_config, plan_sweep, run_sweep
from lobsim.sweep.runners import LocalRunner, make_runner, ray_available

HOURS = 0.1
FEATURES = {"dt": 0.1, "window_s": 10.0, "horizon_s": 3.0}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Two synthetic days and two tiny models trained on them (day split: day 1 trains, day 2 tests)."""
    import torch

    from data_loaders.synthetic import write_days
    from lobsim.dataset import FeatureConfig, Market
    from lobsim.train import default_config, train

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sweep")
    paths = [str(p) for p in write_days(root / "data", "thick", days=2, hours=HOURS, seed=3)]
    f = FeatureConfig(**FEATURES)
    market = Market.from_paths(paths, dt=f.dt, features=f)
    data = {"paths": paths, "dt": f.dt, "start": None, "end": None, "split": "auto", "train_fraction": 0.8}
    for i, kind in enumerate(("linear", "mlp")):
        cfg = default_config(kind, "small", f, steps=20, batch=32, seed=i, data=data)
        train(cfg, market, root / "runs" / kind, progress=False, resume=False)
    return {"root": root, "paths": paths}


def _config(world: dict, name: str = "t", extra_markets: str = "", attacks: str | None = None, run: str = "") -> Path:
    root = world["root"]
    attacks = attacks or """
[[attacks]]
kind = "capital"
budgets = [3e4, 3e5]
n = 6
max_iter = 15
step_shares = 3.0
"""
    text = f"""
name = "{name}"
seed = 0

[[markets]]
name = "thick"
data = ["data"]
{extra_markets}
[[models]]
name = "linear"
run = "runs/linear"

[[models]]
name = "mlp"
run = "runs/mlp"
{attacks}
[run]
threads_per_cell = 1
gpus_per_cell = 0
{run}
"""
    path = root / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def local_table(world, tmp_path_factory) -> tuple[Path, bytes]:
    out = tmp_path_factory.mktemp("local")
    s = run_sweep(_config(world), out, runner="local", progress=False)
    assert (s.cells, s.done, s.failed, s.ran, s.skipped) == (4, 4, 0, 4, 0)
    return out, (out / "results.csv").read_bytes()


# ------------------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("text, match", [
    ("markets = []\nmodels = []\nattacks = []", "at least one"),
    ('[[markets]]\nname="m"\n[[models]]\nname="a"\nrun="r"\n[[attacks]]\nkind="capital"\nbudgets=[1]',
     r"\[\[markets\]\] #1 \(m\): give either data"),
    ('[[markets]]\nname="m"\ndata=["d"]\nhours=2\nbogus=1\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="capital"\nbudgets=[1]', r"#1: unknown key 'bogus'"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\ntrain={kind="cnn"}\n'
     '[[attacks]]\nkind="capital"\nbudgets=[1]', r"\[\[models\]\] #1.train: kind must be one of"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\ntrain={kind="mlp"}\ntrain_on="x"\n'
     '[[attacks]]\nkind="capital"\nbudgets=[1]', "train_on 'x' is not a market name"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="capital"\nbudgets=[-5]', r"\[\[attacks\]\] #1: budgets must be"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="random"\nbudgets=[1]\nmax_iter=3', "unknown key 'max_iter'"),
    ('fill_models=["teleport"]\n[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="random"\nbudgets=[1]', "'teleport' is not a fill model"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[markets]]\nname="m"\ndata=["e"]\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="random"\nbudgets=[1]', "two \\[\\[markets\\]\\] entries are named 'm'"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="random"\nbudgets=[1]\n[run]\ngroup="week"', r"\[run\]: group must be 'cell' or 'day'"),
    ('[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\nrun="r"\n'
     '[[attacks]]\nkind="capital"\nbudgets=[1]\nmethod="magic"', "method must be one of"),
    ('name = "x"\nname = "y"', "not valid TOML"),
])
def test_config_errors_name_file_table_and_key(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ValueError, match=match) as exc:
        load_config(p)
    assert str(exc.value).startswith(str(p)) and "\n" not in str(exc.value)


def test_cells_expand_to_the_product_with_stable_names(world: dict, tmp_path: Path) -> None:
    cfg = load_config(_config(world, attacks="""
[[attacks]]
kind = "capital"
budgets = [1e4, 1e5]
[[attacks]]
name = "rnd"
kind = "random"
budgets = [1e5]
"""))
    cfg2 = parse_config({**json.loads(json.dumps(_raw(cfg))), "fill_models": ["touch", "queue"]},
                        cfg.source, cfg.base)
    _, inst, cells = plan_sweep(cfg2, tmp_path / "a")
    assert len(inst) == 2 and len(cells) == 2 * 2 * 2 * 2  # days x models x attacks x fill models
    assert len({c.id for c in cells}) == len(cells)
    _, _, again = plan_sweep(cfg2, tmp_path / "b")  # another sweep folder: the same cell names
    assert [c.id for c in again] == [c.id for c in cells]
    assert {(c.day.date, c.instance, c.attack["name"], c.fill_model) for c in cells} == {
        (d, m, a, f) for d in ("2019-09-03", "2019-09-04") for m in ("linear", "mlp") for a in ("capital", "rnd")
        for f in ("touch", "queue")}


def _raw(cfg) -> dict:
    """A raw config dict equivalent to ``cfg`` (for variations)."""
    return {"name": cfg.name, "seed": cfg.seed,
            "markets": [{"name": m.name, "data": list(m.data)} for m in cfg.markets],
            "models": [{"name": m.name, "run": m.run} for m in cfg.models],
            "attacks": [{"name": a.name, "kind": a.kind, "budgets": list(a.budgets), "n": a.n, **a.params}
                        for a in cfg.attacks]}


# ------------------------------------------------------------------------------------------------- results


def test_cell_rows_equal_a_direct_run_of_the_public_api(world: dict, local_table) -> None:
    """Independent reference: the attack run by hand on the same snippets gives the table's numbers."""
    import pandas as pd

    from lobsim.attacks.capital import CapitalAttack
    from lobsim.attacks.records import summarize
    from lobsim.dataset import Market
    from lobsim.train import load_run

    out, _ = local_table
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 4 * 2  # cells x budgets
    model = load_run(world["root"] / "runs" / "mlp")
    day2 = world["paths"][1]
    m = Market.from_paths([day2], dt=0.1, features=model.config.features, split="time")
    batch = m.batch(*m.test_refs(6, seed=1), model.tau)
    recs = CapitalAttack(budget=3e5, max_iter=15, step_shares=3.0, model_name="mlp")(model, batch, seed=0)
    got = df[(df.model == "mlp") & (df.date == "2019-09-04")].sort_values("budget")
    for b, (_, row) in zip((3e4, 3e5), got.iterrows()):
        s = summarize(recs, b)
        assert row.budget == b and row.n == s["n"] == 6
        assert (row.a_test, row.a_adv, row.successes) == (s["a_test"], s["a_adv"], s["successes"])
        assert np.isclose(row.capital_mean, s["capital_mean"], equal_nan=True)
    # Day 1 trained the models (day split), day 2 is out of sample.
    assert set(df[df.date == "2019-09-03"].in_sample) == {True} and set(df[df.date == "2019-09-04"].in_sample) == {
        False}
    assert (out / "report" / "report.md").is_file() and (out / "results.parquet").is_file()
    assert len(list((out / "report").glob("curve_*.png"))) == 1


@pytest.mark.skipif(not ray_available(), reason="Ray is not installed (pip install -e '.[ray]')")
def test_ray_with_two_workers_gives_the_same_table(world: dict, local_table, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import pandas as pd
    import ray

    for k in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(k, "1")  # inherited by the local Ray workers
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        s = run_sweep(_config(world), tmp_path, runner="auto", progress=False)
    finally:
        ray.shutdown()
    assert (s.runner, s.workers, s.done, s.failed) == ("ray", 2, 4, 0)
    out, csv = local_table
    assert (tmp_path / "results.csv").read_bytes() == csv
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "results.parquet"),
                                  pd.read_parquet(out / "results.parquet"))
    pids = {json.loads(p.read_text())["resources"]["pid"] for p in tmp_path.glob("cells/*/result.json")}
    assert os.getpid() not in pids  # the cells ran in Ray worker processes


def test_one_task_per_day_gives_the_same_table(world: dict, local_table, tmp_path: Path) -> None:
    s = run_sweep(_config(world, name="g", run='group = "day"'), tmp_path, runner="local", progress=False)
    assert (s.done, s.failed) == (4, 0)
    assert (tmp_path / "results.csv").read_bytes() == local_table[1]


def test_interrupted_sweep_resumes_without_recomputing(world: dict, local_table, tmp_path: Path) -> None:
    seen: list[str] = []

    def stop_after_two(cell_id: str, ok: bool) -> None:
        seen.append(cell_id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(_config(world), tmp_path, runner="local", progress=False, after_cell=stop_after_two)
    finished = sorted(tmp_path.glob("cells/*/result.json"))
    assert len(finished) == 2
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished}
    ran: list[str] = []
    s = run_sweep(_config(world), tmp_path, runner="local", progress=False, after_cell=lambda c, ok: ran.append(c))
    assert (s.skipped, s.ran, s.done, s.failed) == (2, 2, 4, 0)
    assert not set(ran) & set(seen)  # nothing repeated
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in finished} == before
    assert (tmp_path / "results.csv").read_bytes() == local_table[1]  # nothing lost
    s3 = run_sweep(_config(world), tmp_path, runner="local", progress=False)
    assert (s3.skipped, s3.ran) == (4, 0)


def test_failing_cell_is_reported_and_the_others_finish(world: dict, tmp_path: Path) -> None:
    bad = tmp_path / "baddata"
    shutil.copytree(world["root"] / "data", bad)
    msg = sorted(bad.glob("*2019-09-04*_message_*.csv"))[0]
    lines = msg.read_text().splitlines()
    lines[6] = "oops," + lines[6]
    msg.write_text("\n".join(lines) + "\n")
    extra = f'[[markets]]\nname = "bad"\ndata = ["{bad}"]\n'
    cfg = _config(world, name="f", extra_markets=extra, attacks="""
[[attacks]]
kind = "random"
budgets = [1e5, 1e6]
n = 4
""")
    out = tmp_path / "out"
    s = run_sweep(cfg, out, runner="local", progress=False)
    assert (s.cells, s.done, s.failed) == (8, 6, 2)
    errors = sorted(out.glob("cells/*/error.txt"))
    assert len(errors) == 2 and all("bad.THICK.2019-09-04" in p.parent.name for p in errors)
    first = errors[0].read_text().splitlines()[0]
    assert f"{msg.name}: row 7" in first and "Traceback" in errors[0].read_text()
    assert "Failed cells (2)" in (out / "report" / "report.md").read_text()
    import pandas as pd

    df = pd.read_csv(out / "results.csv")
    assert len(df) == 6 * 2 and set(df.market) == {"thick", "bad"}
    s2 = run_sweep(cfg, out, runner="local", progress=False)  # the failed cells are retried, the rest skipped
    assert (s2.skipped, s2.ran, s2.failed) == (6, 2, 2)


def _syn_lin(days: int) -> str:
    """TOML: the feature grid, one small synthetic market of ``days`` days and one tiny linear model."""
    return f"""
[features]
dt = 0.1
window_s = 10.0
horizon_s = 3.0
[[markets]]
name = "syn"
synthetic = "thick"
days = {days}
hours = 0.1
seed = 5
[[models]]
name = "lin"
train = {{ kind = "linear", steps = 5, batch = 16 }}"""


def test_sweep_trains_its_models_once_per_market(tmp_path: Path) -> None:
    cfg = tmp_path / "train.toml"
    cfg.write_text('name = "tr"' + _syn_lin(days=2) + """
[[attacks]]
kind = "random"
budgets = [1e5]
n = 4
[run]
gpus_per_cell = 0
""")
    s = run_sweep(cfg, tmp_path / "o", runner="local", progress=False)
    assert (s.cells, s.done, s.instances, s.days) == (2, 2, 1, 2)
    (model_json,) = (tmp_path / "o" / "models").glob("lin@syn-*/model.json")
    stamp = model_json.stat().st_mtime_ns
    import pandas as pd

    df = pd.read_csv(tmp_path / "o" / "results.csv")
    assert list(df.in_sample) == [True, False] and set(df.instance) == {"lin@syn"}
    s2 = run_sweep(cfg, tmp_path / "o", runner="local", progress=False)
    assert (s2.skipped, s2.ran) == (2, 0) and model_json.stat().st_mtime_ns == stamp


def test_cli_sweep_runs_and_reports_bad_configs(world: dict, tmp_path: Path) -> None:
    from cli import main

    cfg = _config(world, name="cli", attacks='[[attacks]]\nkind = "random"\nbudgets = [1e5]\nn = 4\n')
    r = CliRunner()
    dry = r.invoke(main, ["lob", "sweep", str(cfg), "--out", str(tmp_path / "o"), "--dry-run"])
    assert dry.exit_code == 0 and "4 cells: 2 ticker-day(s) x 2 model instance(s)" in dry.stdout
    res = r.invoke(main, ["lob", "sweep", str(cfg), "--out", str(tmp_path / "o"), "--runner", "local",
                          "--threads", "1"])
    assert res.exit_code == 0, res.output
    assert "4 cells, 4 done, 0 failed, 0 skipped" in res.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text('[[markets]]\nname = "m"\n')
    err = r.invoke(main, ["lob", "sweep", str(bad), "--out", str(tmp_path / "b")])
    assert err.exit_code == 1 and "missing key 'models'" in err.output and "Traceback" not in err.output
    assert not (tmp_path / "b").exists()


def test_in_sample_means_a_training_day_of_the_model(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from lobsim.sweep.cell import _in_sample

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    name = "X_2020-01-02_34200000_35100000_message_1.csv"
    (a / name).write_text("1,2,3\n")
    (b / name).write_text("4,5,6\n")  # the same day written twice (same name and size)
    (tmp_path / name).write_text("4,5,6,7\n")  # same name, other content
    info = {"market": {"split": "day", "source": {"paths": [str(a / name), "/elsewhere/test_day.csv"]},
                       "train_regions": [{"day": 0, "lo": 0, "hi": 9}]}}
    m = SimpleNamespace(info=info)
    assert _in_sample(m, str(a / name)) and _in_sample(m, str(b / name))
    assert not _in_sample(m, str(tmp_path / name)) and not _in_sample(m, "/elsewhere/test_day.csv")
    info["market"]["split"] = "time"
    assert not _in_sample(m, str(a / name))  # a time split: the cell attacks the held-out end of the day


def test_runner_choice_without_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    import lobsim.sweep.runners as runners

    monkeypatch.setattr(runners, "ray_available", lambda: False)
    assert isinstance(make_runner("auto"), LocalRunner)
    with pytest.raises(ValueError, match=r"needs Ray: pip install -e '\.\[ray\]'"):
        make_runner("ray")
    with pytest.raises(ValueError, match="--address needs the Ray runner"):
        make_runner("local", address="auto")


# ------------------------------------------------------------------------------------------------- defenses


def test_sweep_trains_each_model_once_per_defense(tmp_path: Path) -> None:
    """defenses = ["none", a fast defense]: one plain and one defended instance, rows for both, the defended run
    records its defense, the plain cells keep the names they have without defenses, and a rerun trains nothing."""
    import pandas as pd
    from safetensors.torch import load_file

    text = """
name = "def"
defenses = ["none", {kind = "fast", budget = 30000, val_n = 32}]""" + _syn_lin(days=1) + """
[[attacks]]
kind = "capital"
budgets = [3e5]
n = 4
max_iter = 10
step_shares = 3.0
[run]
gpus_per_cell = 0
"""
    cfg_path = tmp_path / "def.toml"
    cfg_path.write_text(text)
    out = tmp_path / "o"
    s = run_sweep(cfg_path, out, runner="local", progress=False)
    assert (s.cells, s.done, s.failed, s.instances, s.days) == (2, 2, 0, 2, 1)
    df = pd.read_csv(out / "results.csv")
    assert sorted(df.defense) == ["fast-30000", "none"] and set(df.instance) == {"lin@syn"} and len(df) == 2
    assert df[df.defense == "fast-30000"].cell.str.contains(r"\.lin@syn\.capital\.touch\.fast-30000\.").all()
    (plain,) = (out / "models").glob("lin@syn-*/model.json")
    (fast,) = (out / "models").glob("lin@syn+fast-30000-*/model.json")
    assert json.loads(plain.read_text())["config"]["defense"] is None
    for f in (fast, fast.with_name("config.json")):
        d = json.loads(f.read_text())
        d = d.get("config", d)["defense"]
        assert (d["kind"], d["budget"], d["val_n"], d["steps"]) == ("fast", 30000.0, 32, 1)
    assert "defense" in json.loads(fast.with_name("train_log.json").read_text())  # the hook ran
    w0, w1 = (load_file(str(p.with_name("weights.safetensors"))) for p in (plain, fast))
    assert any(not np.array_equal(w0[k].numpy(), w1[k].numpy()) for k in w0)  # the defense changed the training
    assert "defense fast-30000" in (out / "report" / "report.md").read_text()
    stamp = fast.stat().st_mtime_ns
    s2 = run_sweep(cfg_path, out, runner="local", progress=False)
    assert (s2.skipped, s2.ran) == (2, 0) and fast.stat().st_mtime_ns == stamp
    # The plain instance and its cells are those of the same sweep without defenses.
    none_only = tmp_path / "none.toml"
    none_only.write_text(text.replace('defenses = ["none", {kind = "fast", budget = 30000, val_n = 32}]', ""))
    _, inst, cells = plan_sweep(load_config(none_only), out)
    assert [i.run_dir for i in inst] == [str(plain.parent)]
    assert [c.id for c in cells] == list(df[df.defense == "none"].cell)


def test_defenses_skip_trained_runs_and_string_syntax(world: dict) -> None:
    """A trained run is attacked as trained (defense "none" only); "fast:30000" equals the table form."""
    from lobsim.defenses import DEFENSES
    from lobsim.sweep.config import DEFENSE_KINDS

    assert DEFENSE_KINDS == DEFENSES
    cfg = load_config(_config(world))
    raw = {**_raw(cfg), "defenses": ["none", "fast:30000", {"kind": "pgd", "budget": 1e4, "name": "p"}],
           "models": [{"name": "linear", "run": cfg.models[0].run},
                      {"name": "lin", "train": {"kind": "linear", "steps": 5}}]}
    cfg2 = parse_config(raw, cfg.source, cfg.base)
    assert cfg2.defenses == ("none", "fast-30000", "p")
    table = parse_config({**raw, "defenses": ["none", {"kind": "fast", "budget": 30000}]}, cfg.source, cfg.base)
    assert table.defense_configs == {"fast-30000": cfg2.defense_configs["fast-30000"]}
    _, inst, cells = plan_sweep(cfg2, world["root"] / "plan-def")
    assert [(i.name, i.defense) for i in inst] == [("linear", "none"), ("lin@thick", "none"),
                                                   ("lin@thick", "fast-30000"), ("lin@thick", "p")]
    assert cfg2.defense_configs["p"]["steps"] == 5 and cfg2.defense_configs["fast-30000"]["budget"] == 30000.0
    assert {(c.instance, c.defense) for c in cells} == {(i.name, i.defense) for i in inst}
    assert len(cells) == 2 * 4 and len({c.id for c in cells}) == 8
    assert len({i.run_dir for i in inst}) == 4


@pytest.mark.parametrize("defenses, match", [
    ('["none", "shield:30000"]', r"defenses #2: unknown defense kind 'shield' \(choose \"none\" or one of fast"),
    ('["none", {kind = "shield", budget = 1}]', r"defenses #2: unknown defense kind 'shield'"),
    ('["fast"]', r"defenses #1: 'fast' needs its training budget in dollars"),
    ('[{kind = "fast", budget = -3}]', r"defenses #1: budget must be a positive dollar amount"),
    ('[{kind = "fast", budget = 3, bogus = 1}]', r"defenses #1: unknown key 'bogus'"),
    ('[{kind = "pgd", budget = 3, steps = 0}]', r"defenses #1 \(pgd-3\): DefenseConfig: need steps >= 1"),
    ('["fast:3", {kind = "fast", budget = 3.0}]', r"defenses: 'fast-3' is listed twice"),
    ('["fast:3"]', r"defenses: \[\[models\]\] 'a' is a trained run, attacked as trained"),
    ('[1]', r"defenses #1: expected \"none\", \"KIND:BUDGET\" or a table"),
])
def test_defense_config_errors_name_file_and_key(tmp_path: Path, defenses: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(f'defenses = {defenses}\n[[markets]]\nname="m"\ndata=["d"]\n[[models]]\nname="a"\nrun="r"\n'
                 '[[models]]\nname="b"\ntrain={kind="mlp"}\n[[attacks]]\nkind="random"\nbudgets=[1]')
    with pytest.raises(ValueError, match=match) as exc:
        load_config(p)
    assert str(exc.value).startswith(str(p)) and "\n" not in str(exc.value)
