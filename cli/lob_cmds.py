"""``advsim lob ...``: synthetic markets, valuation models, attacks, reports and the demo."""

from __future__ import annotations

from pathlib import Path

import click

from cli.app import lob, threads_option

# data_loaders.synthetic.PRESETS (listed here so that --help does not import the simulator)
SYNTHETIC_MARKETS = ["thick", "thin", "thick-zi", "thin-zi"]


# ---- lob synth (issue: synthetic market) ----
@lob.command("synth")
@click.option("--market", type=click.Choice(SYNTHETIC_MARKETS), default=None,
              help="Synthetic market [default: thick]. thick: about $9, 1-tick spread, tens of thousands of shares "
                   "on 10 levels (like Ford); thin: about $580, wide spread, a few thousand shares (like GOOG); "
                   "thick-zi / thin-zi: the earlier defaults without the planted informed flow.")
@click.option("--preset", "market_alias", type=click.Choice(SYNTHETIC_MARKETS), default=None, hidden=True,
              help="Old name of --market.")
@click.option("--days", type=click.IntRange(min=1), default=5, show_default=True,
              help="Trading days (weekdays) to simulate; one message/orderbook pair per day.")
@click.option("--hours", type=click.FloatRange(min=0, max=6.5, min_open=True), default=1.0, show_default=True,
              help="Session length from 09:30, in hours (at most 6.5, the full day).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder to write the LOBSTER files into (created if missing).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same bytes.")
@click.option("--levels", type=click.IntRange(min=1), default=10, show_default=True,
              help="Book levels per side in the orderbook file (LOBSTER's LEVEL).")
@click.option("--zip", "as_zip", is_flag=True, default=False,
              help="Write one LOBSTER_SampleFile_TICKER_DATE_L.zip per day instead of loose csv files.")
@click.option("--ticker", default=None, help="Ticker in the file names [default: THICK or THIN, from the preset].")
@click.option("--start-date", default="2019-09-03", show_default=True,
              help="First date (YYYY-MM-DD); weekends are skipped, holidays are not.")
@threads_option
def lob_synth(market: str | None, market_alias: str | None, days: int, hours: float, out_dir: str, seed: int,
              levels: int, as_zip: bool, ticker: str | None, start_date: str) -> None:
    """Simulate a zero-intelligence market and write real LOBSTER files (one pair per trading day).

    Finished days are written atomically; after Ctrl-C the days already written stay and rerunning the command
    rewrites the same bytes.
    """
    from data_loaders.synthetic import write_days

    if market and market_alias and market != market_alias:
        raise click.UsageError(f"--market {market} and --preset {market_alias} disagree; give --market only")
    market = market or market_alias or "thick"
    paths = write_days(out_dir, preset=market, days=days, hours=hours, seed=seed, levels=levels,
                       ticker=ticker, start_date=start_date, zip=as_zip, progress=True)
    for p in paths:
        click.echo(str(p))
    click.echo(f"wrote {len(paths)} day(s) of the {market!r} synthetic market to {out_dir}")



# ---- end lob synth ----


# ---- lob train / evaluate / table (issue: valuation models) ----
def _train_market(cfg_data: dict, features):
    from lobsim.dataset import Market

    return Market.from_paths(cfg_data["paths"], dt=cfg_data["dt"], start=cfg_data["start"], end=cfg_data["end"],
                             features=features, split=cfg_data["split"],
                             train_fraction=cfg_data["train_fraction"], progress=True)


def _synthetic_days(out: Path, market: str, spec: dict, fresh: bool) -> tuple[str, ...]:
    """The synthetic days of ``lob train --synthetic``: reused from a previous call into the same OUT with the same
    market, days, hours and seed (a resumed run does not simulate them again), else written into OUT/data."""
    from data_loaders.rundir import read_json, resolve_stored_path
    from data_loaders.synthetic import write_days

    if not fresh and (out / "config.json").is_file():
        old = read_json(out / "config.json")
        old = old.get("data") if isinstance(old, dict) else None
        if isinstance(old, dict) and old.get("synthetic") == market and old.get("synthetic_spec") == spec:
            paths = [resolve_stored_path(p, out) for p in old.get("paths") or []]
            if paths and all(p.is_file() for p in paths):
                click.echo(f"{out / 'data'}: reusing the {len(paths)} synthetic day(s) written by the previous call",
                           err=True)
                return tuple(str(p) for p in paths)
    return tuple(str(p) for p in write_days(out / "data", market, days=spec["days"], hours=spec["hours"],
                                            seed=spec["seed"], progress=True))


