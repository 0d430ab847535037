"""Stress-testing a user's own model (issue 12): exported files agree, shapes are checked, pickles are refused, the
regression criterion finds the analytically cheapest move, the HTML report is complete and self-contained."""

from __future__ import annotations

import base64
import io
import json
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lobsim.stress import StressSettings, UserModel, from_callable, load_model, parse_config, run_stress
from lobsim.stress.loading import sniff

CFG = {"input": {"adapters": ["microprice", "imbalance", "sizes"], "dt": 0.1, "step": 2, "window": 6, "levels": 3,
                 "channels": {"microprice": {"norm": "log_returns", "scale": 1e-4}, "sizes": {"norm": "log1p"}}},
       "output": {"kind": "classifier", "classes": 3},
       "target": {"series": "mid", "horizon": 3, "change": "diff", "edges": [-0.0025, 0.0025]}}
C = 1 + 1 + 6  # channels of CFG


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    from data_loaders.synthetic import write_days
    from lobsim.dataset import Market
    from lobsim.stress.run import market_features

    paths = write_days(tmp_path_factory.mktemp("stress-data"), "thick", days=2, hours=0.04, seed=3)
    return Market.from_paths(paths, dt=0.1, features=market_features(parse_config(CFG)))


def small_net(seed: int = 0, out: int = 3) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6 * C, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, out)).eval()


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    """The same network as TorchScript, torch.export (.pt2) and ONNX."""
    d = tmp_path_factory.mktemp("exports")
    net = small_net()
    x = torch.randn(4, 6, C)
    torch.jit.script(net).save(str(d / "m.pt"))
    ep = torch.export.export(net, (x,), dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))
    torch.export.save(ep, str(d / "m.pt2"))
    out = {"torchscript": d / "m.pt", "export": d / "m.pt2"}
    try:
        import onnx  # noqa: F401

        torch.onnx.export(net, (x,), str(d / "m.onnx"), input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
        out["onnx"] = d / "m.onnx"
    except ImportError:
        pass
    return out


def _need_onnx():
    from lobsim.stress.loading import _import_onnx2torch

    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    try:
        _import_onnx2torch()  # works without torchvision (advsim stubs it for the import)
    except ImportError:
        pytest.skip("needs onnx2torch (pip install 'advsim[onnx]')")


def test_exports_agree_on_clean_outputs_and_attack_outcome(market, exports):
    _need_onnx()
    cfg = parse_config(CFG)
    models = {k: UserModel(load_model(p), cfg, 10) for k, p in exports.items()}
    models["onnxruntime"] = UserModel(load_model(exports["onnx"], gradients="none"), cfg, 10)
    models["python"] = UserModel(from_callable(small_net()), cfg, 10)
    assert "onnx2torch" in models["onnx"].loaded.source and models["onnx"].differentiable
    assert not models["onnxruntime"].differentiable
    st = StressSettings(n=6, budgets=[1e4, 1e6], attacks=["capital"], max_iter=8, restarts=1, search_iter=30,
                        batch_size=8)
    res = {k: run_stress(m, market, st) for k, m in models.items()}
    ref = res["python"]
    for k, r in res.items():
        clean = [row["clean"] for row in r.rows]
        assert clean == [row["clean"] for row in ref.rows], k
        if models[k].differentiable:  # same members, same seeds: the same verified orders
            assert [row["fooled"] for row in r.rows] == [row["fooled"] for row in ref.rows], k
            caps = [row["capital"] or 0.0 for row in r.rows]
            np.testing.assert_allclose(caps, [row["capital"] or 0.0 for row in ref.rows], rtol=1e-9, err_msg=k)
    assert res["python"].summary["attack"]["fooled"] > 0
    # gradient-free: the search alone, the same on every loader (outputs agree to float32 precision)
    st_free = StressSettings(n=6, budgets=[1e6], attacks=["capital"], search_iter=30, batch_size=8)
    free = {k: run_stress(UserModel(load_model(p, gradients="none"), cfg, 10), market, st_free)
            for k, p in exports.items()}
    caps = {k: [row["capital"] or 0.0 for row in r.rows] for k, r in free.items()}
    for k in caps:
        np.testing.assert_allclose(caps[k], caps["torchscript"], rtol=1e-9, err_msg=k)
        assert free[k].summary["attack"]["members"] == ["search"]


def test_shape_disagreement_is_refused_with_a_clear_message(exports, tmp_path):
    cfg = parse_config(CFG)
    wrong = parse_config({**CFG, "input": {**CFG["input"], "window": 7}})  # 7 x 8 inputs for a 6 x 8 model
    with pytest.raises(ValueError, match=r"m\.pt2: the model's input has shape \('batch', 6, 8\) but .* describes "
                                         r"\('batch', 7, 8\)"):
        UserModel(load_model(exports["export"]), wrong, 10)
    with pytest.raises(ValueError, match=r"m\.pt: the model does not accept the input .* \('batch', 7, 8\) = "
                                         r"window 7 x 8 channel\(s\)"):
        UserModel(load_model(exports["torchscript"]), wrong, 10)
    if "onnx" in exports:
        with pytest.raises(ValueError, match=r"the model's input has shape \('batch', 6, 8\)"):
            UserModel(load_model(exports["onnx"]), wrong, 10)
    reg = parse_config({**CFG, "output": {"kind": "regressor", "threshold": 1.0}})
    with pytest.raises(ValueError, match=r"returns shape \(2, 3\) but \[output\] says a regressor"):
        UserModel(load_model(exports["torchscript"]), reg, 10)
    five = parse_config({**CFG, "output": {"kind": "classifier", "classes": 5}, "target": None})
    with pytest.raises(ValueError, match=r"classifier with 5 classes, so \(2, 5\) was expected"):
        UserModel(load_model(exports["torchscript"]), five, 10)
    with pytest.raises(ValueError, match="levels = 3 but the data have 2 levels"):
        UserModel(load_model(exports["torchscript"]), cfg, 2)


class _Boom:
    """Unpickling this object would create a file: the proof that nothing was unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_are_refused_without_being_unpickled(tmp_path):
    canary = tmp_path / "unpickled"
    payload = pickle.dumps(_Boom(str(canary)))
    files = {"model.pkl": payload, "model.bin": payload, "model.onnx": payload,
             "model.joblib": b"\x78\x9c" + payload[:20]}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match="never unpickles"):
            load_model(tmp_path / name)
    torch.save(small_net(), tmp_path / "whole.pt")  # torch.save of a module: a pickle in a zip
    with pytest.raises(ValueError, match=r"torch\.save archive .* never unpickles"):
        load_model(tmp_path / "whole.pt")
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ValueError, match="empty file"):
        sniff(tmp_path / "empty.onnx")
    with pytest.raises(FileNotFoundError, match="no such model file"):
        load_model(tmp_path / "missing.onnx")
    assert not canary.exists()


def test_pt2_with_pickled_payloads_is_refused(exports, tmp_path):
    import zipfile

    src = zipfile.ZipFile(exports["export"])
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(bad, "w") as z:
        for n in src.namelist():
            data = src.read(n)
            if n.endswith("model_weights_config.json"):
                cfg = json.loads(data)
                next(iter(cfg["config"].values()))["use_pickle"] = True
                data = json.dumps(cfg).encode()
            z.writestr(n, data)
    with pytest.raises(ValueError, match="would be unpickled"):
        load_model(bad)


def test_config_errors_name_the_field(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[input]\nadapters = ["mid", "vwap"]\n[output]\nkind = "classifier"\n')
    from lobsim.stress import load_config

    with pytest.raises(ValueError, match=r"c\.toml: \[input\] adapters: unknown input 'vwap'"):
        load_config(p)
    bad = [({"input": {"adapters": ["mid"]}, "output": {"kind": "regressor"}}, r"\[output\] threshold must be > 0"),
           ({"input": {"adapters": ["imbalance"], "channels": {"imbalance": {"norm": "returns"}}},
             "output": {"kind": "classifier"}}, "for price-like adapters"),
           ({"input": {"adapters": ["mid"], "windw": 3}, "output": {}}, r"unknown field\(s\) \['windw'\]"),
           ({"input": {"adapters": ["mid"]}, "output": {"classes": 3, "fooled": "target:3"}}, "0 <= K < 3"),
           ({"input": {"adapters": ["mid"]}, "output": {}, "target": {"series": "mid", "edges": [1.0]}},
            "2 increasing numbers for 3 classes")]
    for raw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            parse_config(raw, "cfg")


def test_regression_criterion_finds_the_analytically_cheapest_move():
    """A planted linear regressor reads the sizes of the last snapshot's bid levels with weights (1, 0.3, 0.1).
    To move it by more than 1.5 the cheapest integer orders are two shares at the best bid (2 x best bid $): one
    share gains 1 and every other combination costs more (brute force over the exact engine's per-share gains)."""
    from lobsim.attacks.ensemble import EnsembleAttack
    from lobsim.attacks.objectives import ForecastShift
    from lobsim.propagation import propagate
    from lobsim.stress.run import directions, merge_records
    from tests.lobsim.test_capital_attack import random_batch

    W, L = 6, 3
    batch = random_batch(5, W, L, seed=4)
    batch.labels = np.zeros(5, np.int64)
    w = np.zeros((W, 2, L))
    w[-1, 0] = [1.0, 0.3, 0.1]
    lin = torch.nn.Linear(W * 2 * L, 1, bias=False, dtype=torch.float64)
    with torch.no_grad():
        lin.weight[:] = torch.as_tensor(w.reshape(1, -1))
    cfg = parse_config({"input": {"adapters": ["sizes"], "step": 1, "window": W, "layout": "flat",
                                  "dtype": "float64"},
                        "output": {"kind": "regressor", "fooled": "move", "threshold": 1.5}})
    model = UserModel(from_callable(torch.nn.Sequential(lin)), cfg, L)
    runs = [EnsembleAttack(budget=1e5, max_iter=20, restarts=1, search_iter=60, objective=o)(model, batch, seed=0)
            for o in directions(ForecastShift(1.5, "move"))]
    recs = merge_records(runs, ["up", "down"])
    for b, r in enumerate(recs):
        # reference: the per-share gain and price of every entry (exact engine), then the integer optimum
        items = {}
        for t in range(W):
            for s in range(2):
                for j in range(L):
                    one = np.zeros((1, W, 2, L), np.int64)
                    one[0, t, s, j] = 1
                    gain = float((propagate(one, batch.select([b])).delta[0] * w).sum())
                    if gain > 0:
                        price = batch.prices[b, t, s, j] / 1e4
                        items[(round(gain, 9), price)] = (gain, price)
        best = np.inf
        for q in np.ndindex(*(3,) * len(items)):
            g = sum(k * it[0] for k, it in zip(q, items.values()))
            if g > 1.5 + 1e-12:
                best = min(best, sum(k * it[1] for k, it in zip(q, items.values())))
        assert best == pytest.approx(2 * batch.prices[b, -1, 0, 0] / 1e4, abs=1e-9)  # the closed form
        assert r.success and r.capital == pytest.approx(best, abs=1e-6), (b, r.capital, best, r.orders)
        assert "(up)" in r.winner


def test_report_has_every_section_and_its_images_decode(market, tmp_path):
    from PIL import Image

    from lobsim.stress import stress
    from lobsim.stress.report import SECTIONS

    res = stress(small_net(0), market, CFG, out=tmp_path, n=6, budgets=[1e4, 1e5, 1e6], max_iter=6, restarts=1,
                 search_iter=20, universal_steps=8, universal_n=8, batch_size=8)
    text = (tmp_path / "report.html").read_text()
    for sec in SECTIONS:
        assert f"<section id='{sec}'>" in text, sec
    assert "http://" not in text and "https://" not in text  # nothing to fetch: self-contained
    imgs = re.findall(r"src='data:image/png;base64,([^']+)'", text)
    assert len(imgs) == 4  # curve, capital, heat-maps, universal pattern
    for b64 in imgs:
        im = Image.open(io.BytesIO(base64.b64decode(b64)))
        im.verify()
        assert im.size[0] > 100
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["summary"] == res.summary["summary"] and summary["summary"][0].startswith(("With $", "Within $"))
    rows = (tmp_path / "snippets.csv").read_text().splitlines()
    assert len(rows) == 1 + 6 and rows[0].startswith("index,day,start")
    assert len((tmp_path / "curve.csv").read_text().splitlines()) == 1 + 3
    a = res.summary["attack"]
    assert a["fooled"] == sum(r["fooled"] for r in res.rows)
    # the curve is read from the records: fooled at c iff the minimal capital <= c
    caps = [r["capital"] for r in res.rows if r["fooled"]]
    assert caps and [p["fooled"] for p in res.curve] == [sum(c <= b for c in caps) for b in (1e4, 1e5, 1e6)]


def test_sklearn_model_through_the_python_entry_point(market):
    from sklearn.ensemble import GradientBoostingClassifier

    from lobsim.dataset import Market
    from lobsim.stress import model_inputs, stress, stress_market
    from lobsim.stress.run import classes_of, targets

    cfg = parse_config({**CFG, "input": {**CFG["input"], "layout": "flat"}})
    mk = stress_market(market, cfg)
    day, start = Market.refs_in(mk.train_regions, 300, seed=0)
    x = model_inputs(cfg, mk, day, start)
    y = classes_of(targets(mk, cfg, day, start), cfg)
    assert x.shape == (300, 6 * C)
    clf = GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0).fit(x, y)
    res = stress(clf, market, cfg, n=5, budgets=[1e5], attacks=["random", "capital"], search_iter=30)
    assert res.summary["attack"]["gradient_free"] and res.summary["attack"]["members"] == ["search"]
    clean_direct = clf.predict_proba(model_inputs(cfg, mk, *mk.test_refs(5, seed=0))).argmax(1)
    assert [r["clean"] for r in res.rows] == clean_direct.tolist()


def test_cli_runs_the_shipped_gradient_boosting_example_gradient_free(market, tmp_path):
    """`advsim lob stress` on the shipped scikit-learn model (ONNX trees: no torch conversion -> onnxruntime)."""
    pytest.importorskip("onnxruntime")
    from click.testing import CliRunner

    from cli import main

    repo = Path(__file__).resolve().parents[2]
    data = market.source["paths"]
    args = ["lob", "stress", str(repo / "examples" / "stress" / "gbm_ofi.toml"), "--out", str(tmp_path / "run"),
            "--n", "3", "--search-iter", "10", "--budgets", "1e4,1e6", "--attacks", "capital,universal",
            "--universal-steps", "3", "--universal-n", "4", "--threads", "1"]
    for p in data:
        args += ["--data", p]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "(onnxruntime)" in res.output and "gradient-free" in res.output
    s = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert s["attack"]["members"] == ["search"] and s["universal"]["method"] == "random search"
    assert not (tmp_path / "run" / "INCOMPLETE").exists() and (tmp_path / "run" / "report.html").is_file()
    bad = tmp_path / "bad.toml"
    bad.write_text('[input]\nadapters = ["ofi"]\nwindow = 0\n[output]\nkind = "classifier"\n')
    res = CliRunner().invoke(main, ["lob", "stress", str(bad), "--out", str(tmp_path / "r2"), "--data", data[0]])
    assert res.exit_code == 1 and res.output.strip().count("\n") == 0
    assert "bad.toml: [input] window must be an integer >= 1" in res.output
