"""Per-model summary of capital-attack records: attacked, fooled at two budgets, median minimal capital (IQR), winners.

    python benchmarks/capital_summary.py runs/demo runs/demo-thin runs/demo-goog [--budgets 1e5,2e6]

Reads every ``records*.jsonl`` of each run directory (demo runs and ``lob attack capital`` runs) and prints one
markdown row per (run, records file). "attacked" counts the snippets the model classified right before the attack.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from lobsim.attacks.records import read_jsonl


def summary_rows(run: Path, budgets: list[float]) -> list[str]:
    rows = []
    for path in sorted(run.glob("records*.jsonl")):
        recs = read_jsonl(path)
        att = [r for r in recs if r.attacked]
        won = [r for r in att if r.success]
        caps = np.array([r.capital for r in won])
        fooled = [sum(r.capital <= b for r in won) for b in budgets]
        med = (f"${np.median(caps):,.0f} (${np.percentile(caps, 25):,.0f}-${np.percentile(caps, 75):,.0f})"
               if caps.size else "-")
        winners = Counter(r.winner or "?" for r in won)
        masking = sum(bool(r.masking) for r in recs)
        name = path.stem.replace("records_", "").replace("records", recs[0].model if recs else "?")
        rows.append(f"| {run.name} | {name} | {len(att)} | " + " | ".join(map(str, fooled)) + f" | {med} | "
                    + ", ".join(f"{k} {v}" for k, v in winners.most_common()) + f" | {masking} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--budgets", default="1e5,2e6", help="comma-separated budgets in dollars")
    a = ap.parse_args()
    budgets = [float(x) for x in a.budgets.split(",")]
    head = ["run", "model", "attacked"] + [f"fooled at ${b:,.0f}" for b in budgets] + \
        ["median minimal capital (IQR)", "won by", "masking flags"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for run in a.runs:
        print("\n".join(summary_rows(run, budgets)))


if __name__ == "__main__":
    main()
