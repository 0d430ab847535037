"""``advsim vision certify RUN``: clean, FGSM, PGD and certified robust error of a trained run (or a cascade).

Certified robust error (Corollary 1) counts the test examples that are misclassified or whose class the exact
dual bound cannot prove constant over the ball; it upper-bounds the error of every attack, so the table always
reads clean <= FGSM <= PGD <= certified (up to the attacks' own randomness, which can only make FGSM/PGD lower).

A cascade (a run directory with ``cascade.json``) is evaluated as Algorithm 4: for an input, stage i answers with
its label when it certifies it and every stage before it predicted the same label as stage 1; an input no stage
certifies gets "no certificate". This is sound: any certified answer inside the ball of a certified input is the
same label (a stage j certifying a nearby x' certifies a ball that contains x, so it predicts x's label; later
stages are only reached where stage 1's prediction agrees). The cascade's standard error counts the label of the
first certifying stage, or stage 1's prediction when none certifies.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from data_loaders.images import load_images
from data_loaders.rundir import read_json, resolve_device, write_json
from vision.evaluate import build_attack, load_run_model, robust_accuracy

from .training import certify_set

__all__ = ["certify_run", "cascade_errors"]


def cascade_errors(preds: list[torch.Tensor], certified_pred: list[torch.Tensor], y: torch.Tensor) -> dict[str, Any]:
    """Algorithm 4 on per-stage predictions and *prediction* certificates (Corollary 2 flags), per stage prefix."""
    n = y.shape[0]
    rows = []
    for k in range(1, len(preds) + 1):
        answer = torch.full((n,), -1, dtype=torch.long, device=y.device)
        decided = torch.zeros(n, dtype=torch.bool, device=y.device)
        agree = torch.ones(n, dtype=torch.bool, device=y.device)
        for i in range(k):
            agree = agree & (preds[i] == preds[0])
            take = ~decided & agree & certified_pred[i]
            answer = torch.where(take, preds[i], answer)
            decided = decided | take
        certified_correct = decided & (answer == y)
        label = torch.where(decided, answer, preds[0])
        rows.append({"stages": k, "robust_err": 1 - int(certified_correct.sum()) / n,
                     "standard_err": 1 - int((label == y).sum()) / n,
                     "no_certificate": 1 - int(decided.sum()) / n})
    return {"n": n, "prefixes": rows}


def _stage_dirs(run: Path) -> list[Path]:
    if (run / "cascade.json").is_file():
        stages = read_json(run / "cascade.json").get("stages", [])
        if not stages:
            raise ValueError(f"{run / 'cascade.json'}: lists no stages")
        return [run / s for s in stages]
    return [run]


def certify_run(run_dir: str | Path, *, eps: float | None = None, norm: str | None = None, n: int = 1000,
                pgd_steps: int = 50, pgd_restarts: int = 10, clip_input: bool | None = None,
                batch_size: int = 50, dataset: str | None = None, root: str | None = None,
                device: str = "auto", seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Evaluate the run (each cascade stage, and the cascade) on its first ``n`` test images; write
    ``certify-<norm>-<eps>.json`` and ``.md`` into the run and return the record."""
    run = Path(run_dir)
    dev = resolve_device(device)
    stage_dirs = _stage_dirs(run)
    models, configs = [], []
    for sdir in stage_dirs:
        model, cfg = load_run_model(sdir, dev)
        models.append(model)
        configs.append(cfg)
    cfg0 = configs[0]
    eps_v = float(eps if eps is not None else cfg0.get("eps", 0.1))
    norm_v = norm or cfg0.get("norm", "linf")
    if norm_v not in ("linf", "l2"):
        raise ValueError(f"--norm must be linf or l2 for certification, got {norm_v!r}")
    clip = (0.0, 1.0) if (clip_input if clip_input is not None else cfg0.get("clip_input", False)) else None
    ds = dataset or cfg0["dataset"]
    ds_root = root if (root is not None or dataset is not None) else cfg0.get("root")
    data = load_images(ds, ds_root, "test").subset(slice(0, int(n))).to(dev)
    x, y = data.x, data.y
    t0 = time.perf_counter()
    stage_rows, preds, cert_pred = [], [], []
    for i, model in enumerate(models):
        cert = certify_set(model, x, y, eps_v, norm_v, clip, batch_size, progress, f"certify stage {i + 1}")
        n_y = int(y.shape[0])
        row: dict[str, Any] = {"stage": i + 1, "run": str(stage_dirs[i]), "n": n_y,
                               "clean_err": 1 - int((cert["pred"] == y).sum()) / n_y,
                               "certified_err": 1 - int(cert["certified"].sum()) / n_y,
                               "detected_frac": int(cert["detected"].sum()) / n_y}
        if i == 0 or len(models) == 1:
            if norm_v == "linf":
                fgsm = robust_accuracy(model, build_attack("fgsm", eps_v), x, y, 256)
                row["fgsm_err"] = 1 - fgsm["robust_acc"]
            if pgd_steps > 0:
                atk = build_attack("pgd", eps_v, steps=pgd_steps, restarts=pgd_restarts, norm=norm_v, seed=seed)
                pgd = robust_accuracy(model, atk, x, y, 256, progress=progress, desc="pgd")
                row["pgd_err"] = 1 - pgd["robust_acc"]
                row["pgd"] = repr(atk)
        stage_rows.append(row)
        preds.append(cert["pred"])
        cert_pred.append(cert["detected"])
    record: dict[str, Any] = {"eps": eps_v, "norm": norm_v, "clip_input": clip is not None, "dataset": ds,
                              "source": data.source, "n": int(y.shape[0]), "device": dev, "stages": stage_rows,
                              "seconds": time.perf_counter() - t0}
    if len(models) > 1:
        record["cascade"] = cascade_errors(preds, cert_pred, y)
    tag = f"certify-{norm_v}-{eps_v:.4g}"
    write_json(run / f"{tag}.json", record)
    from data_loaders.rundir import atomic_write_text

    atomic_write_text(run / f"{tag}.md", certify_table(record))
    return record


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def certify_table(record: dict[str, Any]) -> str:
    """The record as a markdown table (one row per stage, plus the cascade prefixes)."""
    lines = [f"eps = {record['eps']:.4g} ({record['norm']}), n = {record['n']} test images of {record['dataset']}",
             "", "| stage | clean error | FGSM error | PGD error | certified robust error |", "|---|---|---|---|---|"]
    for r in record["stages"]:
        lines.append(f"| {r['stage']} | {_pct(r['clean_err'])} | {_pct(r.get('fgsm_err'))} | "
                     f"{_pct(r.get('pgd_err'))} | {_pct(r['certified_err'])} |")
    if "cascade" in record:
        lines += ["", "| cascade stages | robust error | standard error | no certificate |", "|---|---|---|---|"]
        for r in record["cascade"]["prefixes"]:
            lines.append(f"| 1..{r['stages']} | {_pct(r['robust_err'])} | {_pct(r['standard_err'])} | "
                         f"{_pct(r['no_certificate'])} |")
    return "\n".join(lines) + "\n"
