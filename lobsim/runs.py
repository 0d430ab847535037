"""Checks on valuation-model run directories, done before any heavy work.

- :func:`check_run_config`: a run's ``config.json`` must exist, be valid JSON and agree with ``model.json``.
- :func:`data_paths` / :func:`market_of`: the data a run was trained on, found again. Paths inside the run are
  stored relative to it (``data/X.csv``, or ``../../data/X.csv`` for the models of a demo run), so a run moved
  with its data still evaluates; a file that is no longer where the run says gives a one-line "data has moved"
  error naming it.
- :func:`check_compatible`: every victim of an attack must share the attacked model's grid step, window,
  horizon, labels, book levels and market (same days of the same files), else the attack is refused before it
  starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from data_loaders.rundir import read_json, resolve_stored_path

if TYPE_CHECKING:
    from lobsim.dataset import Market
    from lobsim.train import TrainedModel


def check_run_config(run_dir: str | os.PathLike, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's ``config.json`` as a dict; missing, unreadable or disagreeing with ``meta['config']`` (the
    config stored in model.json) is an error naming the file."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; a trained-model run directory holds the config.json that "
                                "`advsim lob train` wrote (restore it or train the run again)")
    cfg = read_json(path)
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict) or not isinstance(cfg.get("features"),
                                                                                           dict):
        raise ValueError(f"{path}: not a valuation-model config (needs 'model' and 'features' entries)")
    stored = (meta or {}).get("config")
    if isinstance(stored, dict):
        for key in ("model", "features"):
            if cfg.get(key) != stored.get(key):
                raise ValueError(f"{path}: its '{key}' entry disagrees with model.json (the run was edited or mixed "
                                 "from two runs); restore it or train the run again")
    return cfg


def data_paths(data: dict[str, Any], run_dir: str | os.PathLike | None) -> list[str]:
    """The run's data files as paths valid now (relative entries are relative to ``run_dir``)."""
    stored = list(data.get("paths") or [])
    if not stored:
        raise ValueError(f"{run_dir}: the run's config has no data paths; evaluate it from Python with a Market")
    base = Path(run_dir) if run_dir is not None else Path.cwd()
    now = [resolve_stored_path(p, base) for p in stored]
    missing = [(p, q) for p, q in zip(stored, now) if not (q.exists() or _glob_matches(q))]
    if missing:
        p, q = missing[0]
        how = f"{q} (stored as {p!r}, relative to the run)" if not Path(p).is_absolute() else str(q)
        raise FileNotFoundError(f"{base / 'config.json'}: data has moved: {how} does not exist ({len(missing)} of "
                                f"{len(stored)} data files missing); put the data back or give its new place with "
                                "--data")
    return [str(q) for q in now]


def _glob_matches(pattern: Path) -> bool:
    """A stored glob pattern (``data/*.csv``) that still matches something."""
    import glob

    text = str(pattern)
    return any(c in text for c in "*?[") and bool(glob.glob(text, recursive=True))


def market_of(trained: TrainedModel, progress: bool = False, paths: list[str] | None = None) -> Market:
    """Rebuild the market ``trained`` was trained on (its config's data entry; ``paths`` replace the files)."""
    from lobsim.dataset import Market

    d = trained.config.data
    if not d or ("paths" not in d and not paths):
        raise ValueError(f"{trained.run_dir}: the model's config has no data entry; cannot rebuild its market")
    files = [str(p) for p in paths] if paths else data_paths(d, trained.run_dir)
    market = Market.from_paths(files, dt=d["dt"], start=d.get("start"), end=d.get("end"),
                               features=trained.config.features, split=d.get("split", "auto"),
                               train_fraction=d.get("train_fraction", 0.8), progress=progress)
    want = _days(trained)
    got = [{"ticker": b.ticker, "date": b.date, "levels": b.levels} for b in market.books]
    if paths and want and got != want:
        show = "; ".join(f"{x['ticker']} {x['date']} L{x['levels']}" for x in want)
        raise ValueError(f"--data: these files hold other days than the run was trained on ({show})")
    return market


def _days(trained: TrainedModel) -> list[dict[str, Any]]:
    market = trained.info.get("market") or {}
    return [{k: d.get(k) for k in ("ticker", "date", "levels")} for d in market.get("days", [])]


def _file_sizes(trained: TrainedModel) -> list[int] | None:
    from lobsim.dataset import expand_day_paths

    try:
        days = expand_day_paths(data_paths(trained.config.data or {}, trained.run_dir))
        return [Path(p).stat().st_size for p in days]
    except (OSError, ValueError):
        return None


def check_compatible(model: TrainedModel, victims: dict[str, TrainedModel]) -> None:
    """Refuse victims that do not share ``model``'s grid, window, horizon, labels, levels and market."""
    f0, d0 = model.config.features, model.config.data or {}
    name0 = str(model.run_dir)
    for name, v in victims.items():
        f, d = v.config.features, v.config.data or {}
        checks = [
            ("grid step", f"{f0.dt:g} s", f"{f.dt:g} s"),
            ("input window", f"{f0.window_s:g} s", f"{f.window_s:g} s"),
            ("label horizon", f"{f0.horizon_s:g} s", f"{f.horizon_s:g} s"),
            ("label definition", str(f0.labels), str(f.labels)),
            ("book levels", str(sorted({x['levels'] for x in _days(model)})),
             str(sorted({x['levels'] for x in _days(v)}))),
            ("market days", ", ".join(f"{x['ticker']} {x['date']}" for x in _days(model)),
             ", ".join(f"{x['ticker']} {x['date']}" for x in _days(v))),
            ("session", f"{d0.get('start')}-{d0.get('end')}", f"{d.get('start')}-{d.get('end')}"),
        ]
        for what, a, b in checks:
            if a != b:
                raise ValueError(f"{v.run_dir or name}: trained with another {what} ({b}) than the attacked model "
                                 f"{name0} ({a}); --victims must share its grid, window, horizon, labels, levels and "
                                 "market")
        sa, sb = _file_sizes(model), _file_sizes(v)
        if sa is not None and sb is not None and sa != sb:
            raise ValueError(f"{v.run_dir or name}: its data files differ from those of the attacked model {name0} "
                             "(same days, other bytes: another seed or source?); --victims must share its market")
