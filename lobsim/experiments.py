"""The attack pipeline: one config -> one run directory (the demo and the thesis' Tables 3.2 / 3.3, Figs 3.1-3.3).

``run_experiment(cfg, out)``: market (synthetic LOBSTER files or real ones) -> train Linear / MLP / LSTM ->
random-orders baseline, capital-constrained attack (one run at the largest budget gives the whole
accuracy-vs-capital curve), transfer of the crafted orders between models (gradient-masking check), universal
patterns with and without the size penalty and their transfer matrix -> tables, figures and metrics.json.
The single-purpose runs behind ``advsim lob attack capital|random|universal`` live here too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_loaders.rundir import finish_run, make_run_dir, resolve_device
from lobsim.attacks.capital import evaluate_orders, transfer_accuracy
from lobsim.attacks.ensemble import make_capital_attack, masking_report
from lobsim.attacks.records import capital_curve, summarize, write_jsonl
from lobsim.attacks.universal import UniversalAttack, evaluate_universal
from lobsim.features import CLASS_NAMES
from lobsim.snippets import SnippetBatch

DEFAULT_BUDGETS = [1e3, 3e3, 1e4, 3e4, 1e5, 3e5, 1e6, 2e6]


@dataclass
class ExperimentConfig:
    """Everything that determines an attack experiment (JSON-serialisable; same config => same numbers).

    Data: ``synthetic`` preset (thick / thin) written with ``days`` x ``hours``, or ``data`` paths of LOBSTER days.
    The demo uses a coarse grid (dt = 0.1 s, 60 s window = 600 steps) so it runs on a 2-core CPU in minutes; the
    ``paper`` preset uses the thesis' 0.01 s grid (6,000 steps) and thesis-sized models on a GPU.
    """

    synthetic: str | None = "thick"
    data: list[str] = field(default_factory=list)
    days: int = 3
    hours: float = 1.0
    dt: float = 0.1
    window_s: float = 60.0
    horizon_s: float = 10.0
    models: list[str] = field(default_factory=lambda: ["linear", "mlp", "lstm"])
    inputs: list[str] = field(default_factory=lambda: ["swa"])  # the models' input channels (lobsim.adapters)
    model_preset: str = "small"
    train_steps: int = 300
    train_batch: int = 128
    eval_n: int = 2000
    attack_n: int = 128
    budget: float = 100_000.0
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    max_iter: int = 100
    step_shares: float = 0.1
    attack_batch: int = 64
    attack: str = "ensemble"  # capital attack: ensemble | gradient | search (lobsim.attacks.ensemble)
    step_rule: str = "budget"  # gradient member: budget (scale-free) | thesis (spec-000 2.12 as written)
    restarts: int = 2
    search_iter: int = 400
    random_budget: float = 2_000_000.0
    surrogates: list[str] = field(default_factory=lambda: ["linear", "mlp"])
    universal_target: int = 0
    universal_gamma: float = 0.05
    universal_steps: int = 150
    universal_lr: float = 0.5
    universal_train_n: int = 256
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if bool(self.synthetic) == bool(self.data):
            raise ValueError("ExperimentConfig: give either synthetic (a preset name) or data (LOBSTER paths)")
        if self.budget > max(self.budgets):
            self.budgets = sorted(set(self.budgets) | {self.budget})
        for s in self.surrogates:
            if s not in self.models:
                raise ValueError(f"ExperimentConfig: surrogate {s!r} is not among the models {self.models}")


PRESETS: dict[str, dict[str, Any]] = {
    # 6 days: 4 train, 2 test; victims read SWA plus the book's imbalances, so that they have skill on the thick
    # market after 300 steps (docs/reproduction.md); `--inputs swa` gives the thesis' SWA-only victims.
    "demo": {"days": 6, "inputs": ["swa", "imbalance", "depth_imbalance"]},
    "tiny": {"days": 2, "hours": 0.25, "window_s": 20.0, "horizon_s": 5.0, "models": ["linear", "mlp"],
             "surrogates": ["mlp"], "train_steps": 30, "train_batch": 64, "eval_n": 200, "attack_n": 12,
             "max_iter": 30, "step_shares": 3.0, "restarts": 1, "search_iter": 60, "universal_steps": 15,
             "universal_train_n": 32,
             "budgets": [1e4, 1e5, 1e6]},
    "paper": {"days": 5, "dt": 0.01, "model_preset": "paper", "train_steps": 5000, "train_batch": 2000,
              "eval_n": 10_000, "attack_n": 1000, "max_iter": 300, "attack_batch": 128, "universal_steps": 1000,
              "universal_train_n": 2048, "universal_lr": 0.5},
}


def preset_config(name: str, **overrides: Any) -> ExperimentConfig:
    """A named preset (demo, tiny, paper) with overrides (None values are ignored)."""
    if name not in PRESETS:
        raise ValueError(f"unknown experiment preset {name!r}; choose one of {sorted(PRESETS)}")
    d = dict(PRESETS[name])
    d.update({k: v for k, v in overrides.items() if v is not None})
    if d.get("data"):
        d["synthetic"] = None  # real data replace the synthetic market
    return ExperimentConfig(**d)


def experiment_market(cfg: ExperimentConfig, out: Path, progress: bool):
    """The market of an experiment config (synthetic days written into ``out/data``, or the given LOBSTER days):
    ``(Market, FeatureConfig, data entry for the trained models' configs)``."""
    from lobsim.dataset import FeatureConfig, Market

    paths = list(cfg.data)
    if cfg.synthetic:
        from data_loaders.synthetic import write_days

        paths = [str(p) for p in write_days(out / "data", cfg.synthetic, days=cfg.days, hours=cfg.hours,
                                            seed=cfg.seed, progress=progress)]
    features = FeatureConfig(dt=cfg.dt, window_s=cfg.window_s, horizon_s=cfg.horizon_s)
    data_cfg = {"paths": [str(Path(p).resolve()) for p in paths], "dt": cfg.dt, "start": None, "end": None,
                "split": "auto", "train_fraction": 0.8, "synthetic": cfg.synthetic}
    return Market.from_paths(paths, dt=cfg.dt, features=features, progress=progress), features, data_cfg


def run_data_entry(data_cfg: dict[str, Any], run_dir: Path, root: Path) -> dict[str, Any]:
    """``data_cfg`` with paths stored relative to ``run_dir`` when the data lives inside ``root`` (movable runs)."""
    from data_loaders.rundir import stored_path

    return dict(data_cfg, paths=[stored_path(p, run_dir, root=root) for p in data_cfg["paths"]])


def training_batches(market: Any, n: int, seed: int, chunk: int = 64) -> list[SnippetBatch]:
    """``n`` training snippets (seeded) cut into batches of ``chunk`` for the universal attack."""
    day, start = market.sample_train(n, np.random.default_rng([seed, 7]))
    return [market.batch(day[i:i + chunk], start[i:i + chunk]) for i in range(0, n, chunk)]


def _bar(items: list, progress: bool, desc: str, unit: str):
    """``items`` wrapped in a tqdm progress bar when ``progress``."""
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit)