@lob.command("train")
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="LOBSTER day(s): a message csv, a LOBSTER .zip or a folder (several days are expanded in date "
                   "order). Repeat for more days. Several days split by day (first 80% train), one day by time.")
@click.option("--synthetic", type=click.Choice(SYNTHETIC_MARKETS), default=None,
              help="Instead of --data: simulate this synthetic market into OUT/data first.")
@click.option("--days", type=click.IntRange(min=1), default=5, show_default=True, help="Synthetic days.")
@click.option("--hours", type=click.FloatRange(min=0, max=6.5, min_open=True), default=1.0, show_default=True,
              help="Synthetic hours per day, from 09:30.")
@click.option("--model", "kind", type=click.Choice(["linear", "mlp", "lstm"]), default="mlp", show_default=True,
              help="Valuation model.")
@click.option("--inputs", default="swa", show_default=True,
              help="Comma-separated input channels (feature adapters of the book): swa (the thesis input), mid, "
                   "microprice, imbalance (best level), depth_imbalance (top-L), depth (bid, ask), spread; "
                   "e.g. swa,imbalance,mid. See docs/models.md.")
@click.option("--val-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Share of the training time held out for early stopping [default: 0.2; 0 keeps the final "
                   "weights].")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None,
              help="Adam weight decay (L2) [default: see docs/models.md].")
@click.option("--preset", type=click.Choice(["small", "paper"]), default="small", show_default=True,
              help="Size preset of the model (and its training defaults): small: CPU-sized (MLP 2x256, LSTM pooled "
                   "by 20 then 1x32); paper: thesis sizes (needs a GPU).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Optimiser steps [default: 1500 small, 5000 paper]. Raise it to continue a finished run.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Snippets per step, freshly sampled [default: 256 small, 2000 paper].")
@click.option("--lr", type=float, default=None,
              help="Learning rate [default: linear 1e-5, mlp 1e-4 (paper 1e-5), lstm 1e-3].")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="adam, or sgd with momentum 0.9 (the thesis' optimiser).")
@click.option("--window", type=float, default=60.0, show_default=True, help="Input window in seconds.")
@click.option("--horizon", type=float, default=10.0, show_default=True, help="Label horizon in seconds.")
@click.option("--dt", type=float, default=0.01, show_default=True, help="Grid step in seconds.")
@click.option("--start", type=float, default=None,
              help="Session start, seconds after midnight [default: 34200 (09:30) if the day covers 09:30-10:30, "
                   "else the first point of the session grid 34200 + k*dt at or after the first message].")
