"""The stress report: ``report.html`` (self-contained: figures embedded as base64 PNG, inline CSS, no network), plus
``results.json``, ``snippets.csv`` and ``curve.csv`` it is built from, and the PNG figures themselves.

Sections (``id`` attributes, checked by the tests): summary, model, data, results, curve, capital, cost-size,
manipulation, universal, definitions, files.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_loaders.rundir import atomic_write_text, write_json

SECTIONS = ("summary", "model", "data", "results", "curve", "capital", "cost-size", "manipulation", "universal",
            "definitions", "files")


def _money(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    x = float(x)
    sign = "-" if x < 0 else ""
    return f"{sign}${abs(x):,.0f}" if abs(x) >= 100 else f"{sign}${abs(x):,.2f}"


def _pct(x: Any, se: Any = None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    s = f"{100 * float(x):.1f}%"
    if se is not None and isinstance(se, (int, float)) and math.isfinite(se):
        s += f" ± {100 * float(se):.1f}"
    return s


def plain_summary(s: dict[str, Any]) -> list[str]:
    """Sentences a risk committee can read, from the run's summary dict (numbers only from the run)."""
    out: list[str] = []
    clf = s["model"]["output"]["kind"] == "classifier"
    what = "calls" if clf else "forecasts"
    verb = "flips" if clf else "moves"
    thr = s["model"]["output"].get("threshold")
    moved = "" if clf else (" by more than the threshold of " + f"{thr:g}" if s["model"]["output"]["fooled"] == "move"
                            else " across zero")
    n = s["data"]["eligible"]
    a = s.get("attack")
    if a:
        if a["fooled"]:
            c = a["capital"]
            out.append(f"With {_money(a['budget'])} of resting orders an attacker {verb} {_pct(a['flip_rate'])} of "
                       f"this model's {what}{moved} ({a['fooled']} of {n} test snippets); the cheapest success costs "
                       f"{_money(c['min'])} of capital (median {_money(c['median'])}) and the attacker's orders are "
                       f"{a['size_median']:.2f}% of the book's visible shares (median over the successes).")
            cm = a.get("cost_median")
            if cm is not None:
                out.append(f"Capital is the value of the orders placed, not money lost: marked to market, the median "
                           f"success costs the attacker {_money(cm)}"
                           + (" (a gain)." if cm < 0 else "."))
        else:
            out.append(f"Within {_money(a['budget'])} of resting orders no attack {verb} any of this model's {what} "
                       f"({n} test snippets attacked).")
        curve = s.get("curve") or []
        if len(curve) > 1:
            out.append("Share of " + what + f" {'flipped' if clf else 'moved'} by budget: "
                       + ", ".join(f"{_money(p['budget'])}: {_pct(p['flip_rate'])}" for p in curve) + ".")
        if a["gradient_free"]:
            out.append("The model exposes no gradients, so only the gradient-free search attacked it: the true "
                       "vulnerability can only be larger than shown.")
        elif a["masking"]["masking"]:
            out.append(f"On {a['masking']['masking']} snippet(s) only the gradient-free search succeeded: a sign of "
                       "gradient masking; trust the gradient-free numbers there.")
    r = s.get("random")
    if r:
        last = r[-1]
        out.append(f"Random orders worth {_money(last['budget'])} {verb.rstrip('s')} {_pct(last['flip_rate'])} of the "
                   f"{what}: the attack's success comes from where it places the orders, not from their size."
                   if a and a["fooled"] else f"Random orders worth {_money(last['budget'])} {verb.rstrip('s')} "
                   f"{_pct(last['flip_rate'])} of the {what}.")
    u = s.get("universal")
    if u:
        out.append(f"One fixed order pattern, placed the same way on every snippet ({u['shares']:,} shares, mean "
                   f"capital {_money(u['capital_mean'])}), {verb} {_pct(u['fool_rate'])} of the {what}.")
    cl = s["clean"]
    if "accuracy" in cl:
        line = f"Without manipulation the model's accuracy is {_pct(cl['accuracy'], cl.get('accuracy_se'))}"
        bc = cl.get("best_constant")
        if bc:
            line += f" (always answering class {bc['class']} scores {_pct(bc['accuracy'])})"
        if a and "after_accuracy" in a:
            line += f"; under the attack at {_money(a['budget'])} it is {_pct(a['after_accuracy'])}"
        out.append(line + ".")
    elif "mae" in cl:
        line = f"Without manipulation the mean absolute forecast error is {cl['mae']:.3g}"
        if a and "after_mae" in a:
            line += f"; under the attack at {_money(a['budget'])} it is {a['after_mae']:.3g}"
        out.append(line + ".")
    return out


