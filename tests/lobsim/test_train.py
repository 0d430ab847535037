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


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train much faster on one thread, above all on a shared, busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def momentum_market() -> Market:
    """Three days of a random walk whose drift persists (flips ~every 400 steps): the past predicts the future."""
    books = [make_book(6000, seed=10 + i, regime_switch=1 / 400, date=f"2020-01-0{i + 1}") for i in range(3)]
    return Market(books, FEATS)


def _cfg(kind: str, steps: int, **kw) -> TrainConfig:
    model = ModelConfig(kind=kind, preset="small", window=FEATS.window, **kw.pop("model", {}))
    return TrainConfig(model=model, features=FEATS, steps=steps, batch=128, lr=3e-3, device="cpu", eval_n=2000,
                       scale_n=1024, ckpt_every=50, **kw)


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
    full = train(_cfg("mlp", 60, model={"hidden": [16]}), momentum_market, tmp_path / "full", progress=False)

    class Interrupting:
        """The market, but Ctrl-C arrives during the 37th batch."""

        def __init__(self, market: Market) -> None:
            self.market, self.calls = market, 0

        def __getattr__(self, name: str):
            return getattr(self.market, name)

        def sample_train(self, n, rng):
            self.calls += 1
            if self.calls == 38:  # call 1 fits the normaliser
                raise KeyboardInterrupt
            return self.market.sample_train(n, rng)

    with pytest.raises(KeyboardInterrupt):
        train(_cfg("mlp", 60, model={"hidden": [16]}), Interrupting(momentum_market), tmp_path / "cut",
              progress=False)
    assert (tmp_path / "cut" / "checkpoint.safetensors").exists() and not (tmp_path / "cut" / "model.json").exists()
    resumed = train(_cfg("mlp", 60, model={"hidden": [16]}), momentum_market, tmp_path / "cut", progress=False)
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
    assert md.splitlines()[0] == "| Ticker | Linear | LSTM |" and md.splitlines()[2].startswith("| THICK |")
    rows = json.loads((tmp_path / "table" / "table-3.1.json").read_text())
    assert {r["kind"] for r in rows} == {"linear", "lstm"}
    res = runner.invoke(main, ["lob", "train", "--model", "mlp", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "either --data" in res.output


def test_accuracy_table_layout_and_duplicates() -> None:
    from lobsim.evaluate import accuracy_table

    ev = {"accuracy": 0.3656, "stderr": 0.0048, "n": 10000, "majority_accuracy": 0.3}
    runs = [{"run": "a", "ticker": "F", "kind": "mlp", "preset": "small", "eval": ev},
            {"run": "b", "ticker": "F", "kind": "linear", "preset": "small", "eval": ev},
            {"run": "c", "ticker": "GE", "kind": "lstm", "preset": "small", "eval": ev}]
    md, rows = accuracy_table(runs)
    lines = md.splitlines()
    assert lines[0] == "| Ticker | Linear | MLP | LSTM |"
    assert lines[2] == "| F | 36.56 (±0.48) | 36.56 (±0.48) | - |"
    assert lines[3] == "| GE | - | - | 36.56 (±0.48) |"
    assert len(rows) == 3
    with pytest.raises(ValueError, match="both fill F / MLP"):
        accuracy_table(runs + [dict(runs[0], run="d")])
