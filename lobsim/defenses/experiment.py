"""The defense table of one market: one model kind trained without and with each defense, then measured.

``run_defense_experiment(cfg, out)`` (``advsim lob defend``): market (synthetic LOBSTER files or real days) ->
for every defense (``none`` = plain training): train, evaluate on the test split, random orders, the capital
attack ensemble on a fixed set of test snippets (minimal capital per snippet), certified capital of the same
snippets (Linear / MLP models on supported inputs; per snippet next to the attack's capital in
``snippets_<model>-<defense>.csv``), the detector's view of the attacks' orders -> one row per
(model, defense) in ``metrics.json``'s ``report.defense_table`` (``advsim lob report`` renders it; runs of other
model kinds on the same market merge into the same table) and the detector's false-positive rate on clean test
snippets it never saw.

Every defense of a run attacks the same snippets (``market.test_refs(attack_n, seed + 1)``, as the demo), and a
run with the same config and seed gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_BUDGETS = [1e4, 3e4, 1e5, 3e5, 1e6]
DEFENSE_CHOICES = ("none", "fast", "pgd", "universal", "certified")


@dataclass
class DefendConfig:
    """Everything that determines a defense run (JSON-serialisable). ``budget``: the training attack's capital
    (dollars); ``attack_budget``: the evaluation attack's (every ``budgets`` value must be at most that)."""

    synthetic: str | None = "thick"
    data: list[str] = field(default_factory=list)
    days: int = 6
    hours: float = 1.0
    dt: float = 0.1
    window_s: float = 60.0
    horizon_s: float = 10.0
    model: str = "mlp"
    preset: str = "small"
    inputs: list[str] = field(default_factory=lambda: ["swa", "imbalance", "depth_imbalance"])
    defenses: list[str] = field(default_factory=lambda: ["none", "fast", "universal", "certified"])
    budget: float = 10_000.0
    train_steps: int = 300
    train_batch: int = 128
    adv_batch: int = 64
    eval_n: int = 2000
    attack_n: int = 64
    attack_budget: float = 2_000_000.0
    budgets: list[float] = field(default_factory=lambda: list(DEFAULT_BUDGETS))
    max_iter: int = 50
    restarts: int = 2
    search_iter: int = 200
    random_budget: float = 2_000_000.0
    certify: bool = True
    certify_iterations: int = 10
    detector_n: int = 256
    detector_fpr: float = 0.01
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        if bool(self.synthetic) == bool(self.data):
            raise ValueError("defend: give either --synthetic MARKET or --data PATH")
        bad = [d for d in self.defenses if d not in DEFENSE_CHOICES]
        if bad or not self.defenses:
            raise ValueError(f"--defenses must be a comma-separated subset of {', '.join(DEFENSE_CHOICES)}, got "
                             f"{','.join(self.defenses)}")
        if self.model not in ("linear", "mlp", "lstm"):
            raise ValueError(f"--model must be linear, mlp or lstm, got {self.model!r}")
        if self.model == "lstm" and "certified" in self.defenses:
            raise ValueError("--defenses certified needs a Linear or MLP model (interval bounds through an LSTM are "
                             "not implemented); drop it for --model lstm")
        for k in ("budget", "attack_budget", "random_budget"):
            v = getattr(self, k)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"--{k.replace('_', '-')} must be a positive dollar amount, got {v}")
        self.budgets = sorted({float(b) for b in self.budgets})
        if any(b <= 0 for b in self.budgets) or max(self.budgets) > self.attack_budget:
            raise ValueError(f"--budgets must be positive and at most --attack-budget {self.attack_budget:g}")
        for k in ("train_steps", "train_batch", "adv_batch", "eval_n", "attack_n", "max_iter", "restarts",
                  "search_iter", "detector_n", "certify_iterations"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"--{k.replace('_', '-')} must be >= 1, got {getattr(self, k)}")


def _quartiles(caps: np.ndarray) -> tuple[float, float, float]:
    """(q1, median, q3) of per-snippet minimal capitals; snippets not fooled count as +inf (censored)."""
    if caps.size == 0:
        return (float("nan"),) * 3
    q = np.quantile(caps, [0.25, 0.5, 0.75], method="inverted_cdf")
    return float(q[0]), float(q[1]), float(q[2])


