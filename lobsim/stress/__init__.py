"""Stress-test the user's own trading model (issue 12): ``advsim lob stress`` and :func:`stress` for notebooks.

The user describes in a small config (:mod:`lobsim.stress.config`, TOML or JSON) what the model reads (feature
adapters of the book, window, sampling step, normalisation, layout) and what it returns (a classifier with N classes
or a regressor); advsim loads the model (:mod:`lobsim.stress.loading`: TorchScript, torch.export, ONNX, or any
Python callable; never a pickle), checks its input shape against the config (:class:`UserModel`), attacks it with
random orders, the capital ensemble and a universal pattern (:mod:`lobsim.stress.run`) and writes one
self-contained ``report.html`` with the JSON/CSV it is built from (:mod:`lobsim.stress.report`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from lobsim.stress.config import StressConfig, load_config, parse_config
from lobsim.stress.loading import LoadedModel, from_callable, load_model
from lobsim.stress.model import UserModel
from lobsim.stress.run import StressResult, StressSettings, run_stress, stress_market

__all__ = ["StressConfig", "StressSettings", "StressResult", "UserModel", "LoadedModel", "load_config",
           "parse_config", "load_model", "from_callable", "run_stress", "stress", "stress_file", "model_inputs",
           "stress_market"]


def _config(config: StressConfig | dict | str | os.PathLike) -> StressConfig:
    if isinstance(config, StressConfig):
        return config
    if isinstance(config, dict):
        return parse_config(config, "<config dict>")
    return load_config(config)


def stress(model_fn: Any, market: Any, config: StressConfig | dict | str | os.PathLike, *,
           out: str | os.PathLike | None = None, settings: StressSettings | None = None, torch_fn: bool | None = None,
           progress: bool = False, **kwargs: Any) -> StressResult:
    """Stress-test any model from Python: a torch module, a scikit-learn-like object (``predict_proba`` /
    ``predict``), a function of a numpy array (or of a torch tensor with ``torch_fn=True``), or a model file path.

    ``market``: a :class:`lobsim.dataset.Market` (or its GridBooks) on the config's grid step. ``kwargs`` are
    :class:`StressSettings` fields (``n``, ``budgets``, ``attacks``, ...). With ``out`` the report is written there.
    """
    from lobsim.stress.report import write_stress_report

    cfg = _config(config)
    if isinstance(model_fn, (str, Path)):
        loaded = load_model(model_fn, cfg.model.format, cfg.output.name, cfg.model.gradients)
    else:
        loaded = from_callable(model_fn, torch_fn)
    books = market.books if hasattr(market, "books") else list(market)
    model = UserModel(loaded, cfg, books[0].levels)
    result = run_stress(model, market, settings or StressSettings(**kwargs), progress=progress)
    if out is not None:
        write_stress_report(out, result)
    return result


def stress_file(model_path: str | os.PathLike | None, config: StressConfig | str | os.PathLike, market: Any
                ) -> UserModel:
    """Load a model file (or the config's ``[model] file``) and check it against the config and the market."""
    cfg = _config(config)
    path = Path(model_path) if model_path else cfg.model_path()
    if path is None:
        raise ValueError(f"{cfg.source}: no model file: give MODEL or set [model] file in the config")
    loaded = load_model(path, cfg.model.format, cfg.output.name, cfg.model.gradients)
    books = market.books if hasattr(market, "books") else list(market)
    return UserModel(loaded, cfg, books[0].levels)


def model_inputs(config: StressConfig | dict | str | os.PathLike, market: Any, day: np.ndarray, start: np.ndarray
                 ) -> np.ndarray:
    """The exact inputs (numpy, the config's layout) the model reads at the snippets ``(day, start)`` of a
    :func:`stress_market` market: train your model on these and the stress test feeds it the same numbers."""
    import torch

    from lobsim.attacks.capital import book_tensors_centred

    cfg = _config(config)
    um = UserModel(LoadedModel("features only"), cfg, market.books[0].levels, check=False)
    out = []
    for lo in range(0, len(day), 256):
        b = market.batch(day[lo:lo + 256], start[lo:lo + 256])
        P, S, M, c = book_tensors_centred(b)
        with torch.no_grad():
            out.append(um.features(P, S, M, c).numpy())
    return np.concatenate(out)
