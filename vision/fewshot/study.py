"""The Q1 / AQ study on one dataset: natural and adversarially-queried meta-learners for each head, evaluated on
novel-class episodes, as one table.

Runs (each its own run directory under ``out``; a finished one is reused, so an interrupted study resumes):
natural and AQ training for every head in ``heads`` (ridge = R2-D2, proto = ProtoNet, svm = MetaOptNet,
maml = MAML with an FC-only inner loop), plus meta-TRADES with the ridge head for each ``trades_coefs`` value.
Every run is evaluated on the same novel-class episodes (same seed) at each shot with PGD (early stop once every
query is broken, which does not change the result) and, for the heads in ``mifgsm_heads``, MI-FGSM. Writes
``fewshot_table.{md,csv,json}``, ``claims.json`` (Q1 and the AQ targets with the numbers that decide them) and
``fewshot_table.png``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from data_loaders.rundir import finish_run, is_incomplete, make_run_dir, read_json, resolve_device, write_json
from vision.distill.tables import accuracy_bars, fmt_pct, markdown_table, write_tables

from .datasets import load_fewshot
from .evaluate import evaluate_episodes
from .model import load_fewshot_run
from .train import FewShotConfig, fewshot_train_run

HEAD_NAMES = {"ridge": "R2-D2 (ridge)", "proto": "ProtoNet", "svm": "MetaOptNet (SVM)",
              "maml": "MAML (FC-only inner loop)"}


@dataclass
class FewShotStudyConfig:
    """The training settings shared by every run and the evaluation protocol."""

    train: FewShotConfig
    heads: tuple[str, ...] = ("ridge", "proto", "svm", "maml")
    trades_coefs: tuple[float, ...] = (1.0,)
    shots: tuple[int, ...] = (1, 5)
    query: int = 10
    episodes: int = 25
    batch: int = 10
    steps: int = 20
    mifgsm_heads: tuple[str, ...] = ("ridge",)
    eval_seed: int = 0


def _runs(c: FewShotStudyConfig) -> list[tuple[str, FewShotConfig]]:
    runs = []
    for head in c.heads:
        for training in ("natural", "aq"):
            runs.append((f"{training}-{head}", replace(c.train, head=head, training=training)))
    for coef in c.trades_coefs:
        runs.append((f"trades{coef:g}-ridge", replace(c.train, head="ridge", training="trades", trades_coef=coef)))
    return runs


def _claims(rows: list[dict[str, Any]], shot: int, way: int) -> list[dict[str, Any]]:
    by = {(r["training"], r["head"], r["shot"]): r for r in rows}
    chance = 1.0 / way
    out = []
    nat = [r for r in rows if r["training"] == "natural" and r["shot"] == shot]
    if nat:
        worst = max(r["pgd_acc"] for r in nat)
        out.append({"target": "Q1", "claim": f"natural meta-learners are ~0% robust under PGD ({shot}-shot)",
                    "rule": "every natural head <= 5% robust", "value": worst, "holds": worst <= 0.05})
    aq = sorted((r for r in rows if r["training"] == "aq" and r["shot"] == shot), key=lambda r: -r["pgd_acc"])
    for r in aq:
        n = by.get(("natural", r["head"], shot))
        ok_clean = r["clean_acc"] >= chance + 0.10
        out.append({"target": "Q2-Q4, Q6", "claim": f"AQ gives clearly non-zero robust accuracy: {r['head']}",
                    "rule": "AQ robust >= 10%, above the natural head's, clean >= chance + 10 points",
                    "value": r["pgd_acc"], "clean": r["clean_acc"],
                    "holds": r["pgd_acc"] >= 0.10 and ok_clean and (n is None or r["pgd_acc"] > n["pgd_acc"])})
    learned = [r for r in aq if r["clean_acc"] >= chance + 0.10]
    if learned:
        out.append({"target": "ordering", "claim": f"AQ robust accuracy, best to worst ({shot}-shot)",
                    "rule": "heads with clean >= chance + 10 points (thesis: R2-D2 > MetaOptNet > ProtoNet, "
                            "5-shot CIFAR-FS)",
                    "value": " > ".join(f"{r['head']} {100 * r['pgd_acc']:.1f}" for r in learned), "holds": None})
    return out


def fewshot_study(cfg: FewShotStudyConfig, out: str | Path, *, overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Train (or reuse) every run under ``out``, evaluate them, write the table, claims and figure."""
    bad = [h for h in cfg.heads if h not in HEAD_NAMES]
    if bad or not cfg.heads:
        raise ValueError(f"unknown or no heads {bad}; choose from {', '.join(HEAD_NAMES)} (--heads)")
    out = Path(out)
    if (out / "fewshot_table.json").is_file() and not overwrite:
        raise FileExistsError(f"{out}: already holds a finished study (fewshot_table.json); use --overwrite to redo it")
    make_run_dir(out, cfg, overwrite=True)
    device = resolve_device(cfg.train.device)
    data = None
    rows: list[dict[str, Any]] = []
    for name, rc in _runs(cfg):
        rd = out / name
        if overwrite or not (rd / "metrics.json").is_file() or is_incomplete(rd):
            fewshot_train_run(rc, rd, overwrite=True, progress=progress)
        metrics = read_json(rd / "metrics.json")
        model, mc, _ = load_fewshot_run(rd, device)
        if data is None:
            data = load_fewshot(mc.dataset, mc.root, mc.per_class, mc.seed).to(device)
        for shot in cfg.shots:
            cache = rd / f"study-eval-{shot}shot.json"
            if cache.is_file() and not overwrite:
                rec = read_json(cache)
            else:
                attacks = ("pgd", "mifgsm") if mc.head in cfg.mifgsm_heads else ("pgd",)
                rec = evaluate_episodes(model, data, split="novel", way=mc.way, shot=shot, query=cfg.query,
                                        episodes=cfg.episodes, batch=cfg.batch, attacks=attacks, eps=mc.eps,
                                        steps=cfg.steps, seed=cfg.eval_seed, progress=progress)
                write_json(cache, rec)
            rows.append({"run": name, "head": mc.head, "training": mc.training,
                         "trades_coef": mc.trades_coef if mc.training == "trades" else None, "shot": shot,
                         "clean_acc": rec["clean_acc"], "clean_ci95": rec["clean_ci95"], "pgd_acc": rec["pgd_acc"],
                         "pgd_ci95": rec["pgd_ci95"], "mifgsm_acc": rec.get("mifgsm_acc"),
                         "mifgsm_ci95": rec.get("mifgsm_ci95"), "episodes": rec["episodes"],
                         "train_seconds": metrics["train_seconds"], "eval_seconds": rec["seconds"]})
    columns = ["run", "head", "training", "trades_coef", "shot", "clean_acc", "clean_ci95", "pgd_acc", "pgd_ci95",
               "mifgsm_acc", "mifgsm_ci95", "episodes", "train_seconds", "eval_seconds"]

    def label(r: dict[str, Any]) -> str:
        if r["training"] == "trades":
            return f"{HEAD_NAMES[r['head']]}, meta-TRADES 1/λ={r['trades_coef']:g}"
        t = {"natural": "natural", "aq": "AQ"}[r["training"]]
        return f"{HEAD_NAMES[r['head']]}, {t}"

    md_rows = [{**r, "model": label(r), "clean": fmt_pct(r["clean_acc"], r["clean_ci95"]),
                "pgd": fmt_pct(r["pgd_acc"], r["pgd_ci95"]), "mi": fmt_pct(r["mifgsm_acc"], r["mifgsm_ci95"]),
                "tmin": f"{r['train_seconds'] / 60:.1f}"} for r in rows]
    md = ""
    for shot in cfg.shots:
        md += f"\n{cfg.train.way}-way {shot}-shot, eps = {cfg.train.eps:.4g}, {cfg.episodes} novel episodes\n\n"
        md += markdown_table([r for r in md_rows if r["shot"] == shot], ["model", "clean", "pgd", "mi", "tmin"],
                             ["Model", "A_nat (%)", f"A_adv PGD-{cfg.steps} (%)", f"A_adv MI-FGSM-{cfg.steps} (%)",
                              "train (min)"])
    claims = [cl for shot in cfg.shots for cl in _claims(rows, shot, cfg.train.way)]
    md += "\n" + markdown_table(
        [{**cl, "v": fmt_pct(cl["value"]) if isinstance(cl["value"], float) else cl["value"],
          "verdict": {True: "holds", False: "does not hold", None: "reported"}[cl["holds"]]} for cl in claims],
        ["target", "claim", "rule", "v", "verdict"], ["Target", "Claim", "Rule", "Value", "Here"])
    write_tables(out, "fewshot_table", rows, columns, md.lstrip("\n"))
    write_json(out / "claims.json", claims)
    finish_run(out, {"rows": rows, "claims": claims})
    last = cfg.shots[-1]
    sel = [r for r in rows if r["shot"] == last]
    accuracy_bars(out / "fewshot_table.png", [label(r) for r in sel], [r["clean_acc"] for r in sel],
                  [r["pgd_acc"] for r in sel],
                  f"{cfg.train.way}-way {last}-shot novel episodes, eps={cfg.train.eps:.3g}",
                  robust_label=f"PGD-{cfg.steps}")
    return {"rows": rows, "claims": claims, "markdown": md.lstrip("\n"), "config": asdict(cfg)}
