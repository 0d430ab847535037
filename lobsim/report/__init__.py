"""Reports from run directories: Table 3.2, Table 3.3, accuracy-vs-capital curves and the thesis' figures.

Every attack / demo run directory holds a ``metrics.json`` whose ``report`` entry has any of

- ``table_3_2``: list of (partial) Table 3.2 rows ``{ticker, model, a_test, a_rand, a_adv, capital, size, cost, n}``
  (rows of several runs with the same ticker and model are merged, e.g. a random run and a capital run);
- ``table_3_3``: list of ``{title, target, gamma, matrix}`` with ``matrix[surrogate][victim]`` results;
- ``curves``: list of ``{title, budgets, accuracy: {model: [...]}, clean: {model: a}}``;
- ``transfer``: list of ``{title, matrix}`` with ``matrix[crafted on][replayed on]`` = {accuracy, clean_accuracy};
- ``baselines``: ``{model: EvalResult dict}`` (test accuracy next to the best constant answer);

and figure sources ``fig_3_1.npz`` (series, dt, start, window, horizon), ``fig_3_2.npz`` (patterns named
``pattern_<name>``, dt) and ``fig_3_3.npz`` (sizes, orders, delta, dt), all loaded without pickle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_loaders.rundir import atomic_write_text, read_json, write_json
from lobsim.features import CLASS_NAMES
from lobsim.report import figures as figs
from lobsim.report import tables


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"{path}: not a figure data file (npz without pickle expected): {exc}") from exc


def figures_from_run(run: str | os.PathLike, out: str | os.PathLike, prefix: str = "") -> list[Path]:
    """(Re)draw the figures whose sources (fig_3_*.npz) the run directory holds."""
    run, out = Path(run), Path(out)
    made = []
    if (run / "fig_3_1.npz").is_file():
        d = _load_npz(run / "fig_3_1.npz")
        made.append(figs.fig_swa_series(d["series"], float(d["dt"]), int(d["start"]), int(d["window"]),
                                        int(d["horizon"]), out / f"{prefix}fig_3_1_swa.png"))
    if (run / "fig_3_2.npz").is_file():
        d = _load_npz(run / "fig_3_2.npz")
        pats = {k[len("pattern_"):]: v for k, v in d.items() if k.startswith("pattern_")}
        made.append(figs.fig_universal_patterns(pats, float(d["dt"]), out / f"{prefix}fig_3_2_universal.png",
                                                title=str(d["title"]) if "title" in d else ""))
    if (run / "fig_3_3.npz").is_file():
        d = _load_npz(run / "fig_3_3.npz")
        made.append(figs.fig_attack_heatmaps(d["sizes"], d["orders"], d["delta"], float(d["dt"]),
                                             out / f"{prefix}fig_3_3_heatmaps.png",
                                             title=str(d["title"]) if "title" in d else ""))
    return made


def collect(run_dirs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Read the ``report`` entries of the runs' metrics.json files (INCOMPLETE runs are refused).

    A ``lob attack`` run's model evaluation (``advsim lob evaluate``) is picked up from its ``--model`` run, for
    the comparison with the best constant answer.
    """
    from data_loaders.rundir import is_incomplete

    rows: list[dict] = []
    t33: list[dict] = []
    curves: list[dict] = []
    transfer: list[dict] = []
    baselines: dict[str, dict] = {}
    defense: list[dict] = []  # issue 13: model x defense rows (lobsim.report.defense_table)
    detection: list[dict] = []
    for run in run_dirs:
        path = Path(run) / "metrics.json"
        if is_incomplete(run):
            raise ValueError(f"{run}: INCOMPLETE run (it failed or was interrupted); run its command again first")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no metrics.json (is {run} a finished advsim run directory?)")
        metrics = read_json(path)
        rep = metrics.get("report") if isinstance(metrics, dict) else None
        if not isinstance(rep, dict):
            raise ValueError(f"{path}: no 'report' entry: this run has no attack results to report")
        rows += rep.get("table_3_2", [])
        t33 += rep.get("table_3_3", [])
        curves += rep.get("curves", [])
        transfer += rep.get("transfer", [])
        defense += rep.get("defense_table", [])
        detection += rep.get("detection", [])
        baselines.update(rep.get("baselines", {}))
        baselines.update(_model_eval(Path(run), metrics))
    from lobsim.report.defense_table import merge_defense_rows

    return {"table_3_2": tables.merge_rows(rows), "table_3_3": t33, "curves": curves, "transfer": transfer,
            "baselines": baselines, "defense_table": merge_defense_rows(defense), "detection": detection}


