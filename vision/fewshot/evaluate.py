"""The robust few-shot evaluator: natural and robust accuracy over test episodes, attacking the query images after
the head has been fitted on the (clean) support set.

For every episode the head is fitted on the support set (eval mode), the clean query accuracy is recorded, and
each attack (PGD-20 from a random start with step ``eps / 4``, i.e. 2/255 at 8/255; MI-FGSM with 20 iterations,
momentum 1) attacks the queries through the frozen head. A query counts as robust when it is classified correctly
clean and at every restart's adversarial point. Accuracies are means over episodes with a 95% interval
(1.96 standard deviations of the per-episode accuracy over the square root of the number of episodes).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vision.attacks.pgd import PGD

from .attacks import MIFGSM, EpisodeClassifier
from .datasets import FewShotData, load_fewshot
from .episodes import EpisodeSampler
from .model import FewShotModel, as_float, load_fewshot_run

FEWSHOT_ATTACKS = ("none", "pgd", "mifgsm")

__all__ = ["FEWSHOT_ATTACKS", "make_query_attack", "evaluate_episodes", "evaluate_fewshot_run"]


def make_query_attack(name: str, eps: float, steps: int = 20, step_size: float | None = None, seed: int = 0):
    """PGD (random start, step ``eps / 4`` by default) or MI-FGSM (``eps / steps`` per step, momentum 1).

    PGD keeps the best iterate per query and stops once every query is misclassified (early stop), which saves
    time on non-robust models without changing which queries count as robust.
    """
    if name == "pgd":
        return PGD(eps, step_size if step_size is not None else eps / 4, steps, norm="linf", restarts=1,
                   random_start=True, select="best", early_stop=True, seed=seed)
    if name == "mifgsm":
        return MIFGSM(eps, steps, decay=1.0, alpha=step_size)
    raise ValueError(f"unknown query attack {name!r}; choose pgd or mifgsm (--attack)")


def _mean_ci(values: list[float]) -> tuple[float, float]:
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / max(n - 1, 1)
    return mean, 1.96 * math.sqrt(var / n)


def evaluate_episodes(model: FewShotModel, data: FewShotData, *, split: str = "novel", way: int = 5,
                      shot: int = 5, query: int = 15, episodes: int = 200, batch: int = 10,
                      attacks: tuple[str, ...] = ("pgd",), eps: float = 0.2, steps: int = 20,
                      step_size: float | None = None, restarts: int = 1, seed: int = 0,
                      progress: bool = False) -> dict[str, Any]:
    """Clean and robust query accuracy of ``model`` on ``episodes`` episodes of ``split``."""
    if restarts < 1 or episodes < 1 or batch < 1:
        raise ValueError("need --restarts >= 1, --episodes >= 1 and a batch >= 1")
    for a in attacks:
        if a not in FEWSHOT_ATTACKS:
            raise ValueError(f"unknown query attack {a!r}; choose from {', '.join(FEWSHOT_ATTACKS)} (--attack)")
    attacks = tuple(a for a in attacks if a != "none")
    sampler = EpisodeSampler(data, split, way, shot, query, seed)
    was_training = model.training
    model.eval()
    clean_acc: list[float] = []
    robust: dict[str, list[float]] = {a: [] for a in attacks}
    t0 = time.perf_counter()
    done = 0
    try:
        bar = tqdm(total=episodes, desc=f"{way}-way {shot}-shot", disable=not progress, unit="episode")
        while done < episodes:
            b = min(batch, episodes - done)
            ep = sampler.sample(b)
            sx, qx = as_float(ep.support_x), as_float(ep.query_x)
            with torch.no_grad():
                fitted = model.fit(sx, ep.support_y, way).detach()
                ok = model.logits(fitted, qx).argmax(2) == ep.query_y           # (b, q)
            clean_acc += ok.float().mean(1).tolist()
            wrapper = EpisodeClassifier(model.backbone, fitted, b)
            flat_x = qx.reshape(-1, *qx.shape[2:])
            flat_y = ep.query_y.reshape(-1)
            for name in attacks:
                ok_adv = ok.reshape(-1).clone()
                for r in range(restarts if name == "pgd" else 1):
                    atk = make_query_attack(name, eps, steps, step_size, seed=seed + 7919 * r + done)
                    res = atk(wrapper, flat_x, flat_y)
                    with torch.no_grad():
                        ok_adv &= (wrapper(res.x_adv).argmax(1) == flat_y) & ~res.success
                robust[name] += ok_adv.view(b, -1).float().mean(1).tolist()
            done += b
            bar.update(b)
        bar.close()
    finally:
        model.train(was_training)
    out: dict[str, Any] = {"split": split, "way": way, "shot": shot, "query": query, "episodes": episodes,
                           "eps": eps, "steps": steps, "step_size": step_size if step_size is not None else None,
                           "restarts": restarts, "seed": seed}
    out["clean_acc"], out["clean_ci95"] = _mean_ci(clean_acc)
    for name, vals in robust.items():
        out[f"{name}_acc"], out[f"{name}_ci95"] = _mean_ci(vals)
    out["seconds"] = time.perf_counter() - t0
    return out


def evaluate_fewshot_run(run_dir: str | Path, *, shots: tuple[int, ...] = (1, 5), way: int | None = None,
                         query: int = 15, episodes: int = 200, batch: int = 10,
                         attacks: tuple[str, ...] = ("pgd", "mifgsm"), eps: float | None = None, steps: int = 20,
                         step_size: float | None = None, restarts: int = 1, split: str = "novel",
                         dataset: str | None = None, root: str | None = None, device: str = "auto", seed: int = 0,
                         progress: bool = True) -> list[dict[str, Any]]:
    """Evaluate a meta-training run on ``split`` episodes for each shot; writes ``eval-*.json`` into the run."""
    from data_loaders.rundir import resolve_device, write_json

    dev = resolve_device(device)
    model, cfg, _ = load_fewshot_run(run_dir, dev)
    eps_val = float(cfg.eps if eps is None else eps)
    way = int(cfg.way if way is None else way)
    if cfg.head == "maml" and way != cfg.way:
        raise ValueError(f"a MAML head is tied to its {cfg.way}-way training; --way {way} does not fit")
    data = load_fewshot(dataset or cfg.dataset, root if dataset else (root or cfg.root), cfg.per_class,
                        cfg.seed).to(dev)
    records = []
    for shot in shots:
        rec = evaluate_episodes(model, data, split=split, way=way, shot=shot, query=query, episodes=episodes,
                                batch=batch, attacks=attacks, eps=eps_val, steps=steps, step_size=step_size,
                                restarts=restarts, seed=seed, progress=progress)
        rec.update({"run": str(run_dir), "head": cfg.head, "training": cfg.training, "dataset": data.source,
                    "device": dev})
        tag = f"eval-{split}-{way}w{shot}s-eps{eps_val:.4g}-steps{steps}-r{restarts}-n{episodes}"
        write_json(Path(run_dir) / f"{tag}.json", rec)
        records.append(rec)
    return records
