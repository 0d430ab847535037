"""``advsim lob defend`` (the model x defense table of one market) and ``advsim lob certify`` (certified capital)."""

from __future__ import annotations

import click

from cli.app import lob, threads_option
from cli.lob_cmds import SYNTHETIC_MARKETS


def _floats(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        return sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise click.BadParameter(f"{flag} takes comma-separated dollar amounts, got {text!r}") from exc


@lob.command("defend")
@click.option("--synthetic", type=click.Choice(SYNTHETIC_MARKETS), default=None,
              help="Synthetic market to simulate into OUT/data [default: thick, unless --data].")
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="Real LOBSTER day(s) instead (one day splits by time). Repeatable.")
@click.option("--days", type=click.IntRange(min=1), default=6, show_default=True, help="Synthetic days.")
@click.option("--hours", type=click.FloatRange(min=0, max=6.5, min_open=True), default=1.0, show_default=True,
              help="Synthetic hours per day.")
@click.option("--model", "kind", type=click.Choice(["linear", "mlp", "lstm"]), default="mlp", show_default=True,
              help="Model kind (one per run; runs of other kinds on the same market merge in `lob report`).")
@click.option("--preset", type=click.Choice(["small", "paper"]), default="small", show_default=True,
              help="Model size preset (paper: thesis sizes, needs a GPU; certification then bounds hidden neurons "
                   "by intervals).")
@click.option("--inputs", default="swa,imbalance,depth_imbalance", show_default=True,
              help="Input channels (certification supports swa, depth, sizes, the imbalances, microprice, mid, "
                   "spread, prices).")
@click.option("--defenses", default="none,fast,universal,certified", show_default=True,
              help="Comma-separated: none (plain training), fast, pgd, universal, certified (Linear/MLP only).")
@click.option("--budget", type=float, default=10_000.0, show_default=True,
              help="Capital of the training attack per snippet, dollars.")
@click.option("--attack-budget", type=float, default=2_000_000.0, show_default=True,
              help="Capital limit of the evaluation attack (the ensemble), dollars.")
@click.option("--budgets", default=None, help="Fixed budgets for the fooled-share columns [default: 1e4,3e4,1e5,"
                                               "3e5,1e6].")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True, help="Training steps.")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True, help="Training batch.")
@click.option("--adv-batch", type=click.IntRange(min=1), default=64, show_default=True,
              help="Snippets of each batch that the defense attacks.")
@click.option("--attack-n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Test snippets attacked and certified.")
@click.option("--max-iter", type=click.IntRange(min=1), default=50, show_default=True,
              help="Gradient iterations per start of the evaluation attack.")
@click.option("--search-iter", type=click.IntRange(min=1), default=200, show_default=True,
              help="Proposals of the gradient-free member of the evaluation attack.")
@click.option("--certify/--no-certify", default=True, show_default=True,
              help="Certified capital of the attacked snippets (Linear / MLP).")
@click.option("--dt", type=float, default=0.1, show_default=True, help="Grid step in seconds (CPU preset 0.1).")
@click.option("--window", type=float, default=60.0, show_default=True, help="Input window in seconds.")
@click.option("--horizon", type=float, default=10.0, show_default=True, help="Label horizon in seconds.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda ...")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in OUT.")
@threads_option
def lob_defend(synthetic, data_paths, days, hours, kind, preset, inputs, defenses, budget, attack_budget, budgets,
               steps, batch, adv_batch, attack_n, max_iter, search_iter, certify, dt, window, horizon, out_dir, seed,
               device, overwrite) -> None:
    """Train one model kind without and with each defense on one market, then measure every variant: clean and
    random-orders accuracy, minimal capital of the attack ensemble, certified capital, detection, training cost.

    Writes OUT/metrics.json (report.defense_table; `advsim lob report OUT ...` renders it), one model run per
    defense in OUT/models, records_<model>-<defense>.jsonl. See docs/defenses.md.
    """
    from lobsim.adapters import parse_inputs
    from lobsim.defenses.experiment import DEFAULT_BUDGETS, DefendConfig, run_defense_experiment
    from lobsim.report.defense_table import defense_markdown

    data = [str(p) for p in data_paths]
    if data and synthetic:
        raise click.UsageError("give either --data or --synthetic, not both")
    cfg = DefendConfig(synthetic=None if data else (synthetic or "thick"), data=data, days=days, hours=hours,
                       dt=dt, window_s=window, horizon_s=horizon, model=kind, preset=preset,
                       inputs=list(parse_inputs(inputs)),
                       defenses=[d.strip() for d in defenses.split(",") if d.strip()], budget=budget,
                       attack_budget=attack_budget, budgets=_floats(budgets, "--budgets") or list(DEFAULT_BUDGETS),
                       train_steps=steps, train_batch=batch, adv_batch=adv_batch, attack_n=attack_n,
                       max_iter=max_iter, search_iter=search_iter, certify=certify, seed=seed, device=device)
    m = run_defense_experiment(cfg, out_dir, progress=True, overwrite=overwrite)
    click.echo(defense_markdown(m["report"]["defense_table"], m["report"]["detection"]))
    click.echo(f"done in {m['seconds']:.0f} s; wrote {out_dir}")