@click.option("--end", type=float, default=None, help="Session end [default: 37800 (10:30), else the last message].")
@click.option("--relative", is_flag=True, help="Label on the relative SWA change instead of dollars.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, sampling and synthetic data.")
@click.option("--eval-n", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Test snippets for the evaluation after training.")
@click.option("--fresh", is_flag=True, help="Ignore a checkpoint in OUT instead of resuming from it.")
@click.option("--defense", type=click.Choice(["fast", "pgd", "universal", "certified"]), default=None,
              help="Train against manipulation (docs/defenses.md): fast (single-step capital attack, random start, "
                   "catastrophic-overfitting guard), pgd (5 steps), universal (patterns per class), certified "
                   "(interval-bound training, Linear/MLP).")
@click.option("--defense-budget", type=float, default=10_000.0, show_default=True,
              help="With --defense: capital of the training attack per snippet, in dollars.")
@threads_option
def lob_train(data_paths, synthetic, days, hours, kind, inputs, val_fraction, weight_decay, preset, out_dir, steps,
              batch, lr, optimizer, window, horizon, dt, start, end, relative, device, seed, eval_n, fresh,
              defense=None, defense_budget=10_000.0) -> None:
    """Train a valuation model (input window -> down/flat/up) and evaluate it on held-out test snippets.

    Writes OUT/config.json, checkpoint.safetensors (resumable: rerun the same command after Ctrl-C),
    weights.safetensors, model.json, train_log.json and metrics.json.
    """
    from pathlib import Path

    from lobsim.dataset import FeatureConfig
    from lobsim.features import LabelConfig
    from lobsim.train import default_config, evaluate, train

    if bool(data_paths) == bool(synthetic):
        raise click.UsageError("give either --data PATH (repeatable) or --synthetic PRESET")
    from data_loaders.rundir import stored_path

    spec = {"days": days, "hours": hours, "seed": seed}
    if synthetic:
        data_paths = _synthetic_days(Path(out_dir), synthetic, spec, fresh)
    from lobsim.dataset import expand_day_paths

    # The expanded list of days (not the folder), so days added to a folder later do not change this run's market.
    data_paths = expand_day_paths(data_paths)
    features = FeatureConfig(dt=dt, window_s=window, horizon_s=horizon, labels=LabelConfig(relative=relative))
    # Data inside the run are stored relative to it (the run can be moved with them), other data absolutely.
    data_cfg = {"paths": [stored_path(p, out_dir) for p in data_paths], "dt": dt, "start": start, "end": end,
                "split": "auto", "train_fraction": 0.8, "synthetic": synthetic}
    if synthetic:
        data_cfg["synthetic_spec"] = spec
    cfg = default_config(kind, preset, features, steps=steps, batch=batch, lr=lr, optimizer=optimizer, device=device,
                         seed=seed, eval_n=eval_n, data=data_cfg, inputs=inputs, val_fraction=val_fraction,
                         weight_decay=weight_decay)
    if defense:  # checked before the market is loaded
        from lobsim.defenses import DefenseConfig

        cfg.defense = DefenseConfig(kind=defense, budget=defense_budget).to_dict()
    market = _train_market(dict(data_cfg, paths=[str(p) for p in data_paths]), features)
    click.echo(f"market: {len(market.books)} day(s), split by {market.split}: {market.n_train:,} train / "
               f"{market.n_test:,} test snippet starts")
    from lobsim.defenses import make_hook

    trained = train(cfg, market, out_dir, progress=True, resume=not fresh, hook=make_hook(cfg.defense))
    click.echo(f"trained {kind}/{preset} ({trained.info['parameters']:,} parameters) in "
               f"{trained.info['train_seconds_this_session']:.1f} s on {trained.device}")
    click.echo(evaluate(trained, market, n=eval_n, seed=cfg.eval_seed).summary())


@lob.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=10_000, show_default=True, help="Test snippets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test-snippet draw.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda ...")
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="Where the run's data are now, when they have moved (same days, same order as in "
                   "RUN/config.json). Repeatable.")
@threads_option
def lob_evaluate(run: str, n: int, seed: int, device: str, data_paths: tuple[str, ...]) -> None:
    """Evaluate a trained run on its market's test snippets; writes RUN/metrics.json.

    An earlier evaluation of another setting (n, seed) is kept as RUN/metrics-n<N>-seed<S>.json. Data paths
    inside the run are stored relative to it, so a run moved together with its data still evaluates.
    """
    import json

    from data_loaders.rundir import atomic_write_bytes
    from lobsim.runs import market_of
    from lobsim.train import evaluate, load_run

    trained = load_run(run, device=device)
    market = market_of(trained, progress=True, paths=list(data_paths) or None)
    path = Path(run) / "metrics.json"
    before = path.read_bytes() if path.is_file() else None
    result = evaluate(trained, market, n=n, seed=seed)
    if before is not None:
        try:
            old = json.loads(before)
            old_n, old_seed = old["eval"]["n"], old.get("eval_seed")
        except (ValueError, KeyError, TypeError):
            old_n = old_seed = None
        if old_n is not None and (old_n, old_seed) != (result.n, seed):
            atomic_write_bytes(path.with_name(f"metrics-n{old_n}-seed{old_seed}.json"), before)
    click.echo(result.summary())


