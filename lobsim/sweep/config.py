"""The sweep config (one TOML file): markets, models, attacks with budgets, fill models, defenses, run settings.

Relative paths in the file (``data``, ``run``) are relative to the folder of the config file. Every problem is
a one-line ``ValueError`` naming the file, the table (``[[attacks]] #2``) and the key. See docs/scale.md for the
format; examples/sweep-small.toml is a runnable example.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ATTACK_KINDS = ("capital", "random")
CAPITAL_METHODS = ("gradient", "ensemble", "search")  # capital attack: CapitalAttack alone, or the issue-10 ensemble
MODEL_KINDS = ("linear", "mlp", "lstm")
SYNTHETIC_PRESETS = ("thick", "thin")
DEFENSE_KINDS = ("fast", "pgd", "universal", "certified")  # lobsim.defenses.DEFENSES (kept here: no torch import)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# Keys each table accepts (value: the Python type(s) it must have).
_NUM = (int, float)
_MARKET_KEYS: dict[str, Any] = {"name": str, "data": (list, str), "synthetic": str, "days": int, "hours": _NUM,
                                "seed": int, "levels": int, "ticker": str, "start_date": str, "start": _NUM,
                                "end": _NUM}
_MODEL_KEYS: dict[str, Any] = {"name": str, "run": str, "train": dict, "train_on": str}
_TRAIN_KEYS: dict[str, Any] = {"kind": str, "preset": str, "steps": int, "batch": int, "lr": _NUM,
                               "optimizer": str, "seed": int, "eval_n": int}
_ATTACK_PARAMS: dict[str, dict[str, Any]] = {
    "capital": {"method": str, "max_iter": int, "restarts": int, "step_rule": str, "step_shares": _NUM,
                "search_iter": int, "batch_size": int},
    "random": {"max_shares": int, "lot": int},
}
_ATTACK_KEYS: dict[str, Any] = {"name": str, "kind": str, "budgets": list, "n": int}
_FEATURE_KEYS: dict[str, Any] = {"dt": _NUM, "window_s": _NUM, "horizon_s": _NUM}
# A defense table: kind and budget (dollars), an optional name, and any lobsim.defenses.DefenseConfig field.
_DEFENSE_KEYS: dict[str, Any] = {"name": str, "kind": str, "budget": _NUM, "steps": int, "alpha": _NUM, "top": int,
                                 "density": _NUM, "mix": _NUM, "ramp": _NUM, "adv_batch": int, "guard_every": int,
                                 "guard_steps": int, "guard_n": int, "guard_drop": _NUM, "universal_lr": _NUM,
                                 "val_n": int}
_RUN_KEYS: dict[str, Any] = {"threads_per_cell": int, "gpus_per_cell": (*_NUM, str), "device": str, "group": str}
_TOP_KEYS: dict[str, Any] = {"name": str, "seed": int, "fill_models": list, "defenses": list,
                             "features": dict, "markets": list, "models": list, "attacks": list, "run": dict}


@dataclass(frozen=True)
class MarketSpec:
    """Days to attack: LOBSTER ``data`` (files, folders, globs) or a ``synthetic`` preset written by the sweep."""

    name: str
    data: tuple[str, ...] = ()
    synthetic: str | None = None
    days: int = 2
    hours: float = 0.25
    seed: int = 0
    levels: int = 10
    ticker: str | None = None
    start_date: str = "2019-09-03"
    start: float | None = None
    end: float | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A trained ``run`` directory, or a ``train`` spec trained by the sweep on ``train_on`` (a market name, or
    ``"each"``: one model per market, trained on that market's days)."""

    name: str
    run: str | None = None
    train: dict[str, Any] | None = None
    train_on: str = "each"


@dataclass(frozen=True)
class AttackSpec:
    """One attack, its budgets (dollars) and ``n`` test snippets per ticker-day; ``params`` are kind-specific."""

    name: str
    kind: str
    budgets: tuple[float, ...]
    n: int = 64
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureSpec:
    """Grid step and windows of the models the sweep trains (trained runs carry their own)."""

    dt: float = 0.1
    window_s: float = 60.0
    horizon_s: float = 10.0


