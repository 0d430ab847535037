"""The stress run: clean, random orders, the capital attack ensemble and a universal pattern against a user's model.

Snippets are the market's held-out test snippets, each ``grid_window`` grid steps long (what the model reads at its
decision time). "Fooled" is the config's criterion (:class:`~lobsim.attacks.objectives.PredictionChange` for
classifiers, :class:`~lobsim.attacks.objectives.ForecastShift` for regressors), measured against the model's own
clean output, so no true labels are needed; with a ``[target]`` the run also reports accuracy (classifiers) or the
forecast error (regressors) clean, under random orders and under attack.

- **random**: :class:`lobsim.attacks.random.RandomOrders` at every budget of the curve (same fill model).
- **capital**: :class:`lobsim.attacks.ensemble.EnsembleAttack` at the largest budget; gradient members run only when
  the model is differentiable, the gradient-free search always. A snippet is fooled at budget c when its cheapest
  verified fooling orders cost at most c (one run gives the whole curve).
- **universal**: :func:`lobsim.stress.universal.fit_universal` on training snippets, deployed on the test snippets.

Rates carry a block-bootstrap standard error (:mod:`lobsim.stats`; blocks of window + horizon grid steps).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from lobsim.stress.config import StressConfig
from lobsim.stress.model import UserModel

ATTACKS = ("random", "capital", "universal")


@dataclass
class StressSettings:
    """How hard to push: snippets, budgets ($), which attacks, their effort, seed, fill model."""

    n: int = 64
    budgets: list[float] = field(default_factory=lambda: [1e3, 1e4, 1e5])
    attacks: list[str] = field(default_factory=lambda: list(ATTACKS))
    max_iter: int = 100
    restarts: int = 2
    search_iter: int = 400
    universal_steps: int = 200
    universal_n: int = 64
    fill_model: str = "touch"
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    n_boot: int = 500

    def __post_init__(self) -> None:
        self.budgets = sorted(float(b) for b in self.budgets)
        if not self.budgets or self.budgets[0] <= 0:
            raise ValueError(f"stress: budgets must be positive dollars, got {self.budgets} (--budgets 1e3,1e4)")
        bad = [a for a in self.attacks if a not in ATTACKS]
        if bad or not self.attacks:
            raise ValueError(f"stress: attacks must be a non-empty subset of {list(ATTACKS)}, got {self.attacks} "
                             "(--attacks)")
        if self.n < 1 or self.max_iter < 1 or self.search_iter < 1 or self.universal_steps < 1:
            raise ValueError("stress: n, max_iter, search_iter and universal_steps must be >= 1")


@dataclass
class StressResult:
    """Everything the report is built from: ``summary`` (JSON), per-snippet ``rows`` and the drawing data."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    curve: list[dict[str, Any]]
    heatmap: dict[str, np.ndarray] | None
    pattern: np.ndarray | None
    dt: float


# -- the market the model reads ---------------------------------------------------------------------------------


def market_features(config: StressConfig) -> Any:
    """The FeatureConfig whose snippets are the model's windows (grid_window steps) and target horizon."""
    from lobsim.dataset import FeatureConfig

    inp = config.input
    H = config.target.horizon * inp.step if config.target else 1
    feats = FeatureConfig(dt=inp.dt, window_s=inp.grid_window * inp.dt, horizon_s=H * inp.dt)
    if feats.window != inp.grid_window or feats.horizon != H:
        raise ValueError(f"{config.source}: window {inp.grid_window} / horizon {H} grid steps do not round-trip "
                         f"through dt = {inp.dt}")
    return feats


def stress_market(market: Any, config: StressConfig) -> Any:
    """A Market over the same days whose snippets are the model's windows (and horizon, for the target)."""
    from lobsim.dataset import Market

    inp = config.input
    books = market.books if hasattr(market, "books") else list(market)
    dts = sorted({round(b.dt, 12) for b in books})
    if any(abs(d - inp.dt) > 1e-12 for d in dts):
        raise ValueError(f"{config.source}: [input] dt = {inp.dt} s but the data are on a {dts[0]} s grid; load the "
                         f"data with --dt {inp.dt} or change [input] dt")
    feats = market_features(config)
    split = getattr(market, "split", "auto")
    frac = getattr(market, "train_fraction", 0.8)
    return Market(books, feats, split=split, train_fraction=frac, source=getattr(market, "source", None))