def _model_eval(run: Path, metrics: dict[str, Any]) -> dict[str, dict]:
    """``{model name: eval}`` of the ``--model`` run of a ``lob attack`` run, when that run was evaluated."""
    cfg_path = run / "config.json"
    if "model" not in metrics or not cfg_path.is_file():
        return {}
    try:
        cfg = read_json(cfg_path)
        ev = read_json(Path(cfg["model_run"]) / "metrics.json")["eval"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {str(metrics["model"]): ev} if isinstance(ev, dict) and "accuracy" in ev else {}


CLASSES_TEXT = ("Classes: **down** / **flat** / **up** = the size-weighted average price (SWA) falls by more than "
                "tau, moves by at most tau, or rises by more than tau between the end of the input window and the "
                "label horizon (tau is fitted on the training days so that a third of the changes are flat).")
TABLE_32_TEXT = (
    "A_test: accuracy on the attacked test snippets without attack. A_rand: accuracy when random orders of the "
    "same kind (top levels, whole shares) worth the random budget are added. A_adv: accuracy under the "
    "capital-constrained attack (by default the ensemble: greedy, gradient with restarts, gradient-free search): a "
    "snippet still counts as correct unless the attack flipped a correct prediction within the budget. Capital "
    "($): value of all orders placed (shares x price, summed over the window) of the cheapest fooling orders found "
    "for the snippet (minimal capital). First success ($): capital when the winning attack first succeeded, before "
    "minimisation. Size (%): the attacker's resting shares after propagation as a percentage of the clean book's "
    "visible shares over the window. Cost ($): the attacker's loss, marked to market at the last mid price "
    "(positive = the attacker lost money, negative = made money; unfilled orders are cancelled at no cost, no "
    "fees). Capital, first success, size and cost are means over the successful attacks. Won by: successes per "
    "attack member. Masking: snippets only the gradient-free member fooled (a sign of gradient masking). "
    "'a ± s': accuracy ± one block-bootstrap standard error over time blocks of window + horizon steps "
    "(lobsim.stats; overlapping snippets are not independent, so the binomial error would understate it).")
TABLE_33_TEXT = (
    "Fooled: fooled / eligible snippets. Eligible = test snippets the victim classifies correctly without the "
    "pattern and whose true class is not the target; fooled = eligible snippets the victim assigns to the target "
    "class once the pattern's orders are on the book. Size: mean relative size of the deployed orders (% of the "
    "clean book's shares) over the eligible snippets. '-': no eligible snippet.")
TRANSFER_TEXT = (
    "Accuracy (%) of each model on books perturbed by the orders crafted against another model, snippet by "
    "snippet (zero orders where the source model was not attacked); its clean accuracy in brackets. A cell whose "
    "row and column name the same model is the white-box attack. A transfer attack that beats the white-box one "
    "is the usual sign of gradient masking.")
FIGURE_CAPTIONS = {
    "fig_3_1_swa.png": "Fig. 3.1: the SWA around one test snippet; the input window in green, the label point as a "
                       "green dot.",
    "fig_3_2_universal.png": "Fig. 3.2: universal pattern(s): shares the attacker adds at each book level (x axis: "
                             "bid levels deepest to best, then ask levels best to deepest) over the window (y axis).",
    "fig_3_3_heatmaps.png": "Fig. 3.3: one successful capital attack: clean and perturbed book, the orders placed, "
                            "and the shares they add to the book after propagation.",
}


def constant_verdict(model: str, ev: dict[str, Any]) -> str:
    """One sentence: is ``model``'s test accuracy better than the best constant answer on the same snippets?

    The best constant answer is the class most frequent among the test snippets (an upper bound on any model
    that ignores its input). When the evaluation stores the paired block-bootstrap comparison of
    :func:`lobsim.stats.compare_with_baselines` (``vs_best_constant`` / ``best_constant``, at the top level or
    under ``baselines``), "better" means the paired difference exceeds 2 of its standard errors; otherwise (HOOK
    until every evaluation stores it) the accuracy must exceed the constant by 2 binomial standard errors,
    which understate the uncertainty of overlapping windows.
    """
    cmp = ev.get("baselines") if isinstance(ev.get("baselines"), dict) else ev
    acc = float(ev["accuracy"]) if not isinstance(ev["accuracy"], dict) else float(ev["accuracy"]["accuracy"])
    bc, vs = cmp.get("best_constant"), cmp.get("vs_best_constant")
    fr = list(ev.get("test_class_fractions") or [])
    if isinstance(bc, dict):
        k, best = int(bc["class"]), float(bc["accuracy"])
    elif fr:
        k = int(np.argmax(fr))
        best = float(fr[k])
    else:
        return f"- {model}: test accuracy {100 * acc:.2f}% (no class fractions stored to compare with)."
    if isinstance(vs, dict) and vs.get("se"):
        lo, how = best + float(vs["diff"]) - 2 * float(vs["se"]), "2 paired block-bootstrap standard errors"
    else:
        lo, how = acc - 2 * float(ev.get("stderr") or 0.0), "2 binomial standard errors"
    head = (f"- {model}: test accuracy {100 * acc:.2f}% on {ev.get('n', '?')} snippets; always answering "
            f"'{CLASS_NAMES[k]}' scores {100 * best:.2f}%")
    if lo > best:
        return f"{head}: better than the best constant answer (by more than {how})."
    if acc <= best:
        return (f"{head}: **not better than the best constant answer**; its attack results measure how easily a "
                "model without skill is moved, not the loss of a useful prediction.")
    return f"{head}: **not clearly better** than the best constant answer (within {how})."


def _curve_section(c: dict[str, Any], out: Path, i: int) -> tuple[list[str], list[Path]]:
    title = c.get("title", "Accuracy under attack vs capital")
    head = ["Budget ($)"] + list(c["accuracy"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k, b in enumerate(c["budgets"]):
        lines.append("| " + " | ".join([f"{b:,.0f}"] + [f"{100 * c['accuracy'][m][k]:.2f}"
                                                         for m in c["accuracy"]]) + " |")
    clean = c.get("clean") or {}
    note = ("Accuracy under attack (%) at each capital budget (one attack run at the largest budget gives the "
            "whole curve)" + (f"; clean accuracy: {', '.join(f'{m} {100 * a:.2f}%' for m, a in clean.items())}."
                              if clean else "."))
    parts = [f"## {title} (%)\n", note + "\n", "\n".join(lines) + "\n"]
    if len(c["budgets"]) < 2:
        parts.append("One budget only, so no curve is drawn; give several budgets (`--budgets 1e3,1e4,1e5`) for "
                     "one.\n")
        return parts, []
    p = figs.fig_capital_curves(c["budgets"], c["accuracy"], out / f"capital_curve_{i}.png", clean or None,
                                title=title)
    parts.append(f"![accuracy vs capital]({p.name})\n")
    return parts, [p]


def write_report(out: str | os.PathLike, rep: dict[str, Any], title: str = "",
                 figures: Sequence[Path] = ()) -> list[Path]:
    """Write tables (md/csv/json), curve figures and a report.md that defines its terms into ``out``.

    ``figures``: PNGs already drawn into ``out`` (see :func:`figures_from_run`), shown at the end of report.md.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    parts = [f"# {title or 'advsim attack report'}\n", CLASSES_TEXT + "\n"]
    baselines = rep.get("baselines") or {}
    if baselines:
        parts += ["## The models against the best constant answer\n",
                  "\n".join(constant_verdict(m, ev) for m, ev in baselines.items()) + "\n"]
    if rep["table_3_2"]:
        made += tables.write_table_32(out, rep["table_3_2"])
        parts += ["## Table 3.2: clean, random-orders and adversarial accuracy\n", TABLE_32_TEXT + "\n",
                  tables.table_32_markdown(rep["table_3_2"])]
    for i, c in enumerate(rep.get("curves", [])):
        text, pngs = _curve_section(c, out, i)
        parts += text
        made += pngs
    for entry in rep.get("transfer", []):
        parts += [f"## Transfer: {entry.get('title', 'orders crafted on one model, replayed on another')}\n",
                  TRANSFER_TEXT + "\n", tables.transfer_markdown(entry["matrix"])]
    for i, entry in enumerate(rep.get("table_3_3", [])):
        stem = "table_3_3" if i == 0 else f"table_3_3_{i + 1}"
        made += tables.write_table_33(out, entry["matrix"], entry.get("title", ""), stem=stem)
        parts += [f"## Table 3.3: {entry.get('title', 'universal transfer attack')} ({stem}.md)\n",
                  TABLE_33_TEXT + "\n" if i == 0 else "", tables.table_33_markdown(entry["matrix"])]
    if rep.get("defense_table"):
        from lobsim.report.defense_table import DEFENSE_TEXT, defense_markdown, write_defense_tables

        made += write_defense_tables(out, rep["defense_table"], rep.get("detection", []))
        parts += ["## Defenses: one table per market (defense_table.md)\n", DEFENSE_TEXT + "\n",
                  defense_markdown(rep["defense_table"], rep.get("detection", []))]
    shown = [Path(f) for f in figures if Path(f).parent.resolve() == out.resolve()]
    if shown:
        parts.append("## Figures\n")
        for f in shown:
            caption = next((c for k, c in FIGURE_CAPTIONS.items() if f.name.endswith(k)), f.stem)
            parts.append(f"{caption}\n\n![{f.stem}]({f.name})\n")
    made.append(write_json(out / "report.json", rep))
    made.append(atomic_write_text(out / "report.md", "\n".join(p for p in parts if p)))
    return made


def build_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """``advsim lob report``: tables and figures of several runs merged into ``out``."""
    rep = collect(run_dirs)
    drawn: list[Path] = []
    for run in run_dirs:
        drawn += figures_from_run(run, out, prefix=f"{Path(run).name}_" if len(run_dirs) > 1 else "")
    return write_report(out, rep, figures=drawn) + drawn
