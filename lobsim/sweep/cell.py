"""Running one cell: the only place where the sweep calls the attack and model API.

:func:`run_cell` builds the cell's snippets (the test part of a time split of its ticker-day, on the grid of
the model), runs the attack through the public API and returns one row per budget. To change what a cell
does (e.g. the capital-attack ensemble of issue 10), change this function only. A defense is not a cell's
business: a defended model is another model instance, trained before the cells (``lobsim.sweep.prepare``).
:func:`execute` wraps it for a worker: threads, timing, memory, and any error captured as data.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

ROW_FIELDS = ("budget", "n", "a_test", "a_adv", "successes", "capital_mean", "capital_median", "cost_mean",
              "size_mean")


@functools.lru_cache(maxsize=4)
def _market(path: str, features_json: str, start: float | None, end: float | None, train_fraction: float):
    """A one-day Market split by time (cached: cells of one day on one worker resample it once)."""
    from lobsim.dataset import FeatureConfig, Market

    features = FeatureConfig.from_dict(json.loads(features_json))
    return Market.from_paths([path], dt=features.dt, start=start, end=end, features=features, split="time",
                             train_fraction=train_fraction)


@functools.lru_cache(maxsize=8)
def _cached_model(run_dir: str, device: str, stamp: int):
    from lobsim.train import load_run

    return load_run(run_dir, device=device)


def _model(run_dir: str, device: str):
    """The trained model of ``run_dir`` (cached per worker; a rewritten weights file is loaded again)."""
    weights = Path(run_dir) / "weights.safetensors"
    return _cached_model(run_dir, device, weights.stat().st_mtime_ns if weights.is_file() else 0)


def _same_day_file(a: str, b: str) -> bool:
    """Same file, or a file with the same LOBSTER name and size (e.g. one synthetic day written twice)."""
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return Path(a).name == Path(b).name and os.path.getsize(a) == os.path.getsize(b)
    except OSError:
        return False


def _in_sample(model: Any, day_path: str) -> bool:
    """True when the model was trained on this day's snippets (a training day of its day split).

    A time split leaves the end of every day for testing, and the cell attacks exactly that test part (same
    session window and train fraction), so it is out of sample.
    """
    market = (model.info or {}).get("market") or {}
    if market.get("split") != "day":
        return False
    paths = (market.get("source") or {}).get("paths") or []
    train_days = {r["day"] for r in market.get("train_regions", [])}
    return any(_same_day_file(p, day_path) for i, p in enumerate(paths) if i in train_days)


def _capital_attack(params: dict[str, Any], budget: float, fill_model: str, device: str, name: str) -> Any:
    """The capital attack of a cell: ``method`` "gradient" (default: ``CapitalAttack``) or, through
    ``lobsim.attacks.ensemble.make_capital_attack``, "ensemble" / "search". Unset parameters keep the library's
    defaults."""
    method = params.get("method", "gradient")
    kw = {k: params[k] for k in ("max_iter", "restarts", "step_rule", "step_shares", "batch_size") if k in params}
    if method == "gradient":
        from lobsim.attacks.capital import CapitalAttack

        return CapitalAttack(budget=budget, fill_model=fill_model, device=device, model_name=name, **kw)
    from lobsim.attacks.ensemble import make_capital_attack

    if "search_iter" in params:
        kw["search_iter"] = params["search_iter"]
    atk = make_capital_attack(method, budget=budget, device=device, model_name=name, **kw)
    if getattr(atk, "fill_model", "touch") != fill_model:
        if not hasattr(atk, "fill_model"):
            raise ValueError(f"capital attack method {method!r} has no fill model setting (wanted {fill_model!r})")
        atk.fill_model = fill_model
    return atk


def _rows_capital(model: Any, batch: Any, attack: dict[str, Any], fill_model: str, seed: int, device: str,
                  name: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One capital-attack run at the largest budget; each budget's row from its records (a snippet counts as
    fooled at budget c when the attack's returned orders fooled it at capital <= c)."""
    from lobsim.attacks.records import summarize

    budgets = attack["budgets"]
    atk = _capital_attack(attack["params"], max(budgets), fill_model, device, name)
    records = atk(model, batch, seed=seed)
    rows = []
    for b in budgets:
        s = summarize(records, b)
        rows.append({"budget": float(b), "n": s["n"], "a_test": s["a_test"], "a_adv": s["a_adv"],
                     "successes": s["successes"], "capital_mean": s["capital_mean"],
                     "capital_median": s.get("capital_median", float("nan")), "cost_mean": s["cost_mean"],
                     "size_mean": s["size_mean"]})
    return rows, [asdict(r) for r in records]


def _mean_over(x: np.ndarray, sel: np.ndarray) -> float:
    return float(np.mean(x[sel])) if sel.any() else float("nan")