def _row(ticker: str, name: str, **vals: Any) -> dict[str, Any]:
    return {"ticker": ticker, "model": name, **vals}


def capital_results(records: list, budget: float, budgets: list[float], ticker: str, name: str) -> dict[str, Any]:
    """Summary at ``budget``, the curve over ``budgets`` and the Table 3.2 row of one capital-attack run."""
    s = summarize(records, budget)
    curve = capital_curve(records, budgets).tolist()
    won = ", ".join(f"{k} {v}" for k, v in s["winners"].items()) or None
    row = _row(ticker, name, a_test=s["a_test"], a_adv=s["a_adv"], capital=s["capital_mean"],
               capital_first=s["first_capital_mean"], size=s["size_mean"], cost=s["cost_mean"], winners=won,
               masking=s["masking"], n=s["n"])
    return {"summary": s, "curve": curve, "row": row, "masking": masking_report(records)}


def accuracy_errors(records: list, budget: float, budgets: list[float], block: int | str,
                    rand_correct: np.ndarray | None = None, seed: int = 0) -> dict[str, Any]:
    """Block-bootstrap SEs (``lobsim.stats``, blocks of ``block`` grid steps) of A_test, A_adv at ``budget``, A_rand
    and of every point of the accuracy-vs-capital curve, from per-snippet correctness of the attacked snippets."""
    from lobsim.attacks.records import fooled_at
    from lobsim.stats import block_bootstrap

    day = np.array([r.day for r in records], np.int64)
    start = np.array([r.start for r in records], np.int64)
    clean = np.array([r.attacked for r in records], bool)  # attacked = classified correctly before the attack
    cols = [clean] + [clean & ~fooled_at(records, c) for c in [budget, *budgets]]
    if rand_correct is not None:
        cols.append(np.asarray(rand_correct, bool))
    res = block_bootstrap(np.stack(cols, 1).astype(np.float64), day, start, block, seed=seed)
    k = len(budgets)
    return {"a_test_se": res[0].se, "a_adv_se": res[1].se, "curve_se": [r.se for r in res[2:2 + k]],
            "a_rand_se": res[2 + k].se if rand_correct is not None else None, "n_blocks": res[0].n_blocks,
            "block": block, "se_kind": "block bootstrap"}


