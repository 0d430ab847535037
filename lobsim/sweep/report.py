"""The sweep report: accuracy under attack per ticker and model at each budget, and capital curves.

Per (ticker, model), accuracies are pooled over the ticker's days (snippet-weighted means). Cells attacked on a
day the model was trained on (``in_sample``) are left out of the pooled numbers when out-of-sample days exist
for that ticker and model, and the table says which kind it shows. Every number is in ``results.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from data_loaders.rundir import atomic_write_text
from lobsim.sweep.plan import safe_name


def _pool(group) -> dict[str, Any]:
    """Snippet-weighted means over the days of one (ticker, model, attack, fill, defense, budget) group."""
    n = group["n"].sum()
    return {"days": int(group["date"].nunique()), "n": int(n),
            "a_test": float((group["a_test"] * group["n"]).sum() / n) if n else float("nan"),
            "a_adv": float((group["a_adv"] * group["n"]).sum() / n) if n else float("nan")}


def pooled(df) -> list[dict[str, Any]]:
    """One record per (attack, fill, defense, ticker, model) with the pooled curve over the budgets."""
    out = []
    keys = ["attack", "fill_model", "defense", "ticker", "model"]
    for k, g in df.groupby(keys, sort=True):
        oos = g[~g["in_sample"]]
        use, sample = (oos, "out-of-sample") if len(oos) else (g, "in-sample")
        budgets = sorted(use["budget"].unique())
        pts = [_pool(use[use["budget"] == b]) for b in budgets]
        out.append({**dict(zip(keys, k)), "sample": sample, "budgets": [float(b) for b in budgets],
                    "a_adv": [p["a_adv"] for p in pts], "a_test": pts[0]["a_test"], "days": pts[0]["days"],
                    "n": pts[0]["n"]})
    return out


def write_report(out: Path, df, summary: dict[str, Any], failed: list[tuple[str, str]]) -> list[Path]:
    """``OUT/report/report.md`` with the pooled tables and one capital-curve PNG per ticker (lines = models)."""
    from lobsim.report.figures import fig_capital_curves

    rep = out / "report"
    rep.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    parts = [f"# Sweep {summary['name']}\n",
             f"{summary['cells']} cells ({summary['done']} finished, {summary['failed']} failed), "
             f"{summary['days']} ticker-day(s), {summary['instances']} model instance(s). Every row is in "
             "`results.csv` / `results.parquet` (one row per cell and budget).\n",
             "A_test: accuracy on the clean snippets; A_adv: accuracy under attack at the budget (a snippet the "
             "model got wrong before counts as wrong, a failed attack as right). Pooled over the ticker's days, "
             "weighted by snippets.\n"]
    recs = pooled(df) if len(df) else []
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in recs:
        groups.setdefault((r["attack"], r["fill_model"], r["defense"]), []).append(r)
    for (attack, fill, defense), rs in groups.items():
        budgets = sorted({b for r in rs for b in r["budgets"]})
        parts.append(f"## {attack} (fill model {fill}, defense {defense})\n")
        head = ["ticker", "model", "days", "sample", "n", "A_test %"] + [f"A_adv % at ${b:,.0f}" for b in budgets]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in rs:
            adv = dict(zip(r["budgets"], r["a_adv"]))
            cells = [r["ticker"], r["model"], str(r["days"]), r["sample"], str(r["n"]), f"{100 * r['a_test']:.1f}"]
            cells += [f"{100 * adv[b]:.1f}" if b in adv else "-" for b in budgets]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
        for ticker in sorted({r["ticker"] for r in rs}):
            mine = [r for r in rs if r["ticker"] == ticker]
            if len(budgets) < 2:
                continue  # one budget is a point, not a curve: the table above has it
            curves = {r["model"]: [dict(zip(r["budgets"], r["a_adv"])).get(b, float("nan")) for b in budgets]
                      for r in mine}
            clean = {r["model"]: r["a_test"] for r in mine}
            name = safe_name(f"curve_{attack}_{fill}_{defense}_{ticker}.png")
            p = fig_capital_curves(budgets, curves, rep / name, clean,
                                   title=f"{ticker}: accuracy under the {attack} attack vs budget ({fill} fill)")
            made.append(p)
            parts.append(f"![{ticker} {attack}]({p.name})\n")
    if failed:
        parts.append(f"## Failed cells ({len(failed)})\n")
        parts += [f"- `{cid}`: {msg}" for cid, msg in failed[:50]]
        if len(failed) > 50:
            parts.append(f"- ... and {len(failed) - 50} more (see cells/*/error.txt)")
        parts.append("")
    made.append(atomic_write_text(rep / "report.md", "\n".join(parts)))
    return made
