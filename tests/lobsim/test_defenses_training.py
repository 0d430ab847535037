"""Adversarial and certified training (issue 13): the training attack stays in its dollar budget and finds what
a random start does not; adversarial training raises the minimal capital of held-out snippets (measured against
plain training on two seeds); the catastrophic-overfitting guard restores weights; universal and certified training
run and resume exactly; a user's torch model wrapped like lobsim.stress models trains through the book interface."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lobsim.attacks.capital import CapitalAttack
from lobsim.attacks.objectives import PredictionChange
from lobsim.dataset import FeatureConfig, Market
from lobsim.defenses import DefenseConfig, DefenseHook, robust_finetune, train_defended
from lobsim.defenses.order_attack import Book, OrderAttack, project_budget
from lobsim.models import ModelConfig
from lobsim.train import TrainConfig, load_run, train
from tests.lobsim.test_dataset import make_book

FEATS = FeatureConfig(dt=0.01, window_s=0.4, horizon_s=0.2)  # W = 40, H = 20


@pytest.fixture(scope="module")
def market() -> Market:
    """A random walk with a persistent drift (a learnable momentum signal), $50 a share, ~100 shares a level."""
    books = [make_book(4000, seed=20 + i, regime_switch=1 / 300, date=f"2020-01-0{i + 1}") for i in range(3)]
    return Market(books, FEATS)


def _cfg(kind: str, steps: int, defense: dict | None = None, seed: int = 0, **kw) -> TrainConfig:
    model = ModelConfig(kind=kind, preset="small", window=FEATS.window, hidden=[16] if kind == "mlp" else None,
                        pool=4 if kind == "lstm" else None, layers=1 if kind == "lstm" else None)
    return TrainConfig(model=model, features=FEATS, steps=steps, batch=64, device="cpu", eval_n=200, scale_n=512,
                       lr=3e-3, seed=seed, defense=defense, **kw)


def test_defense_config_is_checked() -> None:
    with pytest.raises(ValueError, match="--defense must be one of"):
        DefenseConfig(kind="magic")
    with pytest.raises(ValueError, match="--defense-budget must be a positive"):
        DefenseConfig(budget=0.0)
    d = DefenseConfig(kind="pgd")
    assert (d.steps, d.alpha, d.guard_every) == (5, 0.5, 0)
    assert DefenseConfig(kind="fast").guard_every == 50
    assert DefenseConfig.from_dict(d.to_dict()) == d


def test_project_budget_is_the_euclidean_projection() -> None:
    rng = np.random.default_rng(0)
    v = torch.as_tensor(rng.normal(size=(20, 30)) * 3)
    eps = torch.as_tensor(rng.random(20) * 10)
    p = project_budget(v, eps)
    assert bool((p >= 0).all()) and bool((p.sum(1) <= eps + 1e-9).all())
    for i in range(20):  # reference: bisection on the shift theta of the KKT conditions
        x = v[i].clamp_min(0)
        if float(x.sum()) <= float(eps[i]):
            ref = x
        else:
            lo, hi = 0.0, float(v[i].max())
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if float((v[i] - mid).clamp_min(0).sum()) > float(eps[i]) else (lo, mid)
            ref = (v[i] - hi).clamp_min(0)
        assert torch.allclose(p[i], ref, atol=1e-7)


def test_training_attack_keeps_the_budget_and_beats_its_random_start(market: Market, tmp_path: Path) -> None:
    trained = train(_cfg("linear", 60), market, tmp_path / "m", progress=False)
    day, start = market.test_refs(32, seed=3)
    book = Book(market.batch(day, start, trained.tau))
    y = torch.as_tensor(book.batch.labels)
    eps = torch.full((32,), 20_000.0)
    start_only = OrderAttack(steps=1, alpha=1e-9)(trained, book, y, eps, torch.Generator().manual_seed(1))
    adv = OrderAttack(steps=3, alpha=0.8)(trained, book, y, eps, torch.Generator().manual_seed(1))
    for a in (start_only, adv):
        assert bool((a >= 0).all())
        assert bool((a.reshape(32, -1)[~book.real] == 0).all())
        assert bool((book.capital(a) <= eps * (1 + 1e-5)).all())
    with torch.no_grad():
        loss_start = F.cross_entropy(book.logits(trained, start_only), y)
        loss_adv = F.cross_entropy(book.logits(trained, adv), y)
        loss_clean = F.cross_entropy(book.logits(trained), y)
    assert float(loss_adv) > float(loss_start) and float(loss_adv) > float(loss_clean)


def _median_capital(trained, market: Market, n: int = 24) -> np.ndarray:
    day, start = market.test_refs(n, seed=5)
    batch = market.batch(day, start, trained.tau)
    recs = CapitalAttack(budget=3e6, max_iter=25, objective=PredictionChange())(trained, batch, seed=0)
    return np.array([r.capital if r.success else np.inf for r in recs])


def test_adversarial_training_raises_the_minimal_capital_on_held_out_snippets(market: Market, tmp_path: Path) -> None:
    """A measured comparison on two seeds: same data, same steps, with and without the fast defense; the minimal
    capital that changes each held-out snippet's prediction (all snippets, prediction-change objective)."""
    higher, pairs = [], []
    for seed in (0, 1):
        plain = train_defended(_cfg("linear", 120, seed=seed), market, tmp_path / f"plain{seed}", progress=False)
        fast = train_defended(_cfg("linear", 120, DefenseConfig(kind="fast", budget=60_000.0).to_dict(), seed=seed),
                              market, tmp_path / f"fast{seed}", progress=False)
        cp, cf = _median_capital(plain, market), _median_capital(fast, market)
        higher.append(np.median(cf) > np.median(cp))
        pairs.append(np.mean(cf > cp))
        info = json.loads((tmp_path / f"fast{seed}" / "train_log.json").read_text())["defense"]
        assert info["config"]["kind"] == "fast" and info["guard"]["history"]
    assert all(higher), (higher, pairs)
    assert np.mean(pairs) > 0.5, pairs  # and snippet by snippet, more often higher than not