# -- figures ------------------------------------------------------------------------------------------------------


def _fig_bytes(fig: Any) -> bytes:
    from lobsim.report.figures import _plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


def fig_curve(s: dict[str, Any]) -> bytes | None:
    from lobsim.report.figures import _plt

    curve = s.get("curve") or []
    if not curve:
        return None
    plt = _plt()
    clf = s["model"]["output"]["kind"] == "classifier"
    b = [p["budget"] for p in curve]
    second = "accuracy" if "accuracy" in curve[0] else ("mae" if "mae" in curve[0] else None)
    fig, axes = plt.subplots(1, 2 if second else 1, figsize=(11 if second else 6, 3.8), squeeze=False)
    ax = axes[0, 0]
    ax.plot(b, [100 * p["flip_rate"] for p in curve], "o-", color="C3", label="capital attack")
    if "random_flip_rate" in curve[0]:
        ax.plot(b, [100 * p["random_flip_rate"] for p in curve], "s--", color="C0", label="random orders")
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("capital budget ($)")
    ax.set_ylabel(("calls flipped" if clf else "forecasts moved") + " (%)")
    ax.set_title("Share of the model's outputs changed vs capital", fontsize=10)
    ax.legend(fontsize=8)
    if second:
        ax = axes[0, 1]
        scale = 100 if second == "accuracy" else 1
        ax.plot(b, [scale * p[second] for p in curve], "o-", color="C3", label="under attack")
        if f"random_{second}" in curve[0]:
            ax.plot(b, [scale * p[f"random_{second}"] for p in curve], "s--", color="C0", label="random orders")
        ax.axhline(scale * s["clean"][second], color="k", lw=0.8, ls=":", label="clean")
        if second == "accuracy" and s["clean"].get("best_constant"):
            ax.axhline(100 * s["clean"]["best_constant"]["accuracy"], color="0.5", lw=0.8, ls="-.",
                       label="best constant answer")
        ax.set_xscale("log")
        ax.set_xlabel("capital budget ($)")
        ax.set_ylabel("accuracy (%)" if second == "accuracy" else "mean absolute forecast error")
        ax.set_title("Accuracy vs capital" if second == "accuracy" else "Forecast error vs capital", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _fig_bytes(fig)


def fig_capital(rows: Sequence[dict[str, Any]]) -> bytes | None:
    from lobsim.report.figures import _plt

    ok = [r for r in rows if r.get("fooled")]
    if not ok:
        return None
    plt = _plt()
    cap = np.array([float(r["capital"]) for r in ok])
    size = np.array([float(r["relative_size"]) for r in ok])
    cst = np.array([float(r["cost"]) for r in ok])
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    lo, hi = max(cap.min(), 1e-2), max(cap.max(), 1e-2)
    bins = np.logspace(np.log10(lo) - 0.05, np.log10(hi) + 0.05, min(30, max(5, len(cap))))
    axes[0].hist(cap, bins=bins, color="C3", alpha=0.8)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("minimal capital that changed the output ($)")
    axes[0].set_ylabel("snippets")
    axes[0].set_title("Minimal capital per snippet (successes)", fontsize=10)
    sc = axes[1].scatter(cap, size, c=cst, cmap="coolwarm", s=18,
                         vmin=-max(abs(cst).max(), 1e-9), vmax=max(abs(cst).max(), 1e-9))
    axes[1].set_xscale("log")
    axes[1].set_xlabel("capital ($)")
    axes[1].set_ylabel("attacker's share of the book (%)")
    axes[1].set_title("Relative size and cost (colour, $) of each success", fontsize=10)
    fig.colorbar(sc, ax=axes[1], label="cost to the attacker ($)")
    from matplotlib.ticker import NullFormatter

    for ax in axes:  # a narrow log range would print overlapping minor tick labels
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    return _fig_bytes(fig)


def fig_heatmaps(heat: dict[str, np.ndarray], dt: float, title: str) -> bytes:
    import tempfile

    from lobsim.report.figures import fig_attack_heatmaps

    with tempfile.TemporaryDirectory() as tmp:
        p = fig_attack_heatmaps(heat["sizes"], heat["orders"], heat["delta"], dt, Path(tmp) / "h.png", title=title)
        return p.read_bytes()


def fig_pattern(pattern: np.ndarray, dt: float) -> bytes:
    import tempfile

    from lobsim.report.figures import fig_universal_patterns

    with tempfile.TemporaryDirectory() as tmp:
        return fig_universal_patterns({"universal pattern": pattern}, dt, Path(tmp) / "u.png").read_bytes()


# -- tables and html ---------------------------------------------------------------------------------------------


def _table(head: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    """An HTML table; ``head=None``: a two-column key/value table (left-aligned, no header)."""
    body = "".join("<tr>" + "".join(f"<td>{x}</td>" for x in r) + "</tr>" for r in rows)
    if head is None:
        return f"<table class='kv'><tbody>{body}</tbody></table>"
    h = "".join(f"<th>{html.escape(str(x))}</th>" for x in head)
    return f"<table><thead><tr>{h}</tr></thead><tbody>{body}</tbody></table>"


def _out(v: Any) -> str:
    """A model output for the text: a class index as is, a forecast to 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return "<p class='note'>No figure: nothing to draw (no success within the budget).</p>"
    return f"<img alt='{html.escape(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode('ascii')}'>"


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1120px;margin:24px auto;
padding:0 16px;color:#1d232a;line-height:1.45}h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #d8dde3;
padding-bottom:4px;margin-top:32px}table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #d8dde3;
padding:4px 10px;text-align:right}th{background:#f2f4f7}td:first-child,th:first-child{text-align:left}
.summary{background:#fff8e6;border-left:4px solid #e0a100;padding:10px 16px}.summary li{margin:4px 0}
table.kv td{text-align:left}
img{max-width:100%;border:1px solid #eee}.note{color:#5a6470;font-size:.92em}code{background:#f2f4f7;padding:1px 4px}"""


def _results_rows(s: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    clf = s["model"]["output"]["kind"] == "classifier"
    qual = "accuracy" if "accuracy" in s["clean"] else ("mae" if "mae" in s["clean"] else None)
    head = ["condition", "budget", "outputs changed"] + ([{"accuracy": "accuracy", "mae": "mean abs. error"}[qual]]
                                                          if qual else [])

    def q(d: dict[str, Any], key: str) -> list[str]:
        if not qual:
            return []
        v = d.get(key)
        return [_pct(v, d.get("accuracy_se") if key == "accuracy" else None) if qual == "accuracy"
                else ("-" if v is None else f"{v:.4g}")]

    rows = [["clean (no orders)", "-", "-"] + q(s["clean"], qual or "")]
    for r in s.get("random") or []:
        rows.append(["random orders", _money(r["budget"]), _pct(r["flip_rate"], r["flip_rate_se"])] + q(r, qual or ""))
    for p in s.get("curve") or []:
        rows.append(["capital attack" + (" (gradient-free)" if s["attack"]["gradient_free"] else ""),
                     _money(p["budget"]), _pct(p["flip_rate"], p["flip_rate_se"])] + q(p, qual or ""))
    u = s.get("universal")
    if u:
        rows.append([f"universal pattern ({u['method']})", f"mean {_money(u['capital_mean'])}",
                     _pct(u["fool_rate"], u["fool_rate_se"])] + q(u, qual or ""))
    del clf
    return head, rows


def render_html(s: dict[str, Any], rows: Sequence[dict[str, Any]], figs: dict[str, bytes | None],
                files: Sequence[str]) -> str:
    """The self-contained report page."""
    e = html.escape
    m, d = s["model"], s["data"]
    clf = m["output"]["kind"] == "classifier"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>advsim stress report</title>"
             f"<style>{CSS}</style></head><body>",
             "<h1>Stress test of a trading model against order-book manipulation</h1>",
             f"<p class='note'>{e(m['source'])} &middot; {len(d['days'])} day(s) &middot; "
             f"{d['test_snippets']} held-out test snippets &middot; objective <code>{e(s['objective'])}</code></p>",
             "<section id='summary'><h2>Summary</h2><div class='summary'><ul>"
             + "".join(f"<li>{e(x)}</li>" for x in s["summary"]) + "</ul></div></section>"]
    notes = "".join(f"<li>{e(n)}</li>" for n in m["notes"])
    out = m["output"]
    fooled = ("its predicted class changes" if out["fooled"] == "change" else f"its prediction becomes class "
              f"{out['fooled'].split(':')[1]}") if clf else (
        f"the forecast moves by more than {out['threshold']:g} (forecast units)" if out["fooled"] == "move"
        else "the forecast changes sign")
    parts.append("<section id='model'><h2>The model</h2>" + _table(None, [
        ["loaded as", e(m["source"])], ["file", e(m["file"] or "(Python object)")],
        ["gradients", "yes (gradient and gradient-free attacks)" if m["differentiable"] else
         "no (gradient-free attacks only)"],
        ["input", e(m["input"])],
        ["output", e(f"classifier, {out['classes']} classes" if clf else "regressor (one forecast)")],
        ["counts as fooled when", e(fooled)]]) + (f"<ul class='note'>{notes}</ul>" if notes else "") + "</section>")
    days = ", ".join(f"{x['ticker']} {x['date']}" for x in d["days"])
    parts.append("<section id='data'><h2>The data</h2>" + _table(None, [
        ["days", e(days)], ["grid step", f"{d['dt']:g} s"],
        ["model window", f"{d['grid_window']} grid steps ({d['grid_window'] * d['dt']:g} s)"],
        ["split", e(str(d["split"]))], ["test snippets", str(d["test_snippets"])],
        ["attacked (eligible)", str(d["eligible"])],
        ["error bars", f"block bootstrap over blocks of {d['block']} grid steps"]]) + "</section>")
    head, trs = _results_rows(s)
    parts.append("<section id='results'><h2>Clean vs random orders vs attack</h2>"
                 "<p class='note'>Outputs changed: share of the attacked snippets whose output the orders changed "
                 "(± block-bootstrap standard error).</p>" + _table(head, trs) + "</section>")
    parts.append("<section id='curve'><h2>Accuracy vs capital</h2>" + _img(figs.get("curve"), "curve")
                 + "</section>")
    a = s.get("attack") or {}
    cap = a.get("capital") or {}
    parts.append("<section id='capital'><h2>Minimal capital per snippet</h2>"
                 + _table(["successes", "min", "median", "mean", "max"],
                          [[str(a.get("fooled", 0)), _money(cap.get("min")), _money(cap.get("median")),
                            _money(cap.get("mean")), _money(cap.get("max"))]])
                 + _img(figs.get("capital"), "minimal capital") + "</section>")
    parts.append("<section id='cost-size'><h2>Cost to the attacker and relative size</h2>"
                 + _table(["", "mean", "median"],
                          [["cost (mark-to-market loss, $)", _money(a.get("cost_mean")), _money(a.get("cost_median"))],
                           ["attacker's share of the book (%)",
                            "-" if a.get("size_mean") is None else f"{a['size_mean']:.3f}",
                            "-" if a.get("size_median") is None else f"{a['size_median']:.3f}"]])
                 + "<p class='note'>Winners: " + e(", ".join(f"{k} {v}" for k, v in (a.get("winners") or {}).items())
                                                   or "-") + "</p></section>")
    ch = s.get("cheapest")
    text = ("<p>The cheapest success: snippet {index} (day {day}, start {start}), {shares} shares in {orders} "
            "placement(s), capital {cap}, cost {cost}, {size:.3f}% of the book; output {before} &rarr; {after}.</p>"
            .format(index=ch["index"], day=ch["day"], start=ch["start"], shares=ch["shares"], orders=ch["orders"],
                    cap=_money(ch["capital"]), cost=_money(ch["cost"]), size=ch["relative_size"],
                    before=e(_out(ch["before"])), after=e(_out(ch["after"])))) if ch else ""
    parts.append("<section id='manipulation'><h2>The most effective manipulation</h2>" + text
                 + _img(figs.get("heatmaps"), "book heat-maps before and after") + "</section>")
    u = s.get("universal")
    parts.append("<section id='universal'><h2>Universal pattern</h2>" + (
        f"<p>One pattern fitted on {u['train_snippets']} training snippets ({u['method']}), deployed unchanged on "
        f"every test snippet: {u['fooled']} of {u['eligible']} outputs changed ({_pct(u['fool_rate'])}); mean "
        f"capital {_money(u['capital_mean'])}, mean cost {_money(u['cost_mean'])}, mean size "
        f"{(u['size_mean'] or 0):.3f}% of the book.</p>" + _img(figs.get("universal"), "universal pattern")
        if u else "<p class='note'>Not run.</p>") + "</section>")
    parts.append("<section id='definitions'><h2>Definitions</h2><ul>"
                 "<li><b>Capital</b>: value of all orders the attacker places over the window (shares &times; price, "
                 "summed); orders rest on the book until the market trades at their price (touch fill model) and are "
                 "cancelled at the end.</li>"
                 "<li><b>Cost</b>: the attacker's loss from the fills, marked to market at the last mid price "
                 "(negative: a gain); no fees.</li>"
                 "<li><b>Relative size</b>: the attacker's resting shares as a percentage of the visible shares of "
                 "the clean book over the window.</li>"
                 "<li><b>Minimal capital</b>: the cheapest verified orders the attacks found for the snippet (an "
                 "upper bound on the true minimum).</li>"
                 "<li><b>Capital attack</b>: the ensemble (one-gradient greedy, gradient steps with restarts, "
                 "gradient-free random search); a snippet counts at budget c when its cheapest orders cost at most c."
                 "</li></ul></section>")
    parts.append("<section id='files'><h2>Files</h2><p class='note'>Built from: "
                 + ", ".join(f"<code>{e(f)}</code>" for f in files) + "</p></section></body></html>")
    del rows
    return "\n".join(parts)


def write_stress_report(out: str | os.PathLike, result: Any) -> list[Path]:
    """Write results.json, snippets.csv, curve.csv, the PNG figures and report.html into ``out``."""
    from data_loaders.rundir import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = result.summary
    made = [write_json(out / "results.json", s)]
    keys: list[str] = []
    for r in result.rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(result.rows)
    made.append(atomic_write_text(out / "snippets.csv", buf.getvalue()))
    if result.curve:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(result.curve[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(result.curve)
        made.append(atomic_write_text(out / "curve.csv", buf.getvalue()))
    ch = s.get("cheapest")
    figs = {"curve": fig_curve(s), "capital": fig_capital(result.rows),
            "heatmaps": fig_heatmaps(result.heatmap, result.dt, f"cheapest success: snippet {ch['index']}, capital "
                                     f"{_money(ch['capital'])}") if result.heatmap is not None and ch else None,
            "universal": fig_pattern(result.pattern, result.dt) if result.pattern is not None else None}
    for name, png in figs.items():
        if png is not None:
            made.append(atomic_write_bytes(out / f"{name}.png", png))
    files = [p.name for p in made] + ["report.html"]
    made.append(atomic_write_text(out / "report.html", render_html(s, result.rows, figs, files)))
    return made