def _rows_random(model: Any, batch: Any, attack: dict[str, Any], fill_model: str, seed: int, device: str
                 ) -> list[dict[str, Any]]:
    from lobsim.attacks.capital import evaluate_orders
    from lobsim.attacks.random import RandomOrders
    from lobsim.metrics import capital, cost, relative_size
    from lobsim.propagation import propagate

    p = attack["params"]
    y = batch.labels
    clean, _ = evaluate_orders(model, batch, None, device=device)
    rows = []
    for k, b in enumerate(attack["budgets"]):
        orders = RandomOrders(budget=b, max_shares=p.get("max_shares", 100), lot=p.get("lot", 1))(
            batch, np.random.default_rng([seed, 3, k]))
        pred, _ = evaluate_orders(model, batch, orders, fill_model=fill_model, device=device)
        won = (clean == y) & (pred != y)
        prop = propagate(orders, batch, fill_model=fill_model)
        caps, costs = capital(orders, batch.prices), cost(orders, batch, prop)
        sizes = relative_size(prop.delta, batch.sizes, batch.mask)
        rows.append({"budget": float(b), "n": int(y.size), "a_test": float(np.mean(clean == y)),
                     "a_adv": float(np.mean(pred == y)), "successes": int(won.sum()),
                     "capital_mean": _mean_over(caps, won),
                     "capital_median": float(np.median(caps[won])) if won.any() else float("nan"),
                     "cost_mean": _mean_over(costs, won), "size_mean": _mean_over(sizes, won)})
    return rows


def run_cell(cell: dict[str, Any]) -> dict[str, Any]:
    """Run one cell (a dict from ``Cell.to_dict``): ``{"rows": [one per budget], "records": [...] | None,
    "info": {...}}``. Calls the public API as it is: ``load_run``, ``Market``, the attacks."""
    from data_loaders.rundir import resolve_device

    device = resolve_device(cell["device"])
    model = _model(cell["run_dir"], device)
    data = model.config.data or {}
    day = cell["day"]
    start = day["start"] if day["start"] is not None else data.get("start")
    end = day["end"] if day["end"] is not None else data.get("end")
    features_json = json.dumps(model.config.features.to_dict(), sort_keys=True)
    market = _market(day["path"], features_json, start, end, float(data.get("train_fraction", 0.8)))
    attack, seed = cell["attack"], int(cell["seed"])
    d, s = market.test_refs(attack["n"], seed=seed + 1)
    batch = market.batch(d, s, model.tau)
    records = None
    if attack["kind"] == "capital":
        rows, records = _rows_capital(model, batch, attack, cell["fill_model"], seed, device, cell["instance"])
    elif attack["kind"] == "random":
        rows = _rows_random(model, batch, attack, cell["fill_model"], seed, device)
    else:
        raise ValueError(f"cell {cell['id']}: unknown attack kind {attack['kind']!r}")
    book = market.books[0]
    info = {"in_sample": _in_sample(model, day["path"]), "steps": int(book.n_steps), "levels": int(book.levels),
            "snippets": int(batch.batch_size), "window": int(market.window), "device": device,
            "grid_bytes": int(sum(a.nbytes for a in (book.prices, book.sizes, book.times, book.exec_ptr,
                                                     book.exec_price, book.exec_volume))),
            "batch_bytes": int(batch.prices.nbytes + batch.sizes.nbytes),
            "source_bytes": _source_bytes(day["path"])}
    return {"rows": rows, "records": records, "info": info}


def _source_bytes(path: str) -> int:
    """Bytes of the day's files on disk (the zip, or the message and orderbook csvs)."""
    p = Path(path)
    if p.suffix == ".zip" or not p.name.count("_message_"):
        return p.stat().st_size
    ob = p.with_name(p.name.replace("_message_", "_orderbook_"))
    return p.stat().st_size + (ob.stat().st_size if ob.is_file() else 0)


def _rss_mb() -> float:
    """Resident memory of this process now, MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def execute(cell: dict[str, Any]) -> dict[str, Any]:
    """Run a cell in this process with the cell's thread count; never raises for a failing cell.

    Returns ``{"ok": True, "rows", "records", "info", "resources"}`` or ``{"ok": False, "error" (one line),
    "traceback"}``. ``resources``: seconds, resident memory before and the process's peak after (MiB).
    """
    from data_loaders.runtime import set_threads

    set_threads(int(cell.get("threads", 1)))
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        out = run_cell(cell)
    except Exception as exc:  # noqa: BLE001 - a failing cell is data for the sweep, not a crash of it
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return {"ok": False, "error": f"{type(exc).__name__}: {msg}", "traceback": traceback.format_exc()}
    out["resources"] = {"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
                        "rss_before_mb": rss0,
                        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                        "pid": os.getpid()}
    out["ok"] = True
    return out


def execute_group(item: dict[str, Any]) -> dict[str, Any]:
    """Run the cells ``item["cells"]`` (one ticker-day) one after another in this worker: the day is loaded and
    resampled once (the per-worker cache). Returns ``{"ok": True, "results": [one per cell]}``."""
    return {"ok": True, "results": [execute(c) for c in item["cells"]]}
