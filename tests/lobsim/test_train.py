"""Training learns a planted signal; checkpoints round-trip, resume exactly and refuse foreign files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lobsim.dataset import FeatureConfig, Market
from lobsim.evaluate import confusion_matrix, evaluate
from lobsim.models import ModelConfig
from lobsim.train import TrainConfig, load_run, train
from tests.lobsim.test_dataset import make_book

FEATS = FeatureConfig(dt=0.01, window_s=0.6, horizon_s=0.2)  # W = 60, H = 20


@pytest.fixture(scope="module")
def momentum_market() -> Market:
    """Three days of a random walk whose drift persists (flips ~every 400 steps): the past predicts the future."""
    books = [make_book(6000, seed=10 + i, regime_switch=1 / 400, date=f"2020-01-0{i + 1}") for i in range(3)]
    return Market(books, FEATS)


def _cfg(kind: str, steps: int, **kw) -> TrainConfig:
    model = ModelConfig(kind=kind, preset="small", window=FEATS.window, **kw.pop("model", {}))
    kw = {"lr": 3e-3, "ckpt_every": 50, **kw}
    return TrainConfig(model=model, features=FEATS, steps=steps, batch=128, device="cpu", eval_n=2000,
                       scale_n=1024, **kw)


@pytest.mark.parametrize("kind,extra", [("linear", {}), ("mlp", {"hidden": [64]}), ("lstm", {"pool": 5})])
def test_models_learn_a_planted_signal(momentum_market: Market, tmp_path: Path, kind: str, extra: dict) -> None:
    trained = train(_cfg(kind, 250, model=extra), momentum_market, tmp_path / kind, progress=False)
    res = evaluate(trained, momentum_market, n=2000, seed=0)
    # Chance is 1/3; a model that reads the drift gets most up/down snippets right.
    assert res.accuracy > 0.5, res.summary()
    assert res.accuracy - 5 * res.stderr > max(res.chance, res.majority_accuracy)
    cm = np.array(res.confusion)
    assert cm.sum() == res.n and np.trace(cm) / res.n == pytest.approx(res.accuracy)
    metrics = json.loads((tmp_path / kind / "metrics.json").read_text())
    assert metrics["eval"]["accuracy"] == pytest.approx(res.accuracy)


def test_no_signal_means_chance(tmp_path: Path) -> None:
    market = Market([make_book(6000, seed=i, date=f"2020-01-0{i + 1}") for i in range(3)], FEATS)
    trained = train(_cfg("linear", 100), market, tmp_path / "noise", progress=False)
    res = evaluate(trained, market, n=2000)
    assert abs(res.accuracy - 1 / 3) < 0.06, res.summary()


def test_checkpoint_round_trip_gives_identical_logits(momentum_market: Market, tmp_path: Path) -> None:
    trained = train(_cfg("lstm", 20, model={"pool": 5}), momentum_market, tmp_path / "run", progress=False)
    loaded = load_run(tmp_path / "run")
    assert loaded.tau == trained.tau and loaded.normalizer == trained.normalizer
    assert loaded.config == trained.config
    day, start = momentum_market.test_refs(64, seed=1)
    swa_w = torch.from_numpy(momentum_market.swa_windows(day, start))
    with torch.no_grad():
        torch.testing.assert_close(loaded.logits_from_swa(swa_w), trained.logits_from_swa(swa_w), rtol=0, atol=0)
        # The attack feeds per-snippet centred prices: logits do not change (up to float32 rounding).
        centred = (swa_w - swa_w[:, :1]).float()
        torch.testing.assert_close(loaded.logits_from_swa(centred), trained.logits_from_swa(swa_w), atol=1e-4,
                                   rtol=1e-4)
        expected = trained.logits_from_swa(swa_w).argmax(1).numpy()
    np.testing.assert_array_equal(loaded.predict(momentum_market, day, start), expected)


def test_interrupted_training_resumes_bit_identically(momentum_market: Market, tmp_path: Path) -> None:
    es = {"val_fraction": 0.2, "eval_every": 10, "ckpt_every": 25}  # the best weights so far travel in the checkpoint
    full = train(_cfg("mlp", 60, model={"hidden": [16]}, **es), momentum_market, tmp_path / "full", progress=False)

    class Interrupting:
        """The market, but Ctrl-C arrives during the 37th batch."""

        def __init__(self, market: Market) -> None:
            self.market, self.calls = market, 0

        def __getattr__(self, name: str):
            return getattr(self.market, name)

        def sample_regions(self, regions, n, rng):
            self.calls += 1
            if self.calls == 37:  # the training batches (the normaliser's draw does not pass here)
                raise KeyboardInterrupt
            return self.market.sample_regions(regions, n, rng)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg("mlp", 60, model={"hidden": [16]}, **es), Interrupting(momentum_market), tmp_path / "cut",
              progress=False)
    assert (tmp_path / "cut" / "checkpoint.safetensors").exists() and not (tmp_path / "cut" / "model.json").exists()
    resumed = train(_cfg("mlp", 60, model={"hidden": [16]}, **es), momentum_market, tmp_path / "cut", progress=False)
    assert resumed.info["early_stopping"] == full.info["early_stopping"]
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="different config"):
        train(_cfg("mlp", 60, model={"hidden": [17]}), momentum_market, tmp_path / "cut", progress=False)


def test_loading_foreign_files_fails_clearly(momentum_market: Market, tmp_path: Path) -> None:
    train(_cfg("linear", 5), momentum_market, tmp_path / "run", progress=False)
    weights = tmp_path / "run" / "weights.safetensors"
    weights.write_bytes(b"\x80\x04\x95 this is a pickle, not safetensors")
    with pytest.raises(ValueError, match=r"weights\.safetensors.*safetensors expected"):
        load_run(tmp_path / "run")
    meta = tmp_path / "run" / "model.json"
    meta.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not an advsim model file"):
        load_run(tmp_path / "run")
    meta.write_text("{not json")
    with pytest.raises(ValueError, match="model.json: line 1"):
        load_run(tmp_path / "run")
    with pytest.raises(FileNotFoundError, match="not a trained-model run directory"):
        load_run(tmp_path / "nowhere")


def test_confusion_matrix_counts() -> None:
    cm = confusion_matrix(np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 1, 1]))
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 1]])


def test_cli_train_evaluate_table_on_a_short_synthetic_day(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main
    from data_loaders.synthetic import write_days

    paths = write_days(tmp_path / "data", "thick", days=1, hours=0.05, seed=0)
    runner = CliRunner()
    common = ["--data", str(paths[0]), "--window", "5", "--horizon", "1", "--steps", "5", "--device", "cpu",
              "--eval-n", "300", "--threads", "1"]
    for kind in ("linear", "lstm"):
        res = runner.invoke(main, ["lob", "train", "--model", kind, "--out", str(tmp_path / kind), *common])
        assert res.exit_code == 0, res.output
        assert "accuracy" in res.output and (tmp_path / kind / "metrics.json").exists()
    res = runner.invoke(main, ["lob", "evaluate", str(tmp_path / "lstm"), "--n", "200", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "lstm" / "metrics.json").read_text())["eval"]["n"] == 200
    res = runner.invoke(main, ["lob", "table", str(tmp_path / "linear"), str(tmp_path / "lstm"), "--out",
                               str(tmp_path / "table")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "table" / "table-3.1.md").read_text()
    assert md.splitlines()[0] == "| Ticker | Linear | LSTM | Best constant |"
    assert md.splitlines()[2].startswith("| THICK |") and "block-bootstrap" in md
    rows = json.loads((tmp_path / "table" / "table-3.1.json").read_text())
    assert {r["kind"] for r in rows} == {"linear", "lstm"}
    res = runner.invoke(main, ["lob", "train", "--model", "mlp", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "either --data" in res.output
    res = runner.invoke(main, ["lob", "train", "--model", "mlp", "--inputs", "swa,imbalance,spread", "--out",
                               str(tmp_path / "multi"), *common])
    assert res.exit_code == 0, res.output
    assert "inputs: swa,imbalance,spread" in res.output and "best constant" in res.output
    assert json.loads((tmp_path / "multi" / "model.json").read_text())["inputs"] == ["swa", "imbalance", "spread"]
    res = runner.invoke(main, ["lob", "train", "--model", "mlp", "--inputs", "swa,vwap", "--out",
                               str(tmp_path / "bad"), *common])
    assert res.exit_code != 0 and "unknown input 'vwap'" in res.output and "Traceback" not in res.output


def test_accuracy_table_layout_and_duplicates() -> None:
    from lobsim.evaluate import accuracy_table

    ev = {"accuracy": 0.3656, "stderr": 0.0048, "n": 10000, "majority_accuracy": 0.3}
    runs = [{"run": "a", "ticker": "F", "kind": "mlp", "preset": "small", "eval": ev},
            {"run": "b", "ticker": "F", "kind": "linear", "preset": "small", "eval": ev},
            {"run": "c", "ticker": "GE", "kind": "lstm", "preset": "small", "eval": ev}]
    md, rows = accuracy_table(runs)
    lines = md.splitlines()
    assert lines[0] == "| Ticker | Linear | MLP | LSTM | Best constant |"
    assert lines[2] == "| F | 36.56 ± 0.48 | 36.56 ± 0.48 | - | - |"
    assert lines[3] == "| GE | - | - | 36.56 ± 0.48 | - |"
    assert "binomial standard error" in md and len(rows) == 3
    with pytest.raises(ValueError, match="both fill .*F / MLP"):
        accuracy_table(runs + [dict(runs[0], run="d")])
    # Block-bootstrap evaluations: block SE, paired difference to the best constant, and input sets as columns.
    blk = dict(ev, stderr=0.02, se_kind="block bootstrap", block=700, best_constant={"class": 1, "accuracy": 0.34},
               vs_best_constant={"diff": 0.0256, "se": 0.01})
    md, rows = accuracy_table([{"run": "a", "ticker": "F", "kind": "mlp", "preset": "small", "eval": blk},
                               {"run": "b", "ticker": "F", "kind": "mlp", "preset": "small", "eval": blk,
                                "inputs": ["swa", "imbalance"]}])
    lines = md.splitlines()
    assert lines[0] == "| Ticker | MLP | MLP [swa,imbalance] | Best constant |"
    assert lines[2] == "| F | 36.56 ± 2.00 (+2.6, z 2.6) | 36.56 ± 2.00 (+2.6, z 2.6) | 34.00 (flat) |"
    assert "block-bootstrap standard error (blocks of 700 grid steps" in md
    assert rows[1]["inputs"] == ["swa", "imbalance"]


def rule_book(T: int, seed: int, date: str, L: int = 5, H: int = 20):
    """A book whose best-level imbalance announces the next H steps' move: the planted, known rule.

    The mid walks in one-tick steps (probability 0.05 per step); at every step the level-0 sizes are
    300 +- 100 x clip(future move over H steps, -2, 2) ticks. Deeper levels hold a constant 1,000 shares, so
    the past SWA path carries no information about the future move; the imbalance carries all of it.
    """
    from lobsim.grid import GridBook

    rng = np.random.default_rng(seed)
    mid = np.cumsum(np.where(rng.random(T + H) < 0.05, rng.choice([-1, 1], T + H), 0))
    future = np.clip(mid[H:] - mid[:T], -2, 2)
    m = 5000 + mid[:T]
    j = np.arange(L)
    prices = np.empty((T, 2, L), np.int64)
    prices[:, 0] = (m[:, None] - j) * 100
    prices[:, 1] = (m[:, None] + 1 + j) * 100
    sizes = np.full((T, 2, L), 1000, np.int64)
    sizes[:, 0, 0] = 300 + 100 * future
    sizes[:, 1, 0] = 300 - 100 * future
    return GridBook(ticker="RULE", date=date, dt=0.01, times=34200.0 + 0.01 * np.arange(T), prices=prices,
                    sizes=sizes, exec_ptr=np.zeros(T + 1, np.int64), exec_side=np.zeros(0, np.int8),
                    exec_price=np.zeros(0, np.int64), exec_volume=np.zeros(0, np.int64),
                    exec_hidden=np.zeros(0, bool))


def test_multichannel_model_learns_a_planted_book_rule(tmp_path: Path) -> None:
    market = Market([rule_book(6000, seed=20 + i, date=f"2020-02-0{i + 3}") for i in range(3)], FEATS)
    res = {}
    for inputs in (["swa"], ["swa", "imbalance"]):
        cfg = _cfg("mlp", 300, model={"hidden": [32]}, inputs=inputs, val_fraction=0.2, eval_every=25)
        trained = train(cfg, market, tmp_path / "-".join(inputs), progress=False)
        assert trained.inputs == tuple(inputs) and trained.config.model.channels == len(inputs)
        res["+".join(inputs)] = evaluate(trained, market, n=2000)
    multi, single = res["swa+imbalance"], res["swa"]
    assert multi.accuracy > 0.8, multi.summary()
    assert multi.vs_best_constant["z"] > 5
    # SWA alone cannot see the rule: near the best constant answer, far below the two-channel model.
    assert single.accuracy < multi.accuracy - 0.2, single.summary()
    assert multi.train_accuracy is not None and multi.val_accuracy is not None
    # The logistic-regression baseline on the same inputs finds the rule too (and not on SWA alone).
    from lobsim.logreg import fit_logistic

    day, start = market.test_refs(2000)
    y = market.labels(day, start, multi.tau)
    for inputs, lo, hi in ((("swa", "imbalance"), 0.8, 1.0), (("swa",), 0.0, multi.accuracy - 0.2)):
        lr = fit_logistic(market, inputs, tau=multi.tau, n_train=4000, val_n=1000, c_grid=(1.0,))
        assert lo < np.mean(lr.predict(market, day, start) == y) < hi, (inputs, lr.info)


def test_early_stopping_keeps_the_best_validation_weights(tmp_path: Path) -> None:
    """On noise a wide MLP with a large step overfits: training stops early and returns the best weights."""
    market = Market([make_book(6000, seed=30 + i, date=f"2020-03-0{i + 2}") for i in range(3)], FEATS)
    cfg = _cfg("mlp", 600, model={"hidden": [256, 256]}, val_fraction=0.2, eval_every=20, patience=3, lr=1e-2)
    trained = train(cfg, market, tmp_path / "es", progress=False)
    es = trained.info["early_stopping"]
    assert es["stopped_early"] and es["best_step"] < trained.info["steps_done"] < 600
    log = json.loads((tmp_path / "es" / "train_log.json").read_text())["log"]
    vals = [e for e in log if "val_loss" in e]
    assert min(e["val_loss"] for e in vals) == pytest.approx(es["val_loss"], abs=1e-5)
    assert [e["step"] for e in vals if e["val_loss"] == min(v["val_loss"] for v in vals)][0] == es["best_step"]
    # The saved weights are the best ones: their validation loss is the best loss.
    from lobsim.train import loss_and_accuracy

    fit, val = market.validation_split(0.2)
    loaded = load_run(tmp_path / "es")
    vl, _ = loss_and_accuracy(loaded, market, Market.refs_in(val, cfg.val_n, seed=cfg.seed))
    assert vl == pytest.approx(es["val_loss"], abs=1e-5)
    assert trained.info["train_accuracy"] > 0.3


def test_old_swa_only_model_files_load_and_book_logits_agree(momentum_market: Market, tmp_path: Path) -> None:
    """A version-1 model.json (no inputs recorded, scalar normaliser) loads as an SWA-only model with the same
    logits; logits_from_book (the attacks' entry) equals the numpy prediction path for every input set."""
    from lobsim.attacks.capital import book_tensors
    from lobsim.features import swa_torch

    trained = train(_cfg("mlp", 20, model={"hidden": [16]}), momentum_market, tmp_path / "swa", progress=False)
    meta_path = tmp_path / "swa" / "model.json"
    meta = json.loads(meta_path.read_text())
    old = dict(meta, version=1, normalizer={"scale": meta["normalizer"]["scale"][0], "kind": "last"})
    del old["inputs"], old["config"]["inputs"], old["model"]["channels"]
    for k in ("val_fraction", "eval_every", "patience", "val_n"):
        del old["config"][k]
    meta_path.write_text(json.dumps(old))
    (tmp_path / "swa" / "config.json").write_text(json.dumps(old["config"]))
    loaded = load_run(tmp_path / "swa")
    assert loaded.inputs == ("swa",)
    day, start = momentum_market.test_refs(64, seed=2)
    batch = momentum_market.batch(day, start)
    P, S, M = book_tensors(batch, dtype=torch.float64)
    with torch.no_grad():
        ref = trained.logits_from_swa(torch.from_numpy(momentum_market.swa_windows(day, start)))
        torch.testing.assert_close(loaded.logits_from_swa(torch.from_numpy(momentum_market.swa_windows(day, start))),
                                   ref, rtol=0, atol=0)
        torch.testing.assert_close(loaded.logits_from_book(P, S, M), loaded.logits_from_swa(swa_torch(P, S, M)))
    multi = train(_cfg("lstm", 20, model={"pool": 5}, inputs=["swa", "microprice", "depth", "spread"]),
                  momentum_market, tmp_path / "multi", progress=False)
    multi = load_run(tmp_path / "multi")
    assert multi.inputs == ("swa", "microprice", "depth", "spread") and multi.config.model.channels == 5
    with torch.no_grad():
        book = multi.logits_from_book(*book_tensors(batch))  # float32, prices centred per snippet
    np.testing.assert_allclose(book.numpy(), multi.predict_logits(momentum_market, day, start), atol=2e-4)
    with pytest.raises(ValueError, match="not SWA alone"):
        multi.logits_from_swa(torch.zeros(2, FEATS.window))


def test_attacks_reach_every_input_channel(momentum_market: Market, tmp_path: Path) -> None:
    """Through logits_from_book (the attacks' only entry) size perturbations move a multi-channel model's logits,
    with gradients equal to finite differences; price-only channels (mid, spread) alone get none."""
    from lobsim.attacks.capital import book_tensors, evaluate_orders, logits_of

    multi = train(_cfg("mlp", 10, model={"hidden": [16]}, inputs=["imbalance", "depth", "mid", "spread"]),
                  momentum_market, tmp_path / "m", progress=False)
    batch = momentum_market.batch(*momentum_market.test_refs(4, seed=3))
    P, S, M = book_tensors(batch, dtype=torch.float64)
    multi.model.double()
    s = S.clone().requires_grad_(True)
    logits_of(multi, P, s, M)[:, 0].sum().backward()
    g = s.grad
    assert g[M].abs().sum() > 0 and torch.all(g[~M] == 0)
    b, t, side, lvl = 1, FEATS.window - 1, 1, 0  # the best ask of the last step: imbalance and depth move
    e = torch.zeros_like(S)
    e[b, t, side, lvl] = 1e-3
    with torch.no_grad():
        fd = (logits_of(multi, P, S + e, M)[b, 0] - logits_of(multi, P, S - e, M)[b, 0]) / 2e-3
    assert float(fd) == pytest.approx(float(g[b, t, side, lvl]), rel=1e-4, abs=1e-9)
    multi.model.float()
    orders = np.zeros(batch.prices.shape, np.int64)
    pred, delta = evaluate_orders(multi, batch, orders)
    np.testing.assert_array_equal(pred, multi.predict(momentum_market, batch.day, batch.start))
    prices_only = train(_cfg("linear", 5, inputs=["mid", "spread"]), momentum_market, tmp_path / "p", progress=False)
    s = S.float().clone().requires_grad_(True)
    out = logits_of(prices_only, P.float(), s, M)
    assert not out.requires_grad or torch.autograd.grad(out.sum(), s, allow_unused=True)[0] is None