@dataclass(frozen=True)
class RunSpec:
    """How cells run: CPU threads and GPUs per cell (``"auto"``: 1 when the Ray cluster has GPUs), device, and
    ``group``: ``"cell"`` (one task per cell) or ``"day"`` (one task runs every cell of a ticker-day, so the day
    is read and resampled once per task; results then arrive, and are stored, a day at a time)."""

    threads_per_cell: int = 1
    gpus_per_cell: float | str = "auto"
    device: str = "auto"
    group: str = "cell"


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep config; ``base`` is the folder relative paths were resolved against. ``defenses``: the names
    of the defenses (``"none"``: plain training); ``defense_configs``: the training config of every other one."""

    name: str
    seed: int
    features: FeatureSpec
    markets: tuple[MarketSpec, ...]
    models: tuple[ModelSpec, ...]
    attacks: tuple[AttackSpec, ...]
    fill_models: tuple[str, ...] = ("touch",)
    defenses: tuple[str, ...] = ("none",)
    run: RunSpec = field(default_factory=RunSpec)
    source: str = ""
    base: str = "."
    defense_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> DefenseConfig.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_keys(src: str, where: str, table: Any, allowed: dict[str, Any], required: tuple[str, ...] = ()) -> None:
    if not isinstance(table, dict):
        raise ValueError(f"{src}: {where}: expected a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in allowed:
            raise ValueError(f"{src}: {where}: unknown key {key!r} (expected one of {', '.join(sorted(allowed))})")
        want = allowed[key]
        if isinstance(value, bool) or not isinstance(value, want):
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise ValueError(f"{src}: {where}: {key} must be a {names}, got {value!r}")
    for key in required:
        if key not in table:
            raise ValueError(f"{src}: {where}: missing key {key!r}")


def _name(src: str, where: str, value: str) -> str:
    if not _NAME.match(value) or "@" in value:
        raise ValueError(f"{src}: {where}: name {value!r} must be letters, digits, '.', '_' or '-'")
    return value


def _path(base: Path, p: str) -> str:
    """A path or glob from the file, made absolute against the config's folder."""
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else str(base / p)


def _market(src: str, base: Path, i: int, t: dict[str, Any]) -> MarketSpec:
    where = f"[[markets]] #{i}"
    _check_keys(src, where, t, _MARKET_KEYS, ("name",))
    name = _name(src, where, t["name"])
    data = t.get("data", ())
    data = (data,) if isinstance(data, str) else tuple(data)
    if any(not isinstance(d, str) for d in data):
        raise ValueError(f"{src}: {where}: data must be a list of paths (strings)")
    if bool(data) == ("synthetic" in t):
        raise ValueError(f"{src}: {where} ({name}): give either data (LOBSTER paths) or synthetic (a preset)")
    if "synthetic" in t and t["synthetic"] not in SYNTHETIC_PRESETS:
        raise ValueError(f"{src}: {where}: synthetic must be one of {SYNTHETIC_PRESETS}, got {t['synthetic']!r}")
    if t.get("days", 1) < 1 or not 0 < t.get("hours", 1.0) <= 6.5:
        raise ValueError(f"{src}: {where}: need days >= 1 and 0 < hours <= 6.5")
    kw = {k: v for k, v in t.items() if k not in ("name", "data")}
    for k in ("hours", "start", "end"):
        if k in kw:
            kw[k] = float(kw[k])
    return MarketSpec(name=name, data=tuple(_path(base, d) for d in data), **kw)