def test_a_defended_config_needs_the_hook(market: Market, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="train_defended"):
        train(_cfg("linear", 5, DefenseConfig().to_dict()), market, tmp_path / "x", progress=False)


def test_guard_restores_the_previous_weights_when_robust_accuracy_collapses(market, tmp_path, monkeypatch) -> None:
    seq = iter([0.6, 0.1])  # the second check collapses
    seen: list[dict] = []

    def fake(self, refs, eps, attack, seed_tag=98):
        seen.append({k: v.clone() for k, v in self.trained.model.state_dict().items()})
        return next(seq)

    monkeypatch.setattr(DefenseHook, "robust_accuracy", fake)
    d = DefenseConfig(kind="fast", budget=20_000.0, guard_every=5).to_dict()
    trained = train_defended(_cfg("linear", 40, d, val_fraction=0.0), market, tmp_path / "g", progress=False)
    log = json.loads((tmp_path / "g" / "train_log.json").read_text())
    assert log["defense"]["guard"]["triggered_step"] == 10 and log["steps_done"] == 10
    for k, v in trained.model.state_dict().items():  # the weights of the first (good) check
        assert torch.equal(v, seen[0][k])


@pytest.mark.parametrize("kind", ["universal", "certified", "fast"])
def test_defended_training_resumes_bit_identically(market: Market, tmp_path: Path, kind: str) -> None:
    d = DefenseConfig(kind=kind, budget=20_000.0, guard_every=0).to_dict()
    cfg = _cfg("mlp", 12, d, ckpt_every=4, val_fraction=0.0)
    full = train_defended(cfg, market, tmp_path / "full", progress=False)

    class Interrupt:
        def __init__(self, m: Market, after: int) -> None:
            self.m, self.left = m, after

        def __getattr__(self, name: str):
            return getattr(self.m, name)

        def sample_regions(self, regions, n, rng):
            if self.left == 0:
                raise KeyboardInterrupt
            self.left -= 1
            return self.m.sample_regions(regions, n, rng)

    with pytest.raises(KeyboardInterrupt):
        train_defended(cfg, Interrupt(market, 7), tmp_path / "cut", progress=False)
    resumed = train_defended(cfg, market, tmp_path / "cut", progress=False)
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    info = json.loads((tmp_path / "full" / "train_log.json").read_text())["defense"]
    assert info["config"]["kind"] == kind and info["log"]


