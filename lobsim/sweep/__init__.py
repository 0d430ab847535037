"""Sweeps: many ticker-days x models x defenses x attacks x budgets x fill models, resumable, on Ray when installed.

``run_sweep(config, out)`` writes the synthetic markets, trains the models the config asks to train (once per
defense), expands the cells (:mod:`lobsim.sweep.plan`), runs the unfinished ones (:mod:`lobsim.sweep.runners`:
Ray tasks, or one by one in this process), stores each finished cell atomically (:mod:`lobsim.sweep.store`) and
builds the results table (:mod:`lobsim.sweep.table`) and the report (:mod:`lobsim.sweep.report`). Running it again
skips the finished cells and retries the failed ones. What one cell does is :func:`lobsim.sweep.cell.run_cell`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_text, write_json
from lobsim.sweep.config import SweepConfig, load_config, parse_config
from lobsim.sweep.plan import expand_cells, market_days, model_instances

__all__ = ["SweepConfig", "SweepSummary", "load_config", "parse_config", "plan_sweep", "run_sweep"]


@dataclass
class SweepSummary:
    """What a call of :func:`run_sweep` found and did. ``skipped``: finished before this call; ``ran``: cells
    executed by this call (``done`` and ``failed`` count all cells of the plan after it)."""

    name: str
    out: str
    cells: int
    done: int
    failed: int
    skipped: int
    ran: int
    days: int
    instances: int
    runner: str
    workers: int
    seconds: float

    def line(self) -> str:
        return (f"sweep {self.name}: {self.cells} cells, {self.done} done, {self.failed} failed, {self.skipped} "
                f"skipped (finished before), {self.ran} run now on {self.runner} x{self.workers} in "
                f"{self.seconds:.1f} s; results in {self.out}")


def plan_sweep(cfg: SweepConfig, out: str | os.PathLike, progress: bool = False):
    """Write the synthetic markets, then expand: (days per market, model instances, cells)."""
    from lobsim.sweep.prepare import write_markets

    out = Path(out)
    write_markets(cfg, out, progress=progress)
    days = {m.name: market_days(m, out) for m in cfg.markets}
    instances = model_instances(cfg, days, out)
    return days, instances, expand_cells(cfg, days, instances)


def run_sweep(
    config: SweepConfig | str | os.PathLike,
    out: str | os.PathLike,
    runner: str = "auto",
    workers: int = 0,
    address: str | None = None,
    progress: bool = True,
    max_cells: int | None = None,
    after_cell: Callable[[str, bool], None] | None = None,
) -> SweepSummary:
    """Run (or resume) a sweep into ``out``; see the module docstring. ``max_cells``: run at most this many
    unfinished cells in this call. ``after_cell(cell_id, ok)`` is called after each cell is stored."""
    from tqdm import tqdm

    from lobsim.sweep import store
    from lobsim.sweep.cell import execute, execute_group
    from lobsim.sweep.prepare import model_done
    from lobsim.sweep.runners import make_runner
    from lobsim.sweep.table import read_table, write_table

    t0 = time.perf_counter()
    cfg = config if isinstance(config, SweepConfig) else load_config(config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    days, instances, cells = plan_sweep(cfg, out, progress=progress)
    if cfg.source and Path(cfg.source).is_file():
        atomic_write_text(out / "config.toml", Path(cfg.source).read_text(encoding="utf-8"))
    write_json(out / "sweep.json", {"format": "advsim.sweep", "config": cfg.to_dict(),
                                    "instances": [asdict(i) for i in instances], "cells": [c.id for c in cells]})
    finished = {c.id for c in cells if store.is_finished(out, c.id)}
    pending = [c for c in cells if c.id not in finished]
    if max_cells is not None:
        pending = pending[:max(int(max_cells), 0)]
    needed = {c.run_dir for c in pending}
    to_train = [i for i in instances if i.train and i.run_dir in needed and not model_done(i.run_dir)]
    skipped = len(finished)
    state = {"done": skipped, "failed": 0, "ran": 0}
    run_name, n_workers = "none", 0
    if pending:
        pool = make_runner(runner, workers=workers, address=address, threads=cfg.run.threads_per_cell)
        run_name, n_workers = pool.name, pool.workers
        try:
            broken = _train(pool, to_train, progress)
            gpus = cfg.run.gpus_per_cell
            gpus = (1.0 if pool.has_gpu() else 0.0) if gpus == "auto" else float(gpus)
            bar = tqdm(total=len(cells), initial=skipped, desc=f"sweep {cfg.name}", unit="cell",
                       disable=not progress)

            def stored(cell: dict[str, Any], res: dict[str, Any]) -> None:
                if res.get("ok"):
                    store.write_result(out, cell, res)
                    finished.add(cell["id"])
                    state["done"] += 1
                else:
                    store.write_error(out, cell["id"], res.get("error", "failed"), res.get("traceback", ""))
                    state["failed"] += 1
                state["ran"] += 1
                bar.set_postfix(done=state["done"], failed=state["failed"], skipped=skipped, refresh=False)
                bar.update(1)
                if after_cell is not None:
                    after_cell(cell["id"], bool(res.get("ok")))

            runnable = []
            for c in pending:
                if c.run_dir in broken:
                    stored(c.to_dict(), {"ok": False, "error": f"model {c.instance} did not train: "
                                                               f"{broken[c.run_dir]}"})
                else:
                    runnable.append(c.to_dict())
            if cfg.run.group == "day":
                pool.run(execute_group, _by_day(runnable), lambda item, res: _stored_group(stored, item, res),
                         gpus=gpus)
            else:
                pool.run(execute, runnable, stored, gpus=gpus)
            bar.close()
        finally:
            pool.close()
    write_table(out, cells)
    failed = [(c.id, err) for c in cells if c.id not in finished and (err := store.read_error(out, c.id)) is not None]
    summary = SweepSummary(cfg.name, str(out), len(cells), state["done"], len(failed), skipped, state["ran"],
                           sum(len(v) for v in days.values()), len(instances), run_name, n_workers,
                           time.perf_counter() - t0)
    from lobsim.sweep.report import write_report

    write_report(out, read_table(out), asdict(summary), failed)
    write_json(out / "summary.json", summary)
    return summary


def _by_day(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Work items of ``group = "day"``: the cells of each ticker-day together, in plan order."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault(c["day"]["path"], []).append(c)
    return [{"day": day, "cells": cs} for day, cs in groups.items()]


def _stored_group(stored: Callable, item: dict[str, Any], res: dict[str, Any]) -> None:
    """Store the results of a day task; a task that died (no results) fails all its cells with its error."""
    results = res.get("results") or [res] * len(item["cells"])
    for c, r in zip(item["cells"], results):
        stored(c, r)


def _train(pool: Any, todo: list, progress: bool) -> dict[str, str]:
    """Train the model instances ``todo`` on the runner; returns {run_dir: error} of those that failed."""
    from tqdm import tqdm

    from lobsim.sweep.prepare import train_instance

    broken: dict[str, str] = {}
    if not todo:
        return broken
    bar = tqdm(total=len(todo), desc="train models", unit="model", disable=not progress)

    def stored(item: dict[str, Any], res: dict[str, Any]) -> None:
        if not res.get("ok"):
            broken[item["out"]] = res.get("error", "failed")
            atomic_write_text(Path(item["out"]) / "error.txt", res.get("error", "") + "\n\n" + res.get("traceback", ""))
        bar.update(1)

    pool.run(train_instance, [i.train for i in todo], stored)
    bar.close()
    return broken