def _model(src: str, base: Path, i: int, t: dict[str, Any], markets: set[str]) -> ModelSpec:
    where = f"[[models]] #{i}"
    _check_keys(src, where, t, _MODEL_KEYS, ("name",))
    name = _name(src, where, t["name"])
    if ("run" in t) == ("train" in t):
        raise ValueError(f"{src}: {where} ({name}): give either run (a trained run folder) or train (a train spec)")
    if "run" in t:
        if "train_on" in t:
            raise ValueError(f"{src}: {where} ({name}): train_on goes with train, not with run")
        return ModelSpec(name=name, run=_path(base, t["run"]))
    train = dict(t["train"])
    _check_keys(src, f"{where}.train", train, _TRAIN_KEYS, ("kind",))
    if train["kind"] not in MODEL_KINDS:
        raise ValueError(f"{src}: {where}.train: kind must be one of {MODEL_KINDS}, got {train['kind']!r}")
    if train.get("preset", "small") not in ("small", "paper"):
        raise ValueError(f"{src}: {where}.train: preset must be small or paper, got {train['preset']!r}")
    train_on = t.get("train_on", "each")
    if train_on != "each" and train_on not in markets:
        raise ValueError(f"{src}: {where}: train_on {train_on!r} is not a market name ({', '.join(sorted(markets))}) "
                         "nor 'each'")
    return ModelSpec(name=name, train=train, train_on=train_on)


def _attack(src: str, i: int, t: dict[str, Any]) -> AttackSpec:
    where = f"[[attacks]] #{i}"
    if not isinstance(t, dict):
        raise ValueError(f"{src}: {where}: expected a table")
    kind = t.get("kind")
    if kind not in ATTACK_KINDS:
        raise ValueError(f"{src}: {where}: kind must be one of {ATTACK_KINDS}, got {kind!r}")
    _check_keys(src, where, t, {**_ATTACK_KEYS, **_ATTACK_PARAMS[kind]}, ("kind", "budgets"))
    budgets = t["budgets"]
    if not budgets or any(isinstance(b, bool) or not isinstance(b, _NUM) or not math.isfinite(b) or b <= 0
                          for b in budgets):
        raise ValueError(f"{src}: {where}: budgets must be a non-empty list of positive dollar amounts, got {budgets}")
    if t.get("n", 1) < 1:
        raise ValueError(f"{src}: {where}: n (snippets per ticker-day) must be >= 1")
    params = {k: v for k, v in t.items() if k in _ATTACK_PARAMS[kind]}
    if params.get("method", "gradient") not in CAPITAL_METHODS:
        raise ValueError(f"{src}: {where}: method must be one of {CAPITAL_METHODS}, got {params['method']!r}")
    name = _name(src, where, t.get("name", kind))
    return AttackSpec(name=name, kind=kind, budgets=tuple(sorted({float(b) for b in budgets})), n=t.get("n", 64),
                      params=params)


def _budget_name(kind: str, budget: float) -> str:
    return f"{kind}-{int(budget)}" if float(budget).is_integer() else f"{kind}-{budget:g}"


def _defense(src: str, i: int, d: Any) -> tuple[str, dict[str, Any] | None]:
    """(name, DefenseConfig dict) of one ``defenses`` entry: "none" (None), "KIND:BUDGET" or a table."""
    where = f"defenses #{i}"
    if d == "none":
        return "none", None
    if isinstance(d, str):
        kind, sep, budget = d.partition(":")
        try:
            value = float(budget)
        except ValueError:
            value = None
        if kind in DEFENSE_KINDS and (not sep or value is None):
            raise ValueError(f"{src}: {where}: {d!r} needs its training budget in dollars, e.g. \"{kind}:30000\" or "
                             f"{{kind = \"{kind}\", budget = 30000}}")
        t: dict[str, Any] = {"kind": kind, "budget": value}
    elif isinstance(d, dict):
        t = dict(d)
        _check_keys(src, where, t, _DEFENSE_KEYS, ("kind", "budget"))
    else:
        raise ValueError(f"{src}: {where}: expected \"none\", \"KIND:BUDGET\" or a table, got {d!r}")
    if t["kind"] not in DEFENSE_KINDS:
        raise ValueError(f"{src}: {where}: unknown defense kind {t['kind']!r} (choose \"none\" or one of "
                         f"{', '.join(DEFENSE_KINDS)})")
    budget = t["budget"]
    if budget is None or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"{src}: {where}: budget must be a positive dollar amount, got {budget!r}")
    name = _name(src, where, t.pop("name", None) or _budget_name(t["kind"], float(budget)))
    if name == "none":
        raise ValueError(f"{src}: {where}: the name \"none\" is taken (plain training)")
    from lobsim.defenses.adversarial_training import DefenseConfig

    try:
        cfg = DefenseConfig(**{**t, "budget": float(budget)})
    except ValueError as exc:
        raise ValueError(f"{src}: {where} ({name}): {exc}") from None
    return name, cfg.to_dict()


