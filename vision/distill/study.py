"""The A1-A5 study of spec-000 section 6 at a chosen scale: two teachers, eight students, one table.

Teachers (``advsim vision train`` runs): a naturally trained one and a PGD adversarially trained (AT) one.
Students (:func:`vision.distill.run.distill_run`): natural, AT, KD from each teacher, ARD from each teacher, free
adversarial training with ``m`` replays and Fast-ARD from the AT teacher with ``m`` replays. Replay methods run
``student_epochs / m`` epochs (rounded, at least 1), so every student gets about the same number of parameter
updates, as in the thesis (200 / m epochs). Every model is evaluated on the same test images with the same PGD-20.

Each teacher and student is its own run directory under ``out``; a finished one (metrics.json present) is reused,
so an interrupted study resumes where it stopped. The study writes ``ard_table.{md,csv,json}``, ``claims.json``
(each qualitative claim of A1, A2, A4, A5 with the numbers that decide it) and ``ard_table.png``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from data_loaders.rundir import finish_run, is_incomplete, make_run_dir, read_json, write_json
from vision.train import VisionTrainConfig, train_run

from .run import DistillConfig, distill_run
from .tables import accuracy_bars, binomial_se, fmt_pct, markdown_table, write_tables

# (row name, method, teacher key or None, description)
ROWS: tuple[tuple[str, str, str | None, str], ...] = (
    ("student-natural", "standard", None, "student, natural training"),
    ("student-at", "at", None, "student, PGD adversarial training"),
    ("kd-natural-teacher", "kd", "teacher-natural", "natural teacher -KD-> student"),
    ("kd-at-teacher", "kd", "teacher-at", "AT teacher -KD-> student"),
    ("ard-at-teacher", "ard", "teacher-at", "AT teacher -ARD-> student"),
    ("ard-natural-teacher", "ard", "teacher-natural", "natural teacher -ARD-> student"),
    ("free", "free", None, "student, free adversarial training (m replays)"),
    ("fast-ard-at-teacher", "fast-ard", "teacher-at", "AT teacher -Fast-ARD-> student (m replays)"),
)
TEACHERS = (("teacher-natural", "standard", "teacher, natural training"),
            ("teacher-at", "pgd", "teacher, PGD adversarial training"))


@dataclass
class ARDStudyConfig:
    """Scale and settings of the study (defaults: the CPU scale of docs/vision-distill.md)."""

    dataset: str = "fashion-mnist"
    root: str | None = None
    teacher_model: str = "mnist_large"
    student_model: str = "mnist_small"
    eps: float = 0.1
    step_size: float | None = None      # training attack step, default eps / 4
    attack_steps: int = 10              # PGD steps of AT / ARD students
    teacher_attack_steps: int = 5       # PGD steps of the AT teacher
    temperature: float = 30.0
    alpha: float = 1.0
    replays: int = 4
    teacher_epochs: int = 3
    student_epochs: int = 4
    batch_size: int = 100
    optimizer: str = "adam"
    lr: float = 1e-3
    schedule: str = "cosine"
    momentum: float = 0.9
    weight_decay: float = 0.0
    augment: bool | None = None
    n_train: int | None = 10000
    n_test: int = 1000
    eval_steps: int = 20
    seed: int = 0
    device: str = "auto"
    rows: tuple[str, ...] | None = None  # subset of ROWS to run (default all); teachers run when needed


def _teacher_config(c: ARDStudyConfig, defense: str) -> VisionTrainConfig:
    step = c.step_size if c.step_size is not None else c.eps / 4
    return VisionTrainConfig(
        dataset=c.dataset, root=c.root, model=c.teacher_model, defense=defense, eps=c.eps, alpha=step,
        attack_steps=c.teacher_attack_steps, epochs=c.teacher_epochs, batch_size=c.batch_size,
        optimizer=c.optimizer, lr_max=c.lr, schedule=c.schedule, momentum=c.momentum, weight_decay=c.weight_decay,
        augment=c.augment, guard=False, n_train=c.n_train, n_test=c.n_test, eval_steps=c.eval_steps, seed=c.seed,
        device=c.device)


def _student_config(c: ARDStudyConfig, method: str, teacher: str | None) -> DistillConfig:
    replay = method in ("fast-ard", "free")
    epochs = max(1, round(c.student_epochs / c.replays)) if replay else c.student_epochs
    return DistillConfig(
        method=method, teacher=teacher, dataset=c.dataset, root=c.root, student=c.student_model, eps=c.eps,
        step_size=c.step_size, attack_steps=c.attack_steps, replays=c.replays, temperature=c.temperature,
        alpha=c.alpha, epochs=epochs, batch_size=c.batch_size, optimizer=c.optimizer, lr=c.lr,
        schedule=c.schedule, momentum=c.momentum, weight_decay=c.weight_decay, augment=c.augment,
        n_train=c.n_train, n_test=c.n_test, eval_steps=c.eval_steps, seed=c.seed, device=c.device)


def _finished(run_dir: Path) -> dict[str, Any] | None:
    done = (run_dir / "metrics.json").is_file() and not is_incomplete(run_dir)
    return read_json(run_dir / "metrics.json") if done else None


def _claims(r: dict[str, dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """The qualitative targets, each decided by the measured robust accuracies (fractions)."""
    def rob(name: str) -> float | None:
        return r[name]["test_pgd_acc"] if name in r else None

    def pair(claim: str, target: str, a: str, b: str, rule: str, holds) -> dict[str, Any] | None:
        ra, rb = rob(a), rob(b)
        if ra is None or rb is None:
            return None
        se = ((binomial_se(ra, n) or 0) ** 2 + (binomial_se(rb, n) or 0) ** 2) ** 0.5
        return {"target": target, "claim": claim, "rule": rule, "a": a, "robust_a": ra, "b": b, "robust_b": rb,
                "difference": ra - rb, "se_difference": se, "holds": bool(holds(ra, rb))}

    out = []
    kd_nat = rob("kd-natural-teacher")
    if kd_nat is not None:
        out.append({"target": "A5", "claim": "KD from a natural teacher gives a ~0% robust student",
                    "rule": "robust accuracy <= 5%", "a": "kd-natural-teacher", "robust_a": kd_nat,
                    "holds": kd_nat <= 0.05})
    out.append(pair("ARD from a robust teacher beats KD from it", "A1", "ard-at-teacher", "kd-at-teacher",
                    "robust(a) > robust(b)", lambda a, b: a > b))
    out.append(pair("ARD from a robust teacher beats an AT student of the same size", "A2", "ard-at-teacher",
                    "student-at", "robust(a) > robust(b)", lambda a, b: a > b))
    out.append(pair("Fast-ARD beats free adversarial training (same m, same updates)", "A4",
                    "fast-ard-at-teacher", "free", "robust(a) > robust(b)", lambda a, b: a > b))
    out.append(pair("a natural teacher with ARD still gives a robust student", "A5", "ard-natural-teacher",
                    "student-at", "robust(a) >= robust(b) / 2", lambda a, b: a >= b / 2))
    return [c for c in out if c is not None]


def ard_study(cfg: ARDStudyConfig, out: str | Path, *, overwrite: bool = False,
              progress: bool = True) -> dict[str, Any]:
    """Run (or reuse) the teachers and students under ``out`` and write the table, claims and figure."""
    c = ARDStudyConfig(**asdict(cfg))
    wanted = [row for row in ROWS if c.rows is None or row[0] in c.rows]
    if c.rows is not None:
        unknown = sorted(set(c.rows) - {row[0] for row in ROWS})
        if unknown:
            raise ValueError(f"unknown study rows {unknown}; choose from {', '.join(r[0] for r in ROWS)} (--rows)")
    out = Path(out)
    if (out / "ard_table.json").is_file() and not overwrite:
        raise FileExistsError(f"{out}: already holds a finished study (ard_table.json); use --overwrite to redo it")
    make_run_dir(out, c, overwrite=True)
    results: dict[str, dict[str, Any]] = {}
    needed_teachers = {t for _, _, t, _ in wanted if t is not None}
    for name, defense, _ in TEACHERS:
        if name not in needed_teachers and c.rows is not None:
            continue
        rd = out / name
        m = None if overwrite else _finished(rd)
        results[name] = m if m is not None else train_run(_teacher_config(c, defense), rd, overwrite=True,
                                                          progress=progress)
    for name, method, teacher, _ in wanted:
        rd = out / name
        m = None if overwrite else _finished(rd)
        if m is None:
            m = distill_run(_student_config(c, method, str(out / teacher) if teacher else None), rd,
                            overwrite=True, progress=progress)
        results[name] = m

    descriptions = {n: d for n, _, d in TEACHERS} | {n: d for n, _, _, d in ROWS}
    rows = []
    for name, m in results.items():
        found = re.search(r"n=(\d+)", str(m.get("test_pgd", "")))
        n = int(found.group(1)) if found else c.n_test
        rows.append({
            "row": name, "description": descriptions[name], "model": m["model_name"],
            "method": m.get("method", m.get("defense")), "params": m.get("params"), "madds": m.get("madds"),
            "epochs": m["epochs_run"], "seconds_per_epoch": m.get("seconds_per_epoch"),
            "train_seconds": m.get("train_seconds"), "clean_acc": m["test_clean_acc"],
            "pgd20_acc": m["test_pgd_acc"], "se_clean": binomial_se(m["test_clean_acc"], n),
            "se_pgd20": binomial_se(m["test_pgd_acc"], n)})
    if any(r["params"] is None for r in rows):
        from vision.evaluate import load_run_model

        from .efficiency import count_madds, count_parameters
        for r in rows:
            if r["params"] is None:
                model, _ = load_run_model(out / r["row"], "cpu")
                shape = tuple(results[r["row"]]["input_shape"])
                r["params"], r["madds"] = count_parameters(model), count_madds(model, shape)
    columns = ["row", "description", "model", "method", "params", "madds", "epochs", "seconds_per_epoch",
               "train_seconds", "clean_acc", "se_clean", "pgd20_acc", "se_pgd20"]
    md_rows = [{**r, "clean": fmt_pct(r["clean_acc"], r["se_clean"]), "robust": fmt_pct(r["pgd20_acc"], r["se_pgd20"]),
                "params_fmt": f"{r['params']:,}", "madds_fmt": f"{r['madds'] / 1e6:.2f}M",
                "spe": f"{r['seconds_per_epoch']:.1f}"} for r in rows]
    md = markdown_table(md_rows, ["description", "model", "params_fmt", "madds_fmt", "epochs", "spe", "clean",
                                  "robust"],
                        ["Model", "Net", "Params", "MAdds", "Epochs", "s/epoch", "A_nat (%)", "A_adv PGD-20 (%)"])
    claims = _claims(results, c.n_test)
    md += "\n" + markdown_table(
        [{**cl, "ra": fmt_pct(cl["robust_a"]), "rb": fmt_pct(cl.get("robust_b")),
          "verdict": "holds" if cl["holds"] else "does not hold"} for cl in claims],
        ["target", "claim", "rule", "ra", "rb", "verdict"], ["Target", "Claim", "Rule", "a (%)", "b (%)", "Here"])
    write_tables(out, "ard_table", rows, columns, md)
    write_json(out / "claims.json", claims)
    finish_run(out, {"rows": rows, "claims": claims})
    accuracy_bars(out / "ard_table.png", [r["description"] for r in rows], [r["clean_acc"] for r in rows],
                  [r["pgd20_acc"] for r in rows], f"{c.dataset}, eps={c.eps:.3g}: clean vs PGD-20")
    return {"rows": rows, "claims": claims, "markdown": md}
