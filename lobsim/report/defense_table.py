"""The defense table (issue 13): one table per market, one row per (model, defense), from ``advsim lob defend`` runs.

Rows come from ``metrics.json`` ``report.defense_table`` (see :mod:`lobsim.defenses.experiment`); runs of several
model kinds on one market merge into one table (same ticker; a later run's row replaces an earlier one of the same
model and defense). ``report.detection`` entries give the detector's false-positive rate on clean test snippets.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_text, write_json
from lobsim.report.tables import _num, rows_csv

DEFENSE_TEXT = (
    "One row per model and defense (none = plain training). Clean: test accuracy (block-bootstrap SE) on the "
    "evaluation snippets (the best constant answer is given under the table). Top class: share of the evaluation "
    "snippets given the model's most frequent answer; near 100% the model has collapsed to a constant, which no "
    "orders can move (robust and useless). Random: accuracy on the attacked snippets with random orders worth the "
    "random budget. "
    "Minimal capital: per attacked snippet (classified right before the attack) the capital of the cheapest fooling "
    "orders the attack ensemble found, median (first - third quartile); a snippet the attack did not fool within "
    "its budget counts as more than that budget. Certified: median certified capital of the same snippets (linear "
    "relaxation; interval bound in brackets): no orders worth less can change the model's prediction, so the true "
    "minimal capital of a snippet lies between its certified and its attack capital. vs none: on the snippets "
    "attacked under both this defense and plain training (and fooled in at least one), the share where the defense "
    "needs more capital, with the median ratio of the capitals and the number of such snippets. Fooled at $b: "
    "share of the attacked snippets fooled with at most b dollars. Detected: share of the successful attacks' books "
    "the resting-size detector flags (at its false-positive rate below the table). Training: wall-clock seconds "
    "(the defense's share in brackets).")

COLUMNS = ("ticker", "model", "defense", "budget", "a_test", "a_test_se", "a_rand", "a_rand_se", "attacked", "n",
           "capital_q1", "capital_median", "capital_q3", "certified_median", "certified_interval_median",
           "detected", "train_seconds", "defense_seconds")


def merge_defense_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows keyed by (ticker, model, defense), later rows winning, in first-seen order."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        if not all(k in r for k in ("ticker", "model", "defense")):
            raise ValueError(f"defense table row without ticker/model/defense: {dict(r)}")
        merged[(str(r["ticker"]), str(r["model"]), str(r["defense"]))] = dict(r)
    return list(merged.values())


def _money(x: Any, cap: Any = None) -> str:
    v = _num(x)
    if v is None:
        c = _num(cap)
        return f"> {c:,.0f}" if c is not None and x is None and cap is not None else "-"
    return f"{v:,.0f}"


def _pct(x: Any, se: Any = None) -> str:
    v = _num(x)
    if v is None:
        return "-"
    s = _num(se)
    return f"{100 * v:.1f}" + (f" ± {100 * s:.1f}" if s is not None else "")


def defense_markdown(rows: Sequence[Mapping[str, Any]], detection: Sequence[Mapping[str, Any]] = ()) -> str:
    """One markdown table per ticker (see ``DEFENSE_TEXT``)."""
    out = []
    tickers = list(dict.fromkeys(str(r["ticker"]) for r in rows))
    for t in tickers:
        rs = [r for r in rows if str(r["ticker"]) == t]
        budgets = sorted({float(b) for r in rs for b in (r.get("budgets") or [])})
        head = ["Model", "Defense", "Clean (%)", "Top class (%)", "Random (%)", "Minimal capital ($): median (Q1-Q3)",
                "Certified ($): linear (interval)", "vs none: higher (ratio)"] + \
            [f"Fooled at ${b:,.0f}" for b in budgets] + ["Detected", "Training (s)", "n"]
        lines = [f"#### {t}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rs:
            cap = r.get("attack_budget")
            name = str(r["defense"]) + (f" (${r['budget']:,.0f})" if _num(r.get("budget")) is not None else "")
            capital = (f"{_money(r.get('capital_median'), cap)} ({_money(r.get('capital_q1'), cap)} - "
                       f"{_money(r.get('capital_q3'), cap)})") if r.get("attacked") else "-"
            cert = "-" if _num(r.get("certified_median")) is None else \
                f"{_money(r.get('certified_median'))} ({_money(r.get('certified_interval_median'))})"
            fooled = r.get("fooled_at") or {}
            vs = r.get("vs_none") or {}
            ratio = _num(vs.get("median_ratio"))
            paired = "-" if vs.get("higher") is None else \
                f"{_pct(vs['higher'])}% ({'inf' if ratio is None else f'{ratio:.2f}'}, n {vs.get('n')})"
            cells = [str(r["model"]), name, _pct(r.get("a_test"), r.get("a_test_se")), _pct(r.get("top_class_share")),
                     _pct(r.get("a_rand"), r.get("a_rand_se")), capital, cert, paired]
            cells += [_pct(fooled.get(f"{b:g}")) for b in budgets]
            ts, ds = _num(r.get("train_seconds")), _num(r.get("defense_seconds"))
            cells += [_pct(r.get("detected")),
                      "-" if ts is None else f"{ts:.0f}" + (f" ({ds:.0f})" if ds else ""),
                      f"{r.get('attacked', '-')}/{r.get('n', '-')}"]
            lines.append("| " + " | ".join(cells) + " |")
        consts = sorted({round(100 * float(r["best_constant"]), 1) for r in rs if _num(r.get("best_constant"))})
        if consts:
            best = ", ".join(f"{c:.1f}%" for c in consts)
            lines.append(f"\nBest constant answer on the evaluation snippets: {best}.")
        for d in detection:
            c = d.get("clean") if str(d.get("ticker")) == t else None
            if c:
                se = _num(c.get("fpr_test_se"))
                lines.append(f"\nDetector: threshold at the {100 * (1 - c['fpr_target']):g}th percentile of the "
                             f"scores of {c['n_fit']} clean training snippets (target false-positive rate "
                             f"{100 * c['fpr_target']:g}%); false-positive rate on {c['n_test']} clean test snippets "
                             f"it never saw: {100 * c['fpr_test']:.1f}%" + (f" ± {100 * se:.1f}" if se else "") + ".")
                break
        out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def write_defense_tables(out: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                         detection: Sequence[Mapping[str, Any]] = ()) -> list[Path]:
    """defense_table.md / .csv / .json in ``out``."""
    out = Path(out)
    return [atomic_write_text(out / "defense_table.md", defense_markdown(rows, detection)),
            atomic_write_text(out / "defense_table.csv", rows_csv(rows, COLUMNS)),
            write_json(out / "defense_table.json", {"rows": list(rows), "detection": list(detection)})]
