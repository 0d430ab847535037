"""Robust accuracy of a model, and evaluation of a training run directory under an attack.

``robust_accuracy(model, attack, x, y)`` attacks in batches; an example counts as robust when it is classified
correctly both clean and at the attack's point. ``evaluate_run`` rebuilds a run's model from config.json and
weights.safetensors, attacks its test set and writes ``eval-<attack>-<norm>-<eps>.json`` into the run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

ATTACKS = ("fgsm", "pgd", "apgd", "apgd-t", "square", "msd")


def parse_eps(text: str | float) -> float:
    """A radius as a float: ``0.3``, ``8/255`` or ``8 / 255``."""
    if isinstance(text, (int, float)):
        return float(text)
    s = str(text).replace(" ", "")
    try:
        if "/" in s:
            num, den = s.split("/", 1)
            return float(Fraction(num) / Fraction(den)) if "." not in s else float(num) / float(den)
        return float(s)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"cannot read {text!r} as a radius (examples: 0.3, 8/255)") from exc


def _as_float(x: Tensor) -> Tensor:
    return x.float().div(255.0) if x.dtype == torch.uint8 else x


def robust_accuracy(model: nn.Module, attack: Callable | None, x: Tensor, y: Tensor, batch_size: int = 256,
                    progress: bool = False, desc: str = "attack") -> dict[str, float]:
    """Clean and robust accuracy of ``model`` on (x, y); x is uint8 or float in [0, 1], on the model's device.

    ``attack`` None measures clean accuracy only (robust_acc equals it). The model is used in eval mode; its
    previous mode is restored.
    """
    was_training = model.training
    model.eval()
    n = int(x.shape[0])
    clean = robust = 0
    t0 = time.perf_counter()
    try:
        for s in tqdm(range(0, n, batch_size), desc=desc, leave=False, disable=not progress, unit="batch"):
            xb, yb = _as_float(x[s: s + batch_size]), y[s: s + batch_size]
            with torch.no_grad():
                ok = model(xb).argmax(1) == yb
            if attack is not None:
                res = attack(model, xb, yb)
                with torch.no_grad():
                    ok_adv = model(res.x_adv).argmax(1) == yb
                ok_r = ok & ok_adv & ~res.success.to(ok.device)
            else:
                ok_r = ok
            clean += int(ok.sum())
            robust += int(ok_r.sum())
    finally:
        model.train(was_training)
    return {"n": n, "clean_acc": clean / max(n, 1), "robust_acc": robust / max(n, 1),
            "seconds": time.perf_counter() - t0}


def build_attack(name: str, eps: float | str, *, steps: int = 50, restarts: int = 1, norm: str = "linf",
                 alpha: float | str | None = None, seed: int | None = 0, msd_eps: str | None = None) -> Callable:
    """An attack from ``vision.attacks`` by name (fgsm, pgd, apgd, msd).

    Defaults: PGD step ``alpha = eps / 4`` for linf and ``2.5 * eps / steps`` for l2/l1; MSD radii ``msd_eps``
    as ``linf,l2,l1`` (e.g. ``0.3,2,10``).
    """
    eps = parse_eps(eps)
    alpha = None if alpha is None else parse_eps(alpha)
    if name == "fgsm":
        from vision.attacks.fgsm import FGSM

        return FGSM(eps, alpha)
    if name == "pgd":
        from vision.attacks.pgd import PGD

        if alpha is None and norm == "linf":
            alpha = eps / 4
        return PGD(eps, alpha, steps, norm=norm, restarts=restarts, random_start=True, seed=seed)
    if name == "apgd":
        from vision.attacks.apgd import APGD

        return APGD(eps, steps, norm=norm, restarts=restarts, seed=seed)
    if name == "apgd-t":
        from vision.attacks.apgd import APGDT

        return APGDT(eps, steps, norm, restarts=restarts, seed=seed)
    if name == "square":
        from vision.attacks.square import Square

        return Square(eps, steps, norm, restarts=restarts, seed=seed)  # steps = queries per image
    if name == "msd":
        from vision.attacks.msd import MSD

        if msd_eps:
            radii = [parse_eps(v) for v in msd_eps.split(",")]
            if len(radii) != 3:
                raise ValueError(f"--msd-eps needs three radii linf,l2,l1; got {msd_eps!r}")
            return MSD(dict(zip(("linf", "l2", "l1"), radii)), None, steps, restarts=restarts, seed=seed)
        return MSD(steps=steps, restarts=restarts, seed=seed)
    raise ValueError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")


def load_run_model(run_dir: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """The model of a finished training run (config.json + weights.safetensors), in eval mode on ``device``."""
    from data_loaders.rundir import load_weights, read_json
    from vision.models import build_model

    run_dir = Path(run_dir)
    cfg_path, meta_path = run_dir / "config.json", run_dir / "metrics.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path}: not a vision run directory (no config.json)")
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: the run has not finished (no metrics.json)")
    config, metrics = read_json(cfg_path), read_json(meta_path)
    shape = metrics.get("input_shape")
    if not shape or "model_name" not in metrics:
        raise ValueError(f"{meta_path}: lacks input_shape/model_name; not written by advsim vision train")
    model = build_model(metrics["model_name"], metrics["num_classes"], shape[0], shape[1])
    state = load_weights(run_dir / "weights.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        wpath = run_dir / "weights.safetensors"
        raise ValueError(f"{wpath}: does not fit model {metrics['model_name']}: {exc}") from exc
    return model.to(device).eval(), config


def evaluate_run(run_dir: str | Path, attack: str = "pgd", *, eps: float | str | None = None, steps: int = 50,
                 restarts: int = 10, norm: str = "linf", alpha: float | str | None = None, n: int | None = 1000,
                 dataset: str | None = None, root: str | None = None, split: str = "test", batch_size: int = 256,
                 device: str = "auto", seed: int = 0, msd_eps: str | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Attack the first ``n`` images of the run's test set (or ``dataset``/``root``) and record the result."""
    from data_loaders.images import load_images
    from data_loaders.rundir import resolve_device, write_json

    dev = resolve_device(device)
    model, config = load_run_model(run_dir, dev)
    eps_val = parse_eps(eps if eps is not None else config["eps"])
    ds_name = dataset or config["dataset"]
    ds_root = root if (root is not None or dataset is not None) else config.get("root")
    data = load_images(ds_name, ds_root, split)
    if n is not None:
        data = data.subset(slice(0, int(n)))
    data = data.to(dev)
    atk = build_attack(attack, eps_val, steps=steps, restarts=restarts, norm=norm, alpha=alpha, seed=seed,
                       msd_eps=msd_eps)
    res = robust_accuracy(model, atk, data.x, data.y, batch_size, progress=progress, desc=f"{attack}-{norm}")
    if attack == "fgsm":
        steps, restarts = 1, 1
    record = {"attack": attack, "attack_repr": repr(atk), "norm": "union" if attack == "msd" else norm,
              "eps": getattr(atk, "eps", eps_val), "steps": steps, "restarts": restarts, "dataset": ds_name,
              "root": ds_root, "split": split, "source": data.source, "device": dev, **res}
    record["setting"] = {"attack": attack, "norm": record["norm"], "eps": eps_val, "steps": steps,
                         "restarts": restarts, "alpha": None if alpha is None else parse_eps(alpha),
                         "msd_eps": msd_eps, "n": res["n"], "dataset": ds_name, "root": ds_root, "split": split,
                         "seed": seed, "batch_size": batch_size}
    tag = f"{attack}-{record['norm']}-{eps_val:.4g}" if attack != "msd" else f"msd-union-{msd_eps or 'default'}"
    write_json(result_path(Path(run_dir), tag, record["setting"]), record)
    return record