def _finite(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def paired_comparison(base: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """Minimal capitals of the same snippets without and with a defense (NaN: not attacked, +inf: not fooled): on
    the snippets attacked in both and fooled in at least one, the share where the defense needs more capital and
    the median ratio (defended / plain; +inf when only the plain model was fooled)."""
    both = ~np.isnan(base) & ~np.isnan(other) & ~(np.isinf(base) & np.isinf(other))
    if not both.any():
        return {"n": 0, "higher": None, "median_ratio": None}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(np.isinf(other[both]), np.inf, other[both] / base[both])
    med = float(np.quantile(ratio, 0.5, method="inverted_cdf"))
    return {"n": int(both.sum()), "higher": float(np.mean(other[both] > base[both])),
            "median_ratio": med if np.isfinite(med) else None}


def run_defense_experiment(cfg: DefendConfig, out: str | Path, progress: bool = True, overwrite: bool = False
                           ) -> dict[str, Any]:
    """The whole run into ``out`` (see the module docstring); returns the metrics written to metrics.json."""
    from data_loaders.rundir import atomic_write_text, finish_run, make_run_dir, resolve_device, write_json
    from lobsim.attacks.capital import evaluate_orders
    from lobsim.attacks.ensemble import EnsembleAttack
    from lobsim.attacks.random import RandomOrders
    from lobsim.attacks.records import dense_orders, write_jsonl
    from lobsim.defenses.adversarial_training import DefenseConfig, train_defended
    from lobsim.defenses.certify import CertifyConfig, certify
    from lobsim.defenses.detection import SizeAnomalyDetector, evaluate_detector
    from lobsim.defenses.fractional import SUPPORTED
    from lobsim.experiments import ExperimentConfig, experiment_market, run_data_entry
    from lobsim.propagation import propagate
    from lobsim.stats import block_bootstrap
    from lobsim.train import default_config, evaluate

    t_all = time.perf_counter()
    out = make_run_dir(out, asdict(cfg), overwrite=overwrite)
    device = resolve_device(cfg.device)
    ecfg = ExperimentConfig(synthetic=cfg.synthetic, data=list(cfg.data), days=cfg.days, hours=cfg.hours, dt=cfg.dt,
                            window_s=cfg.window_s, horizon_s=cfg.horizon_s, seed=cfg.seed)
    market, features, data_cfg = experiment_market(ecfg, out, progress)
    ticker = market.books[0].ticker
    block = market.window + market.horizon
    day, start = market.test_refs(cfg.attack_n, seed=cfg.seed + 1)

    # the detector: fitted on clean training snippets, its false-positive rate measured on clean test snippets
    det_refs = market.sample_train(cfg.detector_n, np.random.default_rng([cfg.seed, 31]))
    detector = SizeAnomalyDetector(fpr=cfg.detector_fpr).fit(
        [market.batch(det_refs[0][i:i + 64], det_refs[1][i:i + 64]) for i in range(0, cfg.detector_n, 64)])
    clean_test = market.batch(*market.test_refs(max(cfg.detector_n, cfg.attack_n), seed=cfg.seed + 2))
    detection = {"clean": evaluate_detector(detector, clean_test, block=block, seed=cfg.seed)}

    can_certify = cfg.certify and cfg.model in ("linear", "mlp") and all(i in SUPPORTED for i in cfg.inputs)
    rows, per_defense, paired = [], {}, {}
    for name in cfg.defenses:
        t0 = time.perf_counter()
        defense = None if name == "none" else DefenseConfig(kind=name, budget=cfg.budget,
                                                            adv_batch=cfg.adv_batch).to_dict()
        run_dir = out / "models" / f"{cfg.model}-{name}"
        tcfg = default_config(cfg.model, cfg.preset, features, steps=cfg.train_steps, batch=cfg.train_batch,
                              device=device, seed=cfg.seed, eval_n=cfg.eval_n, inputs=cfg.inputs,
                              data=run_data_entry(data_cfg, run_dir, out))
        tcfg.defense = defense
        trained = train_defended(tcfg, market, run_dir, progress=progress, resume=False)
        train_s = time.perf_counter() - t0
        ev = evaluate(trained, market, n=cfg.eval_n, seed=cfg.seed)
        batch = market.batch(day, start, trained.tau)
        rand = RandomOrders(budget=cfg.random_budget)(batch, np.random.default_rng([cfg.seed, 3]))
        pred_r, _ = evaluate_orders(trained, batch, rand, device=device)
        t1 = time.perf_counter()
        recs = EnsembleAttack(budget=cfg.attack_budget, max_iter=cfg.max_iter, restarts=cfg.restarts,
                              search_iter=cfg.search_iter, device=device, model_name=f"{cfg.model}-{name}")(
            trained, batch, seed=cfg.seed, progress=progress)
        attack_s = time.perf_counter() - t1
        write_jsonl(out / f"records_{cfg.model}-{name}.jsonl", recs)
        att = np.array([r.attacked for r in recs])
        caps = np.array([r.capital if r.success else np.inf for r in recs])
        q1, med, q3 = _quartiles(caps[att])
        fooled = {f"{b:g}": float(np.mean(caps[att] <= b)) if att.any() else None for b in cfg.budgets}
        se = block_bootstrap(np.stack([att, pred_r == batch.labels], 1).astype(np.float64), batch.day, batch.start,
                             block, seed=cfg.seed)
        row: dict[str, Any] = {
            "ticker": ticker, "model": cfg.model, "defense": name, "a_test": ev.accuracy, "a_test_se": ev.stderr,
            "best_constant": (ev.best_constant or {}).get("accuracy"),
            "top_class_share": float(np.asarray(ev.confusion).sum(0).max() / max(ev.n, 1)),
            "a_attacked": float(att.mean()), "a_attacked_se": se[0].se,
            "a_rand": float(np.mean(pred_r == batch.labels)), "a_rand_se": se[1].se, "attacked": int(att.sum()),
            "n": int(batch.batch_size),
            "capital_q1": _finite(q1), "capital_median": _finite(med), "capital_q3": _finite(q3),
            "fooled_at": fooled, "budgets": list(cfg.budgets), "attack_budget": cfg.attack_budget,
            "train_seconds": train_s, "defense_seconds": (trained.info.get("defense") or {}).get("defense_seconds",
                                                                                               0.0),
            "attack_seconds": attack_s, "budget": None if defense is None else cfg.budget,
            "guard": (trained.info.get("defense") or {}).get("guard"),
        }
        cert_d: dict[str, Any] = {}
        if can_certify and att.any():  # the attacked snippets (classified right): the table's population
            t2 = time.perf_counter()
            ai = np.flatnonzero(att)
            cert = certify(trained, batch.select(ai), CertifyConfig(iterations=cfg.certify_iterations),
                           progress=progress)
            cert_d = dict(cert.to_dict(), index=ai.tolist())
            lin, itv = np.full(batch.batch_size, np.nan), np.full(batch.batch_size, np.nan)
            lin[ai], itv[ai] = cert.linear, cert.interval
            row.update(certified_median=float(np.median(cert.linear)),
                       certified_q1=float(np.quantile(cert.linear, 0.25)),
                       certified_q3=float(np.quantile(cert.linear, 0.75)),
                       certified_interval_median=float(np.median(cert.interval)),
                       certify_seconds=time.perf_counter() - t2)
            ok = att & np.isfinite(caps)
            row["certified_above_attack"] = int(np.sum(lin[ok] > caps[ok] * (1 + 1e-9)))  # must be 0
            fin = ok & (lin > 0)
            row["attack_over_certified_median"] = float(np.median(caps[fin] / lin[fin])) if fin.any() else None
            lines = ["index,day,start,label,attacked,attack_capital,certified_linear,certified_interval"]
            lines += [f"{i},{int(batch.day[i])},{int(batch.start[i])},{int(batch.labels[i])},{int(att[i])},"
                      f"{'' if not att[i] else ('inf' if np.isinf(caps[i]) else f'{caps[i]:.2f}')},"
                      f"{'' if not att[i] else f'{lin[i]:.2f}'},{'' if not att[i] else f'{itv[i]:.2f}'}"
                      for i in range(batch.batch_size)]
            atomic_write_text(out / f"snippets_{cfg.model}-{name}.csv", "\n".join(lines) + "\n")
        won = [r for r in recs if r.success]
        if won:
            sub = batch.select([r.index for r in won])
            deltas = propagate(dense_orders(won, batch.window, batch.levels), sub).delta
            d = evaluate_detector(detector, clean_test, sub, deltas, np.array([r.capital for r in won]))
            row["detected"] = d["detected"]
            detection[name] = d
        rows.append(row)
        per_defense[name] = {"eval": ev.to_dict(), "certificate": cert_d, "row": row}
        paired[name] = np.where(att, caps, np.nan)
        if name != "none" and "none" in paired:
            row["vs_none"] = paired_comparison(paired["none"], paired[name])
        write_json(out / "partial.json", {"rows": rows})  # finished defenses survive an interruption
    (out / "partial.json").unlink(missing_ok=True)
    metrics = {
        "ticker": ticker, "model": cfg.model, "device": device, "market": market.describe(),
        "grid": f"dt = {cfg.dt} s, window {cfg.window_s:g} s = {market.window} steps, horizon {cfg.horizon_s:g} s",
        "defenses": per_defense, "detection": detection, "seconds": time.perf_counter() - t_all,
        "report": {"defense_table": rows, "detection": [{"ticker": ticker, "model": cfg.model, **detection}]},
    }
    finish_run(out, metrics)
    return metrics