def test_certified_training_refuses_an_lstm_and_lstm_adversarial_training_runs(market, tmp_path) -> None:
    with pytest.raises(ValueError, match="only the project's Linear and MLP"):
        train_defended(_cfg("lstm", 3, DefenseConfig(kind="certified").to_dict()), market, tmp_path / "c",
                       progress=False)
    tm = train_defended(_cfg("lstm", 6, DefenseConfig(kind="fast", guard_every=3).to_dict(), val_fraction=0.0),
                        market, tmp_path / "l", progress=False)
    assert tm.info["defense"]["guard"]["history"]
    assert load_run(tmp_path / "l").config.defense["kind"] == "fast"


class WrappedUserModel:
    """A user's own torch model behind the interface of lobsim.stress models: it reads absolute prices (the book's
    centre is passed in), computes its own inputs (SWA returns and the best-level imbalance) and outputs 3 logits."""

    needs_centre = True

    def __init__(self, window: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(2 * window, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def logits_from_book(self, P, S, M, centre=None):
        from lobsim.adapters import features_torch

        x = features_torch(("swa", "imbalance"), P + centre[:, None, None, None].to(P.dtype), S, M)
        swa = x[..., 0]
        ret = (swa - swa[:, -1:]) / swa[:, -1:] * 1e4  # basis points relative to the last SWA
        return self.model(torch.cat([ret, x[..., 1]], dim=1).float())


def test_a_wrapped_user_torch_model_trains_against_the_attack(market: Market) -> None:
    user = WrappedUserModel(FEATS.window)
    before = [p.detach().clone() for p in user.model.parameters()]
    tau = market.fit_tau()
    for kind in ("fast", "universal"):
        log = robust_finetune(user, market, tau, DefenseConfig(kind=kind, budget=20_000.0), steps=4, batch=16)
        assert len(log["log"]) == 4 and all(np.isfinite(e["loss"]) for e in log["log"])
    assert any(not torch.equal(a, b) for a, b in zip(before, user.model.parameters()))
    with pytest.raises(ValueError, match="certified training needs a project"):
        robust_finetune(user, market, tau, DefenseConfig(kind="certified"), steps=1)

    class NoTorch:
        model = None

    with pytest.raises(ValueError, match="torch module"):
        robust_finetune(NoTorch(), market, tau, DefenseConfig(), steps=1)


def test_a_torch_model_loaded_through_the_stress_interface_trains_against_the_attack() -> None:
    """The same path for a model given to `advsim lob stress` (lobsim.stress.UserModel around a torch module)."""
    from lobsim.stress import UserModel, from_callable, parse_config
    from lobsim.stress.run import market_features

    W = 8
    cfg = parse_config({"input": {"adapters": ["microprice", "imbalance"], "dt": 0.01, "step": 2, "window": W,
                                  "channels": {"microprice": {"norm": "log_returns", "scale": 1e-4}}},
                        "output": {"kind": "classifier", "classes": 3}})
    books = [make_book(2000, seed=60 + i, regime_switch=1 / 300, date=f"2020-01-0{i + 1}") for i in range(2)]
    market = Market(books, market_features(cfg))
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(W * 2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    user = UserModel(from_callable(net), cfg, books[0].levels)
    before = [p.detach().clone() for p in net.parameters()]
    log = robust_finetune(user, market, market.fit_tau(), DefenseConfig(kind="fast", budget=20_000.0), steps=3,
                          batch=8)
    assert len(log["log"]) == 3 and all(np.isfinite(e["loss"]) for e in log["log"])
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))
