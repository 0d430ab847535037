"""Expanding a sweep config into work: ticker-days per market, model instances, and cells.

A model the sweep trains gets one instance per (train spec, training market, defense): a defense is a way of
training a model, so it is part of the instance (its config is in the instance's key); a trained run is attacked as
trained, under defense ``"none"`` only. A cell is one (ticker-day, model instance, attack, fill model); its
``defense`` is its instance's. The attack's budgets are evaluated inside the
cell (one capital-attack run at the largest budget gives the exact result at every smaller budget, see
``lobsim.attacks.records.capital_curve``), so the results table has one row per cell and budget.

Cells are named by a readable prefix plus a hash of everything that determines their result (file names, not
absolute paths, so a moved data folder or a second sweep folder gives the same names). A finished cell is kept
for as long as that key does not change.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lobsim.sweep.config import MarketSpec, ModelSpec, SweepConfig


def key_hash(obj: Any, n: int = 10) -> str:
    """A short blake2b hex digest of the canonical JSON of ``obj``."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()[:n]


def safe_name(text: str) -> str:
    """``text`` with anything but letters, digits, '.', '_', '-', '@' and '+' replaced by '_'."""
    return re.sub(r"[^A-Za-z0-9._@+-]", "_", text)


@dataclass(frozen=True)
class DayRef:
    """One ticker-day of a market: the loadable path (message csv or one-day zip) and its session window."""

    market: str
    ticker: str
    date: str
    path: str
    start: float | None = None
    end: float | None = None

    @property
    def file(self) -> str:
        return Path(self.path).name


@dataclass(frozen=True)
class ModelInstance:
    """A model the cells attack: a trained run, or a train spec to train into ``run_dir`` first (``train`` set).

    ``markets``: the markets whose cells use it. ``key``: what determines its weights (for the cell keys).
    ``defense``: the name of the defense it is trained with (``"none"``: plain training, or a trained run).
    """

    name: str
    spec: str
    run_dir: str
    markets: tuple[str, ...]
    key: str
    train: dict[str, Any] | None = None
    defense: str = "none"


@dataclass(frozen=True)
class Cell:
    """One unit of work; ``to_dict()`` is what a worker receives."""

    id: str
    key: dict[str, Any]
    day: DayRef
    model: str
    instance: str
    run_dir: str
    attack: dict[str, Any]
    fill_model: str
    defense: str
    seed: int
    device: str
    threads: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cell:
        return cls(**{**d, "day": DayRef(**d["day"])})


def day_ref(market: str, path: str, start: float | None, end: float | None) -> DayRef:
    """Ticker and date of a day path from its LOBSTER name (a zip: from its member names)."""
    from data_loaders.lobster import find_days, parse_name

    if path.endswith(".zip"):
        pairs = find_days(path)
        if pairs:
            return DayRef(market, pairs[0].ticker, pairs[0].date, path, start, end)
    f = parse_name(path)
    if f:
        return DayRef(market, f["ticker"], f["date"], path, start, end)
    return DayRef(market, Path(path).stem, "", path, start, end)


def synthetic_dir(out: Path, m: MarketSpec) -> Path:
    """Folder the sweep writes a synthetic market into (named by the spec, so a changed spec gets a new one)."""
    spec = {k: v for k, v in asdict(m).items() if k not in ("name", "data", "start", "end")}
    return out / "data" / f"{safe_name(m.name)}-{key_hash(spec, 8)}"


def market_days(m: MarketSpec, out: Path) -> list[DayRef]:
    """The ticker-days of a market (a synthetic market must have been written, see ``prepare.write_markets``)."""
    from lobsim.dataset import expand_day_paths

    paths = expand_day_paths([synthetic_dir(out, m)] if m.synthetic else list(m.data))
    return [day_ref(m.name, p, m.start, m.end) for p in paths]


def _run_fingerprint(spec: ModelSpec, src: str) -> str:
    """Content hash of a trained run's weights and model file (so a retrained run gets new cells)."""
    run = Path(spec.run or "")
    files = [run / "model.json", run / "weights.safetensors"]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{src}: [[models]] {spec.name}: {f} not found (is {run} a trained run?)")
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def model_instances(cfg: SweepConfig, days: dict[str, list[DayRef]], out: Path) -> list[ModelInstance]:
    """One instance per run; per (train spec, market, defense) for ``train_on = "each"``, per (train spec,
    defense) otherwise. A defended instance is named like the plain one (the ``defense`` column tells them apart);
    its run folder is ``models/NAME+DEFENSE-KEY``."""
    insts: list[ModelInstance] = []
    all_markets = tuple(m.name for m in cfg.markets)
    for spec in cfg.models:
        if spec.run:
            insts.append(ModelInstance(spec.name, spec.name, spec.run, all_markets,
                                       "run:" + _run_fingerprint(spec, cfg.source)))
            continue
        targets = [(m, (m,), f"{spec.name}@{m}") for m in all_markets] if spec.train_on == "each" else \
            [(spec.train_on, all_markets, spec.name)]
        for train_market, used_by, name in targets:
            mspec = next(m for m in cfg.markets if m.name == train_market)
            train = {"kind": "mlp", "preset": "small", "seed": cfg.seed, **(spec.train or {})}
            for defense in cfg.defenses:
                ident = {"train": train, "features": asdict(cfg.features), "market": train_market,
                         "days": [d.file for d in days[train_market]], "start": mspec.start, "end": mspec.end}
                folder = name
                if defense != "none":  # the plain instance keeps the key (and cells) it had before defenses
                    ident["defense"] = cfg.defense_configs[defense]
                    folder = f"{name}+{defense}"
                key = key_hash(ident, 16)
                run_dir = out / "models" / f"{safe_name(folder)}-{key[:8]}"
                payload = {**ident, "paths": [d.path for d in days[train_market]], "out": str(run_dir),
                           "device": cfg.run.device, "threads": cfg.run.threads_per_cell, "name": name}
                insts.append(ModelInstance(name, spec.name, str(run_dir), used_by, "train:" + key, payload, defense))
    return insts


def expand_cells(cfg: SweepConfig, days: dict[str, list[DayRef]], instances: list[ModelInstance]) -> list[Cell]:
    """Every (ticker-day, model instance, attack, fill model) of the config, in a stable order; the cell's defense
    is its instance's."""
    cells: list[Cell] = []
    for m in cfg.markets:
        for d in days[m.name]:
            for inst in instances:
                if m.name not in inst.markets:
                    continue
                for atk in cfg.attacks:
                    a = asdict(atk)
                    a["budgets"] = list(atk.budgets)
                    for fill in cfg.fill_models:
                        defense = inst.defense
                        key = {"market": m.name, "ticker": d.ticker, "date": d.date, "day_file": d.file,
                               "start": d.start, "end": d.end, "model": inst.key, "instance": inst.name,
                               "attack": a, "fill_model": fill, "defense": defense, "seed": cfg.seed}
                        parts = [m.name, d.ticker, d.date, inst.name, atk.name, fill]
                        if defense != "none":
                            parts.append(defense)
                        cid = safe_name(".".join(p for p in parts if p)) + "." + key_hash(key)
                        cells.append(Cell(cid, key, d, inst.spec, inst.name, inst.run_dir, a, fill, defense,
                                          cfg.seed, cfg.run.device, cfg.run.threads_per_cell))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"{cfg.source}: the same cell appears twice ({dup}): a day is listed twice in one market?")
    return cells