def run_experiment(cfg: ExperimentConfig, out: str | Path, progress: bool = True, overwrite: bool = False
                   ) -> dict[str, Any]:
    """The whole pipeline into one run directory; returns the metrics written to metrics.json."""
    from lobsim.attacks.random import RandomOrders
    from lobsim.report import figures_from_run, write_report
    from lobsim.train import default_config, evaluate, train

    t0 = time.perf_counter()
    out = make_run_dir(out, cfg, overwrite=overwrite)
    device = resolve_device(cfg.device)
    timings: dict[str, float] = {}
    market, features, data_cfg = experiment_market(cfg, out, progress)
    ticker = market.books[0].ticker
    timings["data"] = time.perf_counter() - t0

    # -- models --------------------------------------------------------------------------------------------
    models, evals = {}, {}
    for i, kind in enumerate(cfg.models):
        t = time.perf_counter()
        tcfg = default_config(kind, cfg.model_preset, features, steps=cfg.train_steps, batch=cfg.train_batch,
                              device=device, seed=cfg.seed + i, eval_n=cfg.eval_n, inputs=cfg.inputs,
                              data=run_data_entry(data_cfg, out / "models" / kind, out))
        models[kind] = train(tcfg, market, out / "models" / kind, progress=progress, resume=False)
        evals[kind] = evaluate(models[kind], market, n=cfg.eval_n, seed=cfg.seed)
        timings[f"train_{kind}"] = time.perf_counter() - t

    # -- the attacked snippets (same for every model; labels use each model's tau, equal on one market) ------
    day, start = market.test_refs(cfg.attack_n, seed=cfg.seed + 1)
    tau = models[cfg.models[0]].tau
    batch = market.batch(day, start, tau)

    rows, curves, clean_att, records, results = [], {}, {}, {}, {}
    t = time.perf_counter()
    random_orders = RandomOrders(budget=cfg.random_budget)(batch, np.random.default_rng([cfg.seed, 3]))
    a_rands, rand_correct = {}, {}
    for kind in _bar(list(models), progress, f"random orders (${cfg.random_budget:,.0f})", "model"):
        pred_r, _ = evaluate_orders(models[kind], batch, random_orders, device=device)
        a_rands[kind] = float(np.mean(pred_r == batch.labels))
        rand_correct[kind] = pred_r == batch.labels
    timings["random"] = time.perf_counter() - t
    for kind, m in models.items():
        t = time.perf_counter()
        a_rand = a_rands[kind]
        atk = make_capital_attack(cfg.attack, budget=max(cfg.budgets), max_iter=cfg.max_iter, restarts=cfg.restarts,
                                  step_rule=cfg.step_rule, search_iter=cfg.search_iter, step_shares=cfg.step_shares,
                                  batch_size=cfg.attack_batch, device=device, model_name=kind)
        recs = atk(m, batch, seed=cfg.seed, progress=progress)
        write_jsonl(out / f"records_{kind}.jsonl", recs)
        res = capital_results(recs, cfg.budget, cfg.budgets, ticker, kind)
        res["row"].update(a_rand=a_rand, a_test_eval=evals[kind].accuracy)
        res["errors"] = accuracy_errors(recs, cfg.budget, cfg.budgets, market.window + market.horizon,
                                        rand_correct=rand_correct[kind], seed=cfg.seed)
        res["row"].update({k: res["errors"][k] for k in ("a_test_se", "a_adv_se", "a_rand_se")})
        res["a_rand"] = a_rand
        res["eval"] = evals[kind].to_dict()
        rows.append(res["row"])
        curves[kind] = res["curve"]
        clean_att[kind] = res["summary"]["a_test"]
        records[kind], results[kind] = recs, res
        timings[f"attack_{kind}"] = time.perf_counter() - t

    # -- transfer of per-snippet orders (gradient-masking check) ----------------------------------------------
    transfer = {src: {dst: transfer_accuracy(records[src], batch, models[dst], device=device) for dst in models}
                for src in models}

    # -- universal patterns ----------------------------------------------------------------------------------
    t = time.perf_counter()
    train_batches = training_batches(market, cfg.universal_train_n, cfg.seed)
    patterns = {}
    for s in cfg.surrogates:
        ua = UniversalAttack(target=cfg.universal_target, gamma=cfg.universal_gamma, steps=cfg.universal_steps,
                             lr=cfg.universal_lr, device=device)
        patterns[s] = ua.fit(models[s], train_batches, seed=cfg.seed, progress=progress)
    matrix = {s: {v: evaluate_universal(patterns[s].pattern, models[v], batch, cfg.universal_target, device=device)
                  for v in models} for s in patterns}
    abl_src = "mlp" if "mlp" in patterns else next(iter(patterns))
    plain = UniversalAttack(target=cfg.universal_target, gamma=0.0, steps=cfg.universal_steps, lr=cfg.universal_lr,
                            device=device).fit(models[abl_src], train_batches, seed=cfg.seed, progress=progress)
    ablation = {"gamma=0": {v: evaluate_universal(plain.pattern, models[v], batch, cfg.universal_target,
                                                    device=device) for v in models},
                f"gamma={cfg.universal_gamma:g}": matrix[abl_src]}
    timings["universal"] = time.perf_counter() - t

    # -- figures' data and report ------------------------------------------------------------------------------
    k0 = 0
    np.savez(out / "fig_3_1.npz", series=market.series[int(day[k0])], dt=cfg.dt, start=int(start[k0]),
             window=market.window, horizon=market.horizon)
    np.savez(out / "fig_3_2.npz", **{"pattern_no_penalty": plain.pattern,
                                     f"pattern_penalty_gamma_{cfg.universal_gamma:g}": patterns[abl_src].pattern},
             dt=cfg.dt, title=f"universal patterns on the {abl_src} surrogate, target "
                              f"{['down', 'flat', 'up'][cfg.universal_target]}")
    fig_src = "mlp" if "mlp" in records else cfg.models[0]
    won = [r for r in records[fig_src] if r.success and r.capital <= cfg.budget] or \
          [r for r in records[fig_src] if r.success]
    if won:
        from lobsim.attacks.records import dense_orders
        from lobsim.propagation import propagate

        r = won[0]
        one = batch.select([r.index])
        o = dense_orders([r], one.window, one.levels)
        delta = propagate(o, one).delta
        np.savez(out / "fig_3_3.npz", sizes=np.where(one.mask[0], one.sizes[0], 0), orders=o[0], delta=delta[0],
                 dt=cfg.dt, title=f"{fig_src}: true class {CLASS_NAMES[r.label]} -> predicted "
                                  f"{CLASS_NAMES[r.pred_after]}, capital ${r.capital:,.0f}")
    grid_note = (f"grid dt = {cfg.dt} s, window {cfg.window_s:g} s = {market.window} steps, horizon "
                 f"{cfg.horizon_s:g} s")
    report = {
        "table_3_2": rows,
        "table_3_3": [{"title": f"universal target {['down', 'flat', 'up'][cfg.universal_target]}, gamma = "
                                f"{cfg.universal_gamma:g} ({ticker}, {grid_note})",
                       "target": cfg.universal_target, "gamma": cfg.universal_gamma, "matrix": matrix},
                      {"title": f"penalty ablation, surrogate {abl_src}", "target": cfg.universal_target,
                       "gamma": None, "matrix": ablation}],
        "curves": [{"title": f"Accuracy vs capital ({ticker}, {len(batch.labels)} test snippets)",
                    "budgets": list(cfg.budgets), "accuracy": curves, "clean": clean_att,
                    "se": {k: results[k]["errors"]["curve_se"] for k in curves}}],
        "transfer": [{"title": f"orders crafted on one model, replayed on another ({ticker}, {len(batch.labels)} "
                               "test snippets)", "matrix": transfer}],
        "baselines": {k: evals[k].to_dict() for k in models},
    }
    timings["total"] = time.perf_counter() - t0
    metrics = {
        "ticker": ticker, "device": device, "grid": grid_note, "market": market.describe(),
        "models": {k: {kk: vv for kk, vv in v.items() if kk != "row"} for k, v in results.items()},
        "transfer": transfer,
        "universal": {s: {"pattern_shares": int(p.pattern.sum()), "final_ce": p.history["ce"][-1],
                          "final_size": p.history["size"][-1]} for s, p in patterns.items()},
        "report": report, "timings_s": timings,
    }
    for s, p in patterns.items():
        np.save(out / f"universal_{s}.npy", p.pattern, allow_pickle=False)
    np.save(out / f"universal_{abl_src}_no_penalty.npy", plain.pattern, allow_pickle=False)
    figs = figures_from_run(out, out)
    write_report(out, report, title=f"advsim attack experiment: {ticker} ({grid_note})", figures=figs)
    finish_run(out, metrics)
    return metrics