def targets(market: Any, config: StressConfig, day: np.ndarray, start: np.ndarray) -> np.ndarray | None:
    """The realised change of the target series from the decision time to the horizon, in the model's units
    (change / ``[target] scale``; float64 (B,)), or None without a ``[target]``."""
    from lobsim.adapters import get

    tg = config.target
    if tg is None:
        return None
    a = get(tg.series)
    W, H = market.window, market.horizon
    out = np.empty(day.shape[0])
    for d in np.unique(day):
        sel = np.flatnonzero(day == d)
        bk = market.books[int(d)]
        v = a.numpy(bk.prices, bk.sizes)[:, 0]
        e = start[sel] + W - 1
        now, fut = v[e], v[e + H]
        out[sel] = fut - now if tg.change == "diff" else (fut / now - 1 if tg.change == "return" else np.log(fut / now))
    return out / tg.scale


def classes_of(change: np.ndarray, config: StressConfig) -> np.ndarray:
    """True class of each change: the number of ``[target] edges`` below it."""
    return np.searchsorted(np.asarray(config.target.edges, np.float64), change, side="left").astype(np.int64)


# -- evaluation of orders ---------------------------------------------------------------------------------------


def outputs_with(model: UserModel, batch: Any, orders: np.ndarray | None, fill_model: str = "touch",
                 chunk: int = 64) -> tuple[np.ndarray, np.ndarray | None]:
    """Model outputs (B, K) on the books plus the exactly propagated integer ``orders`` (None: clean), and delta."""
    from lobsim.attacks.capital import book_tensors_centred, gradient_mode, logits_of
    from lobsim.propagation import propagate

    outs, deltas = [], []
    for lo in range(0, batch.batch_size, chunk):
        idx = np.arange(lo, min(lo + chunk, batch.batch_size))
        sub = batch.select(idx)
        P, S, M, c = book_tensors_centred(sub)
        if orders is not None:
            delta = propagate(np.ascontiguousarray(orders[idx], dtype=np.int64), sub, fill_model=fill_model).delta
            deltas.append(delta)
            S = S + torch.as_tensor(delta, dtype=S.dtype)
        with torch.no_grad(), gradient_mode(model):
            outs.append(logits_of(model, P, S, M, c).double().cpu().numpy())
    return np.concatenate(outs), (np.concatenate(deltas) if orders is not None else None)


def make_objective(config: StressConfig) -> Any:
    from lobsim.attacks.objectives import ForecastShift, PredictionChange

    o = config.output
    if o.kind == "classifier":
        return PredictionChange(target=o.target_class)
    return ForecastShift(threshold=float(o.threshold), mode=o.fooled)


def directions(objective: Any) -> list[Any]:
    """The objectives the attacks run: a two-sided forecast move is attacked upwards and downwards (one-sided
    margins have a gradient at the clean book; ``|f - y|`` has none), anything else as is."""
    from lobsim.attacks.objectives import ForecastShift

    if isinstance(objective, ForecastShift) and objective.mode == "move":
        return [ForecastShift(objective.threshold, "up"), ForecastShift(objective.threshold, "down")]
    return [objective]


def merge_records(runs: list[list[Any]], names: list[str]) -> list[Any]:
    """Per snippet the cheapest success over several runs (one per direction); the winner names its direction."""
    if len(runs) == 1:
        return runs[0]
    out = []
    for recs in zip(*runs):
        ok = [(r.capital, k) for k, r in enumerate(recs) if r.success]
        k = min(ok)[1] if ok else 0
        r = recs[k]
        if r.success:
            r.winner = f"{r.winner} ({names[k]})"
        out.append(r)
    return out


