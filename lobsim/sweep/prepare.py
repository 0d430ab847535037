"""Before the cells: write the synthetic markets and train the models a sweep trains itself.

Both are resumable: a synthetic market folder is complete once its ``.complete.json`` exists; a model is done
once its run folder holds ``model.json`` (an interrupted training resumes from its checkpoint).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from data_loaders.rundir import read_json, write_json
from lobsim.sweep.config import SweepConfig
from lobsim.sweep.plan import synthetic_dir


def write_markets(cfg: SweepConfig, out: Path, progress: bool = False) -> list[Path]:
    """Write every synthetic market of the config that is not complete yet; returns the folders written now."""
    from data_loaders.synthetic import write_days

    made = []
    for m in cfg.markets:
        if not m.synthetic:
            continue
        folder = synthetic_dir(out, m)
        marker = folder / ".complete.json"
        spec = asdict(m)
        if marker.is_file() and read_json(marker) == spec:
            continue
        write_days(folder, m.synthetic, days=m.days, hours=m.hours, seed=m.seed, levels=m.levels, ticker=m.ticker,
                   start_date=m.start_date, progress=progress)
        write_json(marker, spec)
        made.append(folder)
    return made


def model_done(run_dir: str | Path) -> bool:
    run_dir = Path(run_dir)
    return (run_dir / "model.json").is_file() and (run_dir / "weights.safetensors").is_file()


def train_instance(payload: dict[str, Any]) -> dict[str, Any]:
    """Train one model instance (payload from ``plan.model_instances``, with its ``defense`` when it has one:
    ``lobsim.defenses.train_defended``); never raises for a failing training."""
    from data_loaders.runtime import set_threads

    set_threads(int(payload.get("threads", 1)))
    t0 = time.perf_counter()
    try:
        from lobsim.dataset import FeatureConfig, Market
        from lobsim.defenses.adversarial_training import train_defended
        from lobsim.train import default_config

        features = FeatureConfig(**payload["features"])
        spec = dict(payload["train"])
        kind, preset = spec.pop("kind"), spec.pop("preset", "small")
        data = {"paths": list(payload["paths"]), "dt": features.dt, "start": payload["start"], "end": payload["end"],
                "split": "auto", "train_fraction": 0.8, "synthetic": None}
        cfg = default_config(kind, preset, features, device=payload["device"], data=data, **spec)
        cfg.defense = payload.get("defense")  # a DefenseConfig dict (recorded in config.json / model.json) or None
        market = Market.from_paths(data["paths"], dt=features.dt, start=data["start"], end=data["end"],
                                   features=features)
        train_defended(cfg, market, payload["out"], progress=False, resume=True)
    except Exception as exc:  # noqa: BLE001 - reported per model; the cells that need it fail with this message
        msg = " ".join(str(exc).split()) or type(exc).__name__
        return {"ok": False, "error": f"{type(exc).__name__}: {msg}", "traceback": traceback.format_exc()}
    return {"ok": True, "seconds": time.perf_counter() - t0}
