"""Skill of the valuation models: every model x input set against the best constant, with block errors.

Usage (one command per market; runs are resumable, finished runs are reused):

    python benchmarks/bench_skill.py --synthetic thick --days 10 --out runs/skill-thick
    python benchmarks/bench_skill.py --data ../shared/data/lobster-goog-l10-2012-06-21 --out runs/skill-goog-hour
    python benchmarks/bench_skill.py --data ../shared/data/lobster-goog-l10-2012-06-21 --start 34200 --end 57600 \\
        --out runs/skill-goog-day

For each input set: the logistic-regression baseline on the same inputs (``lobsim.logreg``), then each model
trained with its documented defaults (early stopping on the time-held-out validation split) and evaluated on the
same fixed test snippets: train / validation / test accuracy, block-bootstrap SE, the best constant answer and the
paired difference to it (z = difference / its SE). On a synthetic market an oracle that knows the hidden
order-flow regime at the end of each window (``data_loaders.synthetic.regime_path``) gives the skill ceiling of
the planted mechanism. Prints a markdown table and writes OUT/skill.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_INPUTS = ["swa", "swa,imbalance,depth_imbalance", "swa,mid,microprice,imbalance,depth_imbalance,depth,spread"]


def oracle(market, cfg, tau: float, n_test: int, seed: int) -> dict:
    """Regime-knowing oracle: answers, for the regime at the window's end, the class most frequent in training."""
    from data_loaders.synthetic import regime_path
    from lobsim.evaluate import score, train_majority

    def regimes(day, start):
        out = np.empty(day.shape[0], np.int64)
        for d in np.unique(day):
            sel = day == d
            bk = market.books[int(d)]
            out[sel] = regime_path(cfg, bk.date, market.source_hours, market.source_seed,
                                   bk.times[start[sel] + market.window - 1])
        return out

    tr = market.sample_train(20_000, np.random.default_rng([seed, 5]))
    ytr, rtr = market.labels(*tr, tau), regimes(*tr)
    rule = {r: int(np.argmax(np.bincount(ytr[rtr == r], minlength=3))) for r in (-1, 1)}
    day, start = market.test_refs(n_test, seed)
    y = market.labels(day, start, tau)
    pred = np.array([rule[r] for r in regimes(day, start)])
    majority, frac = train_majority(market, tau)
    return score(y, pred, day, start, market.window + market.horizon, majority, frac, tau).to_dict() | {"rule": rule}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--synthetic", default=None, help="synthetic preset (thick, thin, thick-zi, thin-zi)")
    ap.add_argument("--data", nargs="*", default=None, help="LOBSTER day(s) instead of --synthetic")
    ap.add_argument("--days", type=int, default=10)
    ap.add_argument("--hours", type=float, default=1.0)
    ap.add_argument("--start", type=float, default=None)
    ap.add_argument("--end", type=float, default=None)
    ap.add_argument("--dt", type=float, default=0.1, help="grid step (s); 0.1 is the CPU preset")
    ap.add_argument("--models", default="linear,mlp,lstm")
    ap.add_argument("--inputs", nargs="*", default=DEFAULT_INPUTS, help="input sets, each comma-separated")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--eval-n", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-logreg", action="store_true")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.set_num_threads(1)

    from data_loaders.synthetic import PRESETS, write_days
    from lobsim.dataset import FeatureConfig, Market
    from lobsim.evaluate import evaluate, score, train_majority
    from lobsim.logreg import fit_logistic
    from lobsim.train import default_config, load_run, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if bool(args.synthetic) == bool(args.data):
        raise SystemExit("give either --synthetic PRESET or --data PATH...")
    paths = args.data
    if args.synthetic:
        paths = [str(p) for p in write_days(out / "data", args.synthetic, days=args.days, hours=args.hours,
                                            seed=args.seed)]
    features = FeatureConfig(dt=args.dt, window_s=60.0, horizon_s=10.0)
    market = Market.from_paths(paths, dt=args.dt, start=args.start, end=args.end, features=features)
    market.source_seed, market.source_hours = args.seed, args.hours
    data_cfg = {"paths": [str(Path(p).resolve()) for p in paths], "dt": args.dt, "start": args.start,
                "end": args.end, "split": "auto", "train_fraction": 0.8, "synthetic": args.synthetic}
    tau = market.fit_tau()
    day, start = market.test_refs(args.eval_n, args.seed)
    y = market.labels(day, start, tau)
    majority, frac = train_majority(market, tau)
    block = market.window + market.horizon
    results: dict = {"market": market.describe(), "rows": [], "command": " ".join(__import__("sys").argv)}
    if args.synthetic:
        results["oracle"] = oracle(market, PRESETS[args.synthetic], tau, args.eval_n, args.seed)
    for inputs in args.inputs:
        name = inputs.replace(",", "+")
        if not args.no_logreg:
            t = time.perf_counter()
            lr = fit_logistic(market, inputs, tau=tau, seed=args.seed)
            ev = score(y, lr.predict(market, day, start), day, start, block, majority, frac, tau,
                       train_accuracy=lr.info["train_accuracy"], val_accuracy=max(lr.info["val_accuracy"].values()),
                       inputs=inputs.split(","))
            results["rows"].append({"model": "logreg", "inputs": inputs, "eval": ev.to_dict(), "info": lr.info,
                                    "seconds": time.perf_counter() - t})
            print(f"logreg [{inputs}] {100 * ev.accuracy:.2f} +- {100 * ev.stderr:.2f}", flush=True)
        for kind in [k for k in args.models.split(",") if k]:
            run = out / f"{kind}-{name}"
            t = time.perf_counter()
            if (run / "model.json").is_file():
                trained = load_run(run)
            else:
                cfg = default_config(kind, "small", features, steps=args.steps, batch=args.batch, seed=args.seed,
                                     device="cpu",
                                     eval_n=args.eval_n, data=data_cfg, inputs=inputs)
                trained = train(cfg, market, run, progress=False)
            ev = evaluate(trained, market, n=args.eval_n, seed=args.seed)
            results["rows"].append({"model": kind, "inputs": inputs, "eval": ev.to_dict(),
                                    "info": {k: v for k, v in trained.info.items() if k != "market"},
                                    "seconds": time.perf_counter() - t})
            print(f"{kind} [{inputs}] {100 * ev.accuracy:.2f} +- {100 * ev.stderr:.2f}", flush=True)
        (out / "skill.json").write_text(json.dumps(results, indent=1, default=float))
    print(markdown(results))


