"""The R+FGSM ablation of Table 4.3 (spec-003): FGSM adversarial training on MNIST at eps = 0.3 with the four
combinations of start (hypercube of radius eps/2 as in R+FGSM, or uniform over the whole ball) and step size
(eps/2 or the full eps), over several seeds, each evaluated with PGD.

Every training run is an ordinary ``advsim vision train`` run directory under ``OUT/runs/`` (the MNIST recipe:
Adam, cyclic learning rate peaking at 5e-3 at 2/5 of training, batch 100, no weight decay, raw [0, 1] inputs as in
the reference code, no catastrophic-overfitting guard so that collapses show). A finished run with its evaluation is
reused when the command is run again, so an interrupted ablation resumes. ``OUT`` gets ``table.md``, ``table.csv``,
``metrics.json`` (per row: robust accuracy per seed, mean and standard deviation).
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from data_loaders.rundir import atomic_write_text, finish_run, is_incomplete, make_run_dir, read_json, write_json

__all__ = ["ROWS", "FastAblationConfig", "run_fast_ablation"]

# (key, label, step size as a multiple of eps, start, start radius as a multiple of eps): Table 4.3's rows
ROWS: list[tuple[str, str, float, str, float]] = [
    ("rfgsm", "R+FGSM (Tramer et al.)", 0.5, "hypercube", 0.5),
    ("rfgsm-full-step", "R+FGSM + full step size", 1.0, "hypercube", 0.5),
    ("rfgsm-uniform", "R+FGSM + uniform init", 0.5, "uniform", 1.0),
    ("uniform-full", "uniform + full step (FGSM-RS)", 1.0, "uniform", 1.0),
]
THESIS = {"rfgsm": "34.58 +- 36.06", "rfgsm-full-step": "26.53 +- 32.48", "rfgsm-uniform": "72.92 +- 10.40",
          "uniform-full": "86.21 +- 0.75"}


@dataclass
class FastAblationConfig:
    """The ablation at CPU scale by default (a 12,000-image MNIST subset, 5 seeds); ``n_train=None`` and 10 seeds
    is the thesis' setting."""

    dataset: str = "mnist"
    root: str | None = None
    model: str = "mnist_small"
    eps: float = 0.3
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    rows: list[str] = field(default_factory=lambda: [r[0] for r in ROWS])
    n_train: int | None = 12000
    epochs: int = 10
    batch_size: int = 100
    lr_max: float = 5e-3
    lr_peak: float = 0.4
    normalize: bool = False
    n_test: int = 1000
    eval_steps: int = 50
    eval_alpha: float = 0.01
    eval_restarts: int = 1
    device: str = "auto"


def _row(key: str) -> tuple[str, str, float, str, float]:
    for r in ROWS:
        if r[0] == key:
            return r
    raise ValueError(f"unknown ablation row {key!r}; choose from {', '.join(r[0] for r in ROWS)} (--rows)")


def _train_and_eval(c: FastAblationConfig, key: str, seed: int, run_dir: Path, progress: bool) -> dict[str, Any]:
    from data_loaders.images import load_images
    from data_loaders.rundir import resolve_device
    from vision.attacks.pgd import PGD
    from vision.evaluate import load_run_model, robust_accuracy
    from vision.train import VisionTrainConfig, train_run

    eval_path = run_dir / "ablation-eval.json"
    if eval_path.is_file() and (run_dir / "metrics.json").is_file() and not is_incomplete(run_dir):
        return read_json(eval_path)
    _, _, step, init, radius = _row(key)
    tc = VisionTrainConfig(dataset=c.dataset, root=c.root, model=c.model, defense="fast", eps=c.eps,
                           alpha=step * c.eps, fast_init=init, fast_init_radius=radius * c.eps, fast_clip_init=False,
                           epochs=c.epochs, batch_size=c.batch_size, optimizer="adam", lr_max=c.lr_max,
                           schedule="cyclic", lr_peak=c.lr_peak, weight_decay=0.0, guard=False, n_train=c.n_train,
                           n_test=0, seed=seed, device=c.device, normalize=c.normalize)
    m = train_run(tc, run_dir, overwrite=True, progress=False)
    dev = resolve_device(c.device)
    model, _ = load_run_model(run_dir, dev)
    test = load_images(c.dataset, c.root, "test").subset(slice(0, c.n_test)).to(dev)
    atk = PGD(c.eps, c.eval_alpha, c.eval_steps, restarts=c.eval_restarts, seed=0)
    r = robust_accuracy(model, atk, test.x, test.y, 500)
    rec = {"row": key, "seed": seed, "clean_acc": r["clean_acc"], "robust_acc": r["robust_acc"], "n": r["n"],
           "attack": repr(atk), "train_seconds": m["train_seconds"]}
    write_json(eval_path, rec)
    return rec


def run_fast_ablation(cfg: FastAblationConfig, out: str | Path, *, overwrite: bool = False,
                      progress: bool = True) -> dict[str, Any]:
    """Train and evaluate every (row, seed); write the table into ``out`` and return the metrics."""
    for key in cfg.rows:
        _row(key)
    if not cfg.seeds:
        raise ValueError("need at least one seed (--seeds)")
    out = Path(out)
    resume = out.is_dir() and is_incomplete(out)
    out = make_run_dir(out, asdict(cfg), overwrite=overwrite or resume)
    results: dict[str, list[dict[str, Any]]] = {k: [] for k in cfg.rows}
    jobs = [(k, s) for k in cfg.rows for s in cfg.seeds]
    for key, seed in tqdm(jobs, desc="R+FGSM ablation", disable=not progress, unit="run"):
        results[key].append(_train_and_eval(cfg, key, seed, out / "runs" / f"{key}-seed{seed}", progress))

    rows_out = []
    md = ("| method | step size | init | robust acc. (mean +- std over seeds) | per seed | clean (mean) | thesis |\n"
          "|---|---|---|---|---|---|---|\n")
    csv = "row,step,init,init_radius,seed,clean_acc,robust_acc\n"
    for key in cfg.rows:
        _, label, step, init, radius = _row(key)
        accs = [r["robust_acc"] for r in results[key]]
        cleans = [r["clean_acc"] for r in results[key]]
        mean = statistics.fmean(accs)
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        rows_out.append({"row": key, "label": label, "step": step * cfg.eps, "init": init,
                         "init_radius": radius * cfg.eps, "robust_acc": accs, "clean_acc": cleans,
                         "robust_mean": mean, "robust_std": std, "seeds": list(cfg.seeds)})
        per = ", ".join(f"{100 * a:.1f}" for a in accs)
        md += (f"| {label} | {step * cfg.eps:.3g} | {init}({radius * cfg.eps:.3g}) | {100 * mean:.2f} +- "
               f"{100 * std:.2f}% | {per} | {100 * statistics.fmean(cleans):.2f}% | {THESIS[key]}% |\n")
        for r in results[key]:
            csv += f"{key},{step * cfg.eps},{init},{radius * cfg.eps},{r['seed']},{r['clean_acc']},{r['robust_acc']}\n"
    atomic_write_text(out / "table.md", md)
    atomic_write_text(out / "table.csv", csv)
    metrics = {"rows": rows_out, "eval": f"PGD-{cfg.eval_steps}, step {cfg.eval_alpha}, "
               f"{cfg.eval_restarts} restart(s), first {cfg.n_test} test images"}
    finish_run(out, metrics)
    return metrics