@lob.command("certify")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=64, show_default=True,
              help="Test snippets (the same seeded set as `lob attack --n N --seed S`).")
@click.option("--attack", "attack_run", type=click.Path(exists=True, file_okay=False), default=None,
              help="A `lob attack capital` run of this model on the same snippets: its minimal capital is shown next "
                   "to the certified capital, per snippet.")
@click.option("--eps-max", type=float, default=1e7, show_default=True, help="Largest budget tried, dollars.")
@click.option("--iterations", type=click.IntRange(min=1), default=14, show_default=True,
              help="Log-bisection steps per snippet.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="JSON file for the per-snippet certificates [default: RUN/certificate-n<N>-seed<S>.json].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the snippet draw.")
@threads_option
def lob_certify(run, n, attack_run, eps_max, iterations, out_path, seed) -> None:
    """Certified capital of a trained Linear / MLP model: per test snippet, the dollars below which no orders at the
    top-L prices can change its prediction (interval and linear-relaxation bounds), next to an attack's capital."""
    from pathlib import Path

    import numpy as np

    from data_loaders.rundir import write_json
    from lobsim.attacks.records import read_jsonl
    from lobsim.defenses.certify import CertifyConfig, certify
    from lobsim.runs import market_of
    from lobsim.train import load_run

    trained = load_run(run, device="cpu")
    market = market_of(trained, progress=True)
    day, start = market.test_refs(n, seed=seed + 1)
    batch = market.batch(day, start, trained.tau)
    cert = certify(trained, batch, CertifyConfig(eps_max=eps_max, iterations=iterations), progress=True)
    caps = np.full(batch.batch_size, np.nan)
    if attack_run is not None:
        recs = read_jsonl(Path(attack_run) / "records.jsonl")
        by = {(r.day, r.start): r for r in recs}
        for i, (d, s) in enumerate(zip(batch.day, batch.start)):
            r = by.get((int(d), int(s)))
            if r is not None and r.attacked:
                caps[i] = r.capital if r.success else np.inf
    rows = [{"day": int(d), "start": int(s), "label": int(y), "pred": int(p), "certified_linear": float(cl),
             "certified_interval": float(ci), "attack_fooled": None if np.isnan(c) else bool(np.isfinite(c)),
             "attack_capital": float(c) if np.isfinite(c) else None}
            for d, s, y, p, cl, ci, c in zip(batch.day, batch.start, batch.labels, cert.pred, cert.linear,
                                             cert.interval, caps)]
    path = Path(out_path) if out_path else Path(run) / f"certificate-n{n}-seed{seed}.json"
    write_json(path, {"snippets": rows, "certificate": cert.to_dict()})
    click.echo("| snippet | certified, interval ($) | certified, linear ($) | attack ($) |\n|---|---|---|---|")
    for i, r in enumerate(rows[:20]):
        a = "-" if r["attack_fooled"] is None else (f"{r['attack_capital']:,.0f}" if r["attack_fooled"]
                                                     else "not fooled")
        click.echo(f"| {i} | {r['certified_interval']:,.0f} | {r['certified_linear']:,.0f} | {a} |")
    right = batch.labels == cert.pred
    if right.any():
        click.echo(f"median certified capital over the {int(right.sum())} snippets classified right: linear "
                   f"${np.median(cert.linear[right]):,.0f}, interval ${np.median(cert.interval[right]):,.0f}")
    click.echo(f"wrote {path}")