def markdown(results: dict) -> str:
    """The table of ``skill.json``: one row per (model, inputs)."""
    rows = results["rows"]
    ev0 = rows[0]["eval"]
    bc = ev0["best_constant"]
    lines = [f"Test snippets: {ev0['n']} in {ev0['n_blocks']} blocks of {ev0['block']} steps; best constant answer "
             f"'{['down', 'flat', 'up'][bc['class']]}' {100 * bc['accuracy']:.2f}% +- {100 * bc['se']:.2f}; "
             f"majority class of training {100 * ev0['majority_accuracy']:.2f}%.", "",
             "| model | inputs | train | val | test ± block SE | vs best constant (z) |", "|---|---|---|---|---|---|"]
    if "oracle" in results:
        o = results["oracle"]
        lines.append(f"| oracle (knows the regime) | - | - | - | {100 * o['accuracy']:.2f} ± {100 * o['stderr']:.2f} | "
                     f"{100 * o['vs_best_constant']['diff']:+.2f} ({o['vs_best_constant']['z']:.1f}) |")
    for r in rows:
        e = r["eval"]
        tr = "-" if e.get("train_accuracy") is None else f"{100 * e['train_accuracy']:.1f}"
        va = "-" if e.get("val_accuracy") is None else f"{100 * e['val_accuracy']:.1f}"
        vs = e["vs_best_constant"]
        lines.append(f"| {r['model']} | {r['inputs']} | {tr} | {va} | {100 * e['accuracy']:.2f} ± "
                     f"{100 * e['stderr']:.2f} | {100 * vs['diff']:+.2f} ({vs['z']:.1f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