# -- single-purpose runs (advsim lob attack ...) -----------------------------------------------------------------


def _load(run: str | Path, device: str):
    from lobsim.train import load_run

    return load_run(run, device=device)


def _name(run: str | Path) -> str:
    return Path(run).name


def run_attack(kind: str, model_run: str | Path, out: str | Path, victims: tuple[str, ...] = (), n: int = 200,
               budget: float = 100_000.0, budgets: list[float] | None = None, seed: int = 0, device: str = "auto",
               max_iter: int = 100, step_shares: float = 0.1, target: int = 0, gamma: float = 0.05,
               steps: int = 300, lr: float = 0.5, train_n: int = 512, progress: bool = True,
               overwrite: bool = False, attack: str = "ensemble", step_rule: str = "budget", restarts: int = 2,
               search_iter: int = 400, minimize: bool = True) -> dict[str, Any]:
    """``advsim lob attack capital|random|universal``: attack ``n`` test snippets of the model's own market.

    capital: ``attack`` ensemble (default) | gradient | search, see :func:`lobsim.attacks.ensemble.make_capital_attack`.
    """
    from lobsim.attacks.random import RandomOrders

    if kind not in ("capital", "random", "universal"):
        raise ValueError(f"attack kind must be capital, random or universal, got {kind!r}")
    _check_attack_values(n=n, budget=budget, budgets=budgets, max_iter=max_iter, step_shares=step_shares,
                         target=target, gamma=gamma, steps=steps, lr=lr, train_n=train_n)
    if kind == "capital":  # refuse bad attack settings before anything is written
        make_capital_attack(attack, budget=budget, max_iter=max_iter, restarts=restarts, step_rule=step_rule,
                            search_iter=search_iter, step_shares=step_shares, minimize=minimize)
    device = resolve_device(device)
    cfg = {k: v for k, v in locals().items() if k not in ("RandomOrders", "progress", "overwrite")}
    cfg["model_run"], cfg["out"], cfg["victims"] = str(model_run), str(out), [str(v) for v in victims]
    # Everything that can be checked is checked before the run directory exists: a refused attack writes nothing.
    from lobsim.runs import check_compatible

    name = _name(model_run)
    names = [name] + [_name(v) for v in victims]
    if len(set(names)) != len(names):
        raise ValueError(f"--model and --victims need distinct folder names (they name the table rows): {names}")
    model = _load(model_run, device)
    vic = {_name(v): _load(v, device) for v in victims}
    check_compatible(model, vic)
    from lobsim.runs import market_of

    market = market_of(model, progress=progress)
    ticker = market.books[0].ticker
    day, start = market.test_refs(n, seed=seed + 1)
    batch = market.batch(day, start, model.tau)
    out = make_run_dir(out, cfg, overwrite=overwrite)
    metrics: dict[str, Any] = {"kind": kind, "model": name, "ticker": ticker, "n": int(batch.batch_size)}
    if kind == "random":
        orders = RandomOrders(budget=budget)(batch, np.random.default_rng([seed, 3]))
        rows = []
        models = {name: model, **vic}
        for nm in _bar(list(models), progress, f"random orders (${budget:,.0f})", "model"):
            m = models[nm]
            pred, _ = evaluate_orders(m, batch, orders, device=device)
            clean, _ = evaluate_orders(m, batch, None, device=device)
            from lobsim.stats import block_bootstrap

            se = block_bootstrap(np.stack([clean == batch.labels, pred == batch.labels], 1).astype(np.float64),
                                 batch.day, batch.start, market.window + market.horizon, seed=seed)
            rows.append(_row(ticker, nm, a_test=float(np.mean(clean == batch.labels)),
                             a_rand=float(np.mean(pred == batch.labels)), n=int(batch.batch_size),
                             a_test_se=se[0].se, a_rand_se=se[1].se))
        metrics["report"] = {"table_3_2": rows}
    elif kind == "capital":
        budgets = sorted(set(budgets or [budget]) | {budget})
        recs = make_capital_attack(attack, budget=max(budgets), max_iter=max_iter, restarts=restarts,
                                   step_rule=step_rule, search_iter=search_iter, step_shares=step_shares,
                                   minimize=minimize, device=device, model_name=name)(model, batch, seed=seed,
                                                                                      progress=progress)
        write_jsonl(out / "records.jsonl", recs)
        res = capital_results(recs, budget, budgets, ticker, name)
        errors = accuracy_errors(recs, budget, budgets, market.window + market.horizon, seed=seed)
        res["row"].update(a_test_se=errors["a_test_se"], a_adv_se=errors["a_adv_se"])
        metrics.update(summary=res["summary"], curve=res["curve"], budgets=budgets, errors=errors,
                       masking=res["masking"])
        metrics["transfer"] = {v: transfer_accuracy(recs, batch, m, device=device) for v, m in vic.items()}
        metrics["report"] = {"table_3_2": [res["row"]],
                             "transfer": [{"title": f"orders crafted on {name}, replayed on the victims ({ticker}, "
                                                    f"{batch.batch_size} test snippets)",
                                           "matrix": {name: metrics["transfer"]}}] if vic else [],
                             "curves": [{"title": f"Accuracy vs capital ({ticker}, {name})", "budgets": budgets,
                                         "accuracy": {name: res["curve"]}, "clean": {name: res["summary"]["a_test"]},
                                         "se": {name: errors["curve_se"]}}]}
    else:
        batches = training_batches(market, train_n, seed)
        res_u = UniversalAttack(target=target, gamma=gamma, steps=steps, lr=lr, device=device).fit(
            model, batches, seed=seed, progress=progress)
        np.save(out / "pattern.npy", res_u.pattern, allow_pickle=False)
        matrix = {name: {nm: evaluate_universal(res_u.pattern, m, batch, target, device=device)
                         for nm, m in {name: model, **vic}.items()}}
        metrics["history"] = res_u.history
        metrics["report"] = {"table_3_3": [{"title": f"universal target {['down', 'flat', 'up'][target]}, gamma = "
                                                     f"{gamma:g} ({ticker})", "target": target, "gamma": gamma,
                                            "matrix": matrix}]}
        np.savez(out / "fig_3_2.npz", **{f"pattern_gamma_{gamma:g}": res_u.pattern}, dt=market.features.dt,
                 title=f"universal pattern on {name}, target {CLASS_NAMES[target]}")
    finish_run(out, metrics)
    return metrics


def _check_attack_values(**v: Any) -> None:
    """Refuse nonsense attack settings (one-line errors naming the flag) before anything is loaded."""
    flag = {k: "--" + k.replace("_", "-") for k in v}
    for k in ("n", "max_iter", "steps", "train_n"):
        if int(v[k]) < 1:
            raise ValueError(f"{flag[k]} must be >= 1, got {v[k]}")
    for k in ("budget", "step_shares", "lr"):
        if not np.isfinite(v[k]) or v[k] <= 0:
            raise ValueError(f"{flag[k]} must be a positive number, got {v[k]:g}")
    if v["budgets"] is not None and any(not np.isfinite(b) or b <= 0 for b in v["budgets"]):
        raise ValueError(f"--budgets must be positive dollar amounts, got {', '.join(f'{b:g}' for b in v['budgets'])}")
    if not np.isfinite(v["gamma"]) or v["gamma"] < 0:
        raise ValueError(f"--gamma must be >= 0, got {v['gamma']:g}")
    if v["target"] not in (0, 1, 2):
        raise ValueError(f"--target must be down, flat or up, got {v['target']}")


def config_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    return asdict(cfg)