def fooled_np(objective: Any, clean: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eligible, fooled) per snippet for outputs ``out`` against the clean outputs."""
    c, o = torch.as_tensor(clean), torch.as_tensor(out)
    y = objective.reference(c, torch.zeros(c.shape[0], dtype=torch.long))
    return objective.eligible(c, y).numpy(), objective.fooled(o, y).numpy()


# -- the run ------------------------------------------------------------------------------------------------------


def run_stress(model: UserModel, market: Any, settings: StressSettings | None = None, progress: bool = False
               ) -> StressResult:
    """Run the attacks of ``settings`` against ``model`` on ``market``'s test snippets (see the module docstring)."""
    from lobsim.attacks.ensemble import EnsembleAttack, masking_report
    from lobsim.attacks.random import RandomOrders
    from lobsim.attacks.records import dense_orders
    from lobsim.metrics import capital, cost, relative_size
    from lobsim.propagation import propagate
    from lobsim.stats import accuracy_se

    st = settings or StressSettings()
    cfg = model.config
    mk = stress_market(market, cfg)
    day, start = mk.test_refs(st.n, seed=st.seed)
    change = targets(mk, cfg, day, start)
    clf = cfg.output.kind == "classifier"
    truth = classes_of(change, cfg) if (clf and change is not None) else None
    batch = mk.batch(day, start)
    batch.labels = truth.copy() if truth is not None else np.zeros(batch.batch_size, np.int64)
    B = batch.batch_size
    block = mk.window + mk.horizon
    objective = make_objective(cfg)
    budgets = st.budgets
    cmax = budgets[-1]

    def se(values: np.ndarray, sel: np.ndarray | None = None) -> dict[str, Any]:
        sel = np.ones(B, bool) if sel is None else sel
        if not sel.any():
            return {"accuracy": float("nan"), "se": float("nan"), "n": 0}
        return accuracy_se(values[sel].astype(np.float64), day[sel], start[sel], block, st.n_boot, st.seed)

    def quality(out: np.ndarray) -> dict[str, Any]:
        """Accuracy (classifier) or forecast error (regressor) of outputs against the target."""
        if change is None:
            return {}
        if clf:
            r = se(out.argmax(1) == truth)
            return {"accuracy": r["accuracy"], "accuracy_se": r["se"]}
        f = out[:, 0]
        return {"mae": float(np.mean(np.abs(f - change))), "rmse": float(np.sqrt(np.mean((f - change) ** 2))),
                "sign_accuracy": float(np.mean(np.sign(f) == np.sign(change)))}

    clean, _ = outputs_with(model, batch, None, st.fill_model)
    elig, _ = fooled_np(objective, clean, clean)
    summary: dict[str, Any] = {
        "model": {"source": model.loaded.source, "file": model.loaded.path, "differentiable": model.differentiable,
                  "notes": list(model.loaded.notes), "input": model.describe_input(), "output": asdict(cfg.output)},
        "config": cfg.to_dict(),
        "data": {"days": [{"ticker": b.ticker, "date": b.date, "steps": int(b.n_steps), "levels": int(b.levels)}
                          for b in mk.books],
                 "dt": cfg.input.dt, "grid_window": mk.window, "horizon": mk.horizon, "split": mk.split,
                 "test_snippets": B, "eligible": int(elig.sum()), "block": block},
        "settings": asdict(st),
        "objective": objective.describe(),
        "clean": {"n": B, **quality(clean)},
    }
    if clf:
        summary["clean"]["prediction_counts"] = np.bincount(clean.argmax(1), minlength=cfg.output.classes).tolist()
        if truth is not None:
            summary["clean"]["truth_counts"] = np.bincount(truth, minlength=cfg.output.classes).tolist()
            best = int(np.argmax(np.bincount(truth, minlength=cfg.output.classes)))
            summary["clean"]["best_constant"] = {"class": best, "accuracy": float(np.mean(truth == best))}
    else:
        summary["clean"]["forecast_mean"] = float(clean[:, 0].mean())
        summary["clean"]["forecast_std"] = float(clean[:, 0].std())
    rows = [{"index": i, "day": int(day[i]), "start": int(start[i]), "eligible": bool(elig[i]),
             "truth": (int(truth[i]) if truth is not None else (float(change[i]) if change is not None else "")),
             "clean": (int(clean[i].argmax()) if clf else float(clean[i, 0]))} for i in range(B)]

    # random orders at every budget
    random_res: list[dict[str, Any]] = []
    if "random" in st.attacks:
        for k, c in enumerate(budgets):
            orders = RandomOrders(budget=c)(batch, np.random.default_rng([st.seed, 7, k]))
            out, delta = outputs_with(model, batch, orders, st.fill_model)
            _, fo = fooled_np(objective, clean, out)
            r = se(fo, elig)
            random_res.append({"budget": c, "fooled": int((fo & elig).sum()), "flip_rate": r["accuracy"],
                               "flip_rate_se": r["se"], "capital_mean": float(capital(orders, batch.prices).mean()),
                               "size_mean": float(np.nanmean(relative_size(delta, batch.sizes, batch.mask))),
                               **quality(out)})
            if k == len(budgets) - 1:
                for i in range(B):
                    rows[i]["random_fooled"] = bool(fo[i] and elig[i])
        summary["random"] = random_res

    # the capital attack ensemble at the largest budget
    curve: list[dict[str, Any]] = []
    heat = None
    if "capital" in st.attacks:
        members = ["greedy", "gradient", "search"] if model.differentiable else ["search"]
        runs = []
        for obj in directions(objective):
            atk = EnsembleAttack(budget=cmax, members=members, max_iter=st.max_iter, restarts=st.restarts,
                                 search_iter=st.search_iter, fill_model=st.fill_model, batch_size=st.batch_size,
                                 device=st.device, model_name="user model", objective=obj)
            runs.append(atk(model, batch, seed=st.seed, progress=progress))
        records = merge_records(runs, [getattr(o, "mode", "") for o in directions(objective)])
        orders = dense_orders(records, batch.window, batch.levels)
        after, delta = outputs_with(model, batch, orders, st.fill_model)
        ok = np.array([r.success for r in records])
        caps = np.array([r.capital for r in records])
        for i, r in enumerate(records):
            rows[i].update(fooled=bool(r.success), capital=(r.capital if r.success else ""),
                           cost=(r.cost if r.success else ""), relative_size=(r.relative_size if r.success else ""),
                           winner=r.winner, after=(int(after[i].argmax()) if clf else float(after[i, 0])),
                           status=r.status)
        for k, c in enumerate(budgets):
            f_c = ok & (caps <= c)
            out_c = np.where(f_c[:, None], after, clean)
            r = se(f_c, elig)
            point = {"budget": c, "fooled": int((f_c & elig).sum()), "flip_rate": r["accuracy"],
                     "flip_rate_se": r["se"], **quality(out_c)}
            if random_res:
                point["random_flip_rate"] = random_res[k]["flip_rate"]
                for key in ("accuracy", "mae"):
                    if key in random_res[k]:
                        point[f"random_{key}"] = random_res[k][key]
            curve.append(point)
        succ = [r for r in records if r.success]
        caps_s = np.array([r.capital for r in succ])
        summary["attack"] = {
            "budget": cmax, "members": members, "gradient_free": not model.differentiable,
            "eligible": int(elig.sum()), "fooled": len(succ), "flip_rate": curve[-1]["flip_rate"],
            "flip_rate_se": curve[-1]["flip_rate_se"],
            "capital": ({"min": float(caps_s.min()), "median": float(np.median(caps_s)), "mean": float(caps_s.mean()),
                         "max": float(caps_s.max())} if succ else None),
            "cost_mean": float(np.mean([r.cost for r in succ])) if succ else None,
            "cost_median": float(np.median([r.cost for r in succ])) if succ else None,
            "size_mean": float(np.mean([r.relative_size for r in succ])) if succ else None,
            "size_median": float(np.median([r.relative_size for r in succ])) if succ else None,
            "winners": {w: sum(r.winner == w for r in succ) for w in sorted({r.winner for r in succ})},
            "masking": masking_report(records),
            **{f"after_{k}": v for k, v in quality(np.where(ok[:, None], after, clean)).items()},
        }
        if succ:
            best = min(succ, key=lambda r: r.capital)
            i = best.index
            heat = {"sizes": batch.sizes[i], "orders": orders[i], "delta": delta[i]}
            summary["cheapest"] = {"index": i, "day": int(day[i]), "start": int(start[i]), "capital": best.capital,
                                   "cost": best.cost, "relative_size": best.relative_size, "winner": best.winner,
                                   "orders": len(best.orders), "shares": int(orders[i].sum()),
                                   "before": rows[i]["clean"], "after": rows[i]["after"]}
        summary["curve"] = curve

    # universal pattern
    pattern = None
    if "universal" in st.attacks:
        from lobsim.dataset import Market
        from lobsim.propagation import universal_orders
        from lobsim.stress.universal import fit_universal

        tday, tstart = Market.refs_in(mk.train_regions, st.universal_n, seed=st.seed + 1)
        tb = mk.batch(tday, tstart)
        tb.labels = np.zeros(tb.batch_size, np.int64)
        chunks = [tb.select(np.arange(lo, min(lo + 32, tb.batch_size))) for lo in range(0, tb.batch_size, 32)]
        fits = [fit_universal(model, obj, chunks, steps=st.universal_steps, budget=cmax, seed=st.seed)
                for obj in directions(objective)]
        fit = min(fits, key=lambda f: float(np.mean(f.history[-10:])) if f.history else np.inf)
        pattern = fit.pattern
        orders = np.asarray(universal_orders(pattern, batch), np.int64)
        out, delta = outputs_with(model, batch, orders, st.fill_model)
        _, fo = fooled_np(objective, clean, out)
        prop = propagate(orders, batch, fill_model=st.fill_model)
        r = se(fo, elig)
        caps_u = capital(orders, batch.prices)
        summary["universal"] = {"method": fit.method, "steps": st.universal_steps, "train_snippets": int(tb.batch_size),
                                "shares": int(pattern.sum()), "fooled": int((fo & elig).sum()),
                                "eligible": int(elig.sum()), "fool_rate": r["accuracy"], "fool_rate_se": r["se"],
                                "capital_mean": float(caps_u[elig].mean()) if elig.any() else None,
                                "cost_mean": float(cost(orders, batch, prop)[elig].mean()) if elig.any() else None,
                                "size_mean": float(np.nanmean(relative_size(delta, batch.sizes, batch.mask)[elig]))
                                if elig.any() else None, **quality(out)}
        for i in range(B):
            rows[i]["universal_fooled"] = bool(fo[i] and elig[i])
    from lobsim.stress.report import plain_summary

    summary["summary"] = plain_summary(summary)
    return StressResult(summary, rows, curve, heat, pattern, cfg.input.dt)