def _unique(src: str, what: str, names: list[str]) -> None:
    seen = set()
    for n in names:
        if n in seen:
            raise ValueError(f"{src}: two [[{what}]] entries are named {n!r}; names must be unique")
        seen.add(n)


def parse_config(raw: dict[str, Any], source: str = "<config>", base: str | os.PathLike = ".") -> SweepConfig:
    """Validate a config dict (as read from TOML) into a SweepConfig."""
    from lobsim.propagation import FILL_MODELS

    src, base = source, Path(base)
    _check_keys(src, "top level", raw, _TOP_KEYS, ("markets", "models", "attacks"))
    for key in ("markets", "models", "attacks"):
        if not raw[key]:
            raise ValueError(f"{src}: at least one [[{key}]] entry is needed")
    features = raw.get("features", {})
    _check_keys(src, "[features]", features, _FEATURE_KEYS)
    feats = FeatureSpec(**{k: float(v) for k, v in features.items()})
    if feats.dt <= 0 or feats.window_s < feats.dt or feats.horizon_s < feats.dt:
        raise ValueError(f"{src}: [features]: need dt > 0 and window_s, horizon_s >= dt")
    markets = tuple(_market(src, base, i + 1, t) for i, t in enumerate(raw["markets"]))
    _unique(src, "markets", [m.name for m in markets])
    names = {m.name for m in markets}
    models = tuple(_model(src, base, i + 1, t, names) for i, t in enumerate(raw["models"]))
    _unique(src, "models", [m.name for m in models])
    attacks = tuple(_attack(src, i + 1, t) for i, t in enumerate(raw["attacks"]))
    _unique(src, "attacks", [a.name for a in attacks])
    fills = tuple(raw.get("fill_models", ["touch"]))
    for f in fills:
        if f not in FILL_MODELS:
            raise ValueError(f"{src}: fill_models: {f!r} is not a fill model (choose from {FILL_MODELS})")
    parsed = [_defense(src, i + 1, d) for i, d in enumerate(raw.get("defenses", ["none"]))]
    defenses = tuple(n for n, _ in parsed)
    if not fills or not defenses:
        raise ValueError(f"{src}: fill_models and defenses must not be empty")
    dup = next((n for n in defenses if defenses.count(n) > 1), None)
    if dup is not None:
        raise ValueError(f"{src}: defenses: {dup!r} is listed twice (give the tables different names)")
    if "none" not in defenses:
        runs = [m.name for m in models if m.run]
        if runs:
            raise ValueError(f"{src}: defenses: [[models]] {runs[0]!r} is a trained run, attacked as trained under "
                             "defense \"none\": add \"none\" to defenses (the defenses train the train models only)")
    run = raw.get("run", {})
    _check_keys(src, "[run]", run, _RUN_KEYS)
    spec = RunSpec(**run)
    if spec.threads_per_cell < 1:
        raise ValueError(f"{src}: [run]: threads_per_cell must be >= 1")
    if spec.group not in ("cell", "day"):
        raise ValueError(f"{src}: [run]: group must be 'cell' or 'day', got {spec.group!r}")
    g = spec.gpus_per_cell
    if not (g == "auto" or (isinstance(g, _NUM) and not isinstance(g, bool) and g >= 0)):
        raise ValueError(f"{src}: [run]: gpus_per_cell must be 'auto' or a number >= 0, got {g!r}")
    stem = Path(source).stem
    name = _name(src, "name", raw.get("name", stem if _NAME.match(stem) else "sweep"))
    return SweepConfig(name=name, seed=int(raw.get("seed", 0)), features=feats, markets=markets, models=models,
                       attacks=attacks, fill_models=fills, defenses=defenses, run=spec, source=str(source),
                       base=str(base), defense_configs={n: c for n, c in parsed if c is not None})


def load_config(path: str | os.PathLike) -> SweepConfig:
    """Read and validate a sweep config file (TOML); relative paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such sweep config file")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason})") from None
    return parse_config(raw, str(path), path.resolve().parent)