def result_path(run_dir: Path, tag: str, setting: dict[str, Any]) -> Path:
    """``eval-<tag>.json``, unless that file holds a result of another setting (n, steps, restarts, seed, ...):
    then ``eval-<tag>-<hash of the setting>.json``, so a result is never replaced by one of a different setting."""
    import hashlib
    import json

    from data_loaders.rundir import read_json

    path = run_dir / f"eval-{tag}.json"
    if not path.is_file():
        return path
    try:
        old = read_json(path)
    except ValueError:
        old = None
    key = json.loads(json.dumps(setting))
    if isinstance(old, dict) and old.get("setting") == key:
        return path
    h = hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=4).hexdigest()
    return run_dir / f"eval-{tag}-{h}.json"


def evaluate_suite_run(run_dir: str | Path, suite: str = "standard", *, eps: float | str | None = None,
                       norm: str = "linf", steps: int = 100, queries: int = 5000, n: int | None = 1000,
                       dataset: str | None = None, root: str | None = None, split: str = "test",
                       batch_size: int = 256, device: str = "auto", seed: int = 0, sequential: bool = True,
                       progress: bool = True) -> dict[str, Any]:
    """Run the attack suite of :mod:`vision.attacks.suite` on a run's model (first ``n`` images of the split);
    writes ``eval-suite-<suite>-<norm>-<eps>.json`` (worst case per image, each member, gradient-masking flags)."""
    from data_loaders.images import load_images
    from data_loaders.rundir import resolve_device, write_json
    from vision.attacks.suite import SUITES, run_suite

    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; choose one of {', '.join(SUITES)} (--suite)")
    dev = resolve_device(device)
    model, config = load_run_model(run_dir, dev)
    eps_val = parse_eps(eps if eps is not None else config["eps"])
    ds_name = dataset or config["dataset"]
    ds_root = root if (root is not None or dataset is not None) else config.get("root")
    data = load_images(ds_name, ds_root, split)
    if n is not None:
        data = data.subset(slice(0, int(n)))
    data = data.to(dev)
    res = run_suite(model, data.x, data.y, eps_val, norm, suite=suite, steps=steps, queries=queries, seed=seed,
                    sequential=sequential, batch_size=batch_size, progress=progress)
    record = {"attack": f"suite-{suite}", "dataset": ds_name, "root": ds_root, "split": split,
              "source": data.source, "device": dev, "steps": steps, "queries": queries, **res}
    record["setting"] = {"attack": f"suite-{suite}", "norm": norm, "eps": eps_val, "steps": steps,
                         "queries": queries, "sequential": sequential, "n": res["n"], "dataset": ds_name,
                         "root": ds_root, "split": split, "seed": seed, "batch_size": batch_size}
    tag = f"suite-{suite}-{norm}-{eps_val:.4g}"
    write_json(result_path(Path(run_dir), tag, record["setting"]), record)
    return record