@lob.command("table")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for table-3.1.md and table-3.1.json.")
def lob_table(runs: tuple[str, ...], out_dir: str) -> None:
    """Ticker x model accuracy table (the thesis' Table 3.1 layout) from evaluated runs."""
    from pathlib import Path

    from data_loaders.rundir import atomic_write_text, write_json
    from lobsim.evaluate import accuracy_table, run_record

    md, records = accuracy_table([run_record(r) for r in runs])
    atomic_write_text(Path(out_dir) / "table-3.1.md", md)
    write_json(Path(out_dir) / "table-3.1.json", records)
    click.echo(md)

# ---- end lob train ----


# ---- lob attack / report / demo (issue: attacks) ----
def _budget_list(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return sorted({float(x) for x in text.split(",") if x.strip()})
    except ValueError as exc:
        raise click.BadParameter(f"budgets must be comma-separated dollar amounts, got {text!r}") from exc


@lob.command("attack")
@click.argument("kind", type=click.Choice(["capital", "random", "universal"]))
@click.option("--model", "model_run", type=click.Path(exists=True, file_okay=False), required=True,
              help="Run directory of the trained model to attack (the surrogate for universal).")
@click.option("--victims", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Other model runs (same market) that receive the crafted orders: transfer / gradient-masking "
                   "check for capital, transfer matrix for universal, accuracy for random. Repeatable.")
@click.option("--n", type=click.IntRange(min=1), default=200, show_default=True,
              help="Test snippets attacked (a fixed seeded set of the model's test split).")
@click.option("--budget", type=float, default=None,
              help="Capital budget in dollars [default: 100,000 for capital; 2,000,000 for random].")
@click.option("--budgets", default=None,
              help="capital: comma-separated budgets for the accuracy-vs-capital curve, e.g. "
                   "1e3,1e4,1e5,1e6,2e6 (one run at the largest gives the whole curve).")
@click.option("--attack", "attack", type=click.Choice(["ensemble", "gradient", "search"]), default="ensemble",
              show_default=True,
              help="capital: ensemble = greedy, then gradient with restarts, then gradient-free search, cheapest "
                   "verified success per snippet (flags gradient masking); gradient or search = one member alone.")
@click.option("--step-rule", type=click.Choice(["budget", "thesis"]), default="budget", show_default=True,
              help="capital: budget = scale-free steps in dollars with an adaptive per-snippet budget; thesis = the "
                   "thesis' raw-gradient rule (with --attack gradient --no-minimize: Table 3.2 as written).")
@click.option("--restarts", type=click.IntRange(min=1), default=2, show_default=True,
              help="capital: starts of the gradient member (the first from zero orders).")
@click.option("--search-iter", type=click.IntRange(min=1), default=400, show_default=True,
              help="capital: proposals of the gradient-free member.")
@click.option("--minimize/--no-minimize", default=True, show_default=True,
              help="capital: after a success, remove the least useful shares while the model stays fooled "
                   "(records hold the minimal capital and the capital at the first success).")
@click.option("--max-iter", type=click.IntRange(min=1), default=100, show_default=True,
              help="capital: gradient iterations per start (thesis rule: before a snippet is given up).")
@click.option("--step-shares", type=float, default=0.1, show_default=True,
              help="capital, thesis rule only: expected first step, in shares on the largest-gradient entry.")
@click.option("--target", default="down", show_default=True, help="universal: target class down|flat|up.")
@click.option("--gamma", type=float, default=0.05, show_default=True,
              help="universal: weight of the relative-size penalty, in cross-entropy per percent of book size "
                   "(0 = none).")
@click.option("--steps", type=click.IntRange(min=1), default=300, show_default=True,
              help="universal: Adam steps.")
@click.option("--lr", type=float, default=0.5, show_default=True, help="universal: Adam step size in shares.")
@click.option("--train-n", type=click.IntRange(min=1), default=512, show_default=True,
              help="universal: training snippets the pattern is optimised on.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed (snippets, step sizes, random orders).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda ...")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in OUT.")
@threads_option
def lob_attack(kind, model_run, victims, n, budget, budgets, attack, step_rule, restarts, search_iter, minimize,
               max_iter, step_shares, target, gamma, steps, lr, train_n, out_dir, seed, device, overwrite) -> None:
    """Attack a trained model: capital (gradient, capital-constrained), random (baseline) or universal.

    Writes OUT/config.json, metrics.json (with the Table 3.2 / 3.3 entries `advsim lob report` reads) and, for
    capital, records.jsonl (one record per snippet: success, sparse orders, capital, cost, relative size).
    """
    from lobsim.attacks.records import class_index
    from lobsim.experiments import run_attack

    if budget is None:
        budget = 2_000_000.0 if kind == "random" else 100_000.0
    try:
        m = run_attack(kind, model_run, out_dir, victims=victims, n=n, budget=budget, budgets=_budget_list(budgets),
                       seed=seed, device=device, max_iter=max_iter, step_shares=step_shares,
                       target=class_index(target), gamma=gamma, steps=steps, lr=lr, train_n=train_n,
                       overwrite=overwrite, attack=attack, step_rule=step_rule, restarts=restarts,
                       search_iter=search_iter, minimize=minimize)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    from lobsim.report.tables import table_32_markdown, table_33_markdown

    rep = m["report"]
    if rep.get("table_3_2"):
        click.echo(table_32_markdown(rep["table_3_2"]))
    for t in rep.get("table_3_3", []):
        click.echo(table_33_markdown(t["matrix"]))
    for v, res in m.get("transfer", {}).items():
        click.echo(f"transfer to {v}: accuracy {100 * res['accuracy']:.2f}% (clean {100 * res['clean_accuracy']:.2f}%)")
    mk = m.get("masking")
    if mk and mk["flag"]:
        click.echo(f"possible gradient masking: only the gradient-free attack fooled {mk['masking']} of "
                   f"{mk['attacked']} attacked snippets; do not trust gradient-only capital on this model")
    click.echo(f"wrote {out_dir}")


@lob.command("report")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Folder for report.md, table_3_2/3_3 (.md .csv .json) and the PNG figures.")
def lob_report(runs, out_dir) -> None:
    """Merge attack / demo runs into Table 3.2, Table 3.3, accuracy-vs-capital curves and figures."""
    from lobsim.report import build_report

    try:
        made = build_report(runs, out_dir)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo("\n".join(str(p) for p in made))


@lob.command("demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="runs/demo", show_default=True,
              help="Run directory for data, models, records, tables and figures.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything (same seed, same numbers).")
@click.option("--preset", type=click.Choice(["demo", "tiny", "paper"]), default="demo", show_default=True,
              help="Size preset of the whole experiment: demo: 2-core CPU in minutes (6 synthetic days x 1 h, "
                   "dt = 0.1 s, small models reading swa,imbalance,depth_imbalance); tiny: seconds "
                   "(smoke test); paper: thesis grid (dt = 0.01 s) and model sizes, needs a GPU.")
@click.option("--synthetic", type=click.Choice(SYNTHETIC_MARKETS), default=None,
              help="Synthetic market preset [default: thick] (ignored with --data).")
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="Real LOBSTER day(s) instead of the synthetic market (one day splits by time). Repeatable.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda ...")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in OUT.")
@click.option("--inputs", default=None,
              help="The victims' input channels, comma-separated (see `lob train --inputs`) [default: the preset's; "
                   "demo: swa,imbalance,depth_imbalance; tiny and paper: swa].")
@threads_option
def lob_demo(out_dir, seed, preset, synthetic, data_paths, device, overwrite, inputs) -> None:
    """Synthetic market -> train Linear/MLP/LSTM -> random, capital and universal attacks -> tables and figures."""
    from lobsim.experiments import preset_config, run_experiment
    from lobsim.report.tables import table_32_markdown, table_33_markdown

    data = [str(p) for p in data_paths]
    try:
        from lobsim.adapters import parse_inputs

        cfg = preset_config(preset, seed=seed, device=device, data=data or None,
                            synthetic=None if data else (synthetic or "thick"),
                            inputs=list(parse_inputs(inputs)) if inputs else None)
        m = run_experiment(cfg, out_dir, progress=True, overwrite=overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"\n{m['ticker']}: {m['grid']}")
    click.echo(table_32_markdown(m["report"]["table_3_2"]))
    for t in m["report"]["table_3_3"]:
        click.echo(t["title"])
        click.echo(table_33_markdown(t["matrix"]))
    click.echo(f"done in {m['timings_s']['total']:.0f} s; tables and figures in {out_dir} (report.md)")


# ---- end lob attack ----
