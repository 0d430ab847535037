"""The ``advsim`` command line: groups ``data``, ``lob`` and ``vision``. Thin: parse, call the library, print."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="advsim")
def main() -> None:
    """advsim: how much money, placed how, makes a trading model mispredict?

    \b
    Groups:
      data    inspect and ingest LOBSTER files (message + orderbook, .csv or .zip)
      lob     synthetic markets, valuation models, order-book attacks, reports
      vision  image datasets, models, attacks and adversarial training
    """


@main.group()
def data() -> None:
    """Read, validate, inspect and cache LOBSTER order-book data."""


@main.group()
def lob() -> None:
    """The market side: synthetic data, models, attacks and reports."""


@main.group()
def vision() -> None:
    """The image side: datasets, models, attacks and defenses."""


# ---- data commands (issue: LOBSTER ingestion) ----
_CACHE_DIR_HELP = "Parquet cache folder (default: $ADVSIM_CACHE or ~/.cache/advsim)."


def _load_lobster(path: str, orderbook: str | None, cache_dir: str | None, no_cache: bool):
    from data_loaders.lobster import LobsterFormatError, load_day

    try:
        return load_day(path, orderbook, cache_dir=cache_dir, use_cache=not no_cache)
    except (LobsterFormatError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


@data.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option("--orderbook", type=click.Path(exists=True), default=None,
              help="Orderbook csv, when PATH is a message csv whose name does not follow the LOBSTER convention.")
@click.option("--levels-shown", type=int, default=0, show_default=True,
              help="Also print the time-weighted mean size of the first N levels of each side.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of text.")
@click.option("--cache-dir", type=click.Path(), default=None, help=_CACHE_DIR_HELP)
@click.option("--no-cache", is_flag=True, help="Parse the files even when a cached copy exists; write no cache.")
def data_inspect(path: str, orderbook: str | None, levels_shown: int, as_json: bool, cache_dir: str | None,
                 no_cache: bool) -> None:
    """Summarise one LOBSTER day: PATH is a message csv, a folder with one pair, or a LOBSTER .zip."""
    import json

    from data_loaders.lobster_stats import day_stats

    day = _load_lobster(path, orderbook, cache_dir, no_cache)
    st = day_stats(day)
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(day.summary())
    click.echo(f"time span: {st['start_clock']} - {st['end_clock']} ({st['duration_s']:,.1f} s)")
    click.echo(f"price range: ${st['price_min']:,.4f} - ${st['price_max']:,.4f}")
    click.echo(f"mean spread: ${st['mean_spread']:.4f}   mean depth (shares, top {day.levels}): "
               f"bid {st['mean_depth_bid']:,.1f}, ask {st['mean_depth_ask']:,.1f}")
    click.echo(f"executions: {st['executions']:,} ({st['executions_visible']:,} visible, "
               f"{st['executions_hidden']:,} hidden), {st['executions_per_hour']:,.1f} per hour, "
               f"volume {st['executed_volume']:,}")
    click.echo(f"SWA volatility (std of 1-second changes): ${st['swa_vol_1s']:.5f}")
    for j in range(min(levels_shown, day.levels)):
        click.echo(f"  level {j + 1:>2}: mean bid size {st['mean_level_sizes_bid'][j]:>10,.1f}   "
                   f"mean ask size {st['mean_level_sizes_ask'][j]:>10,.1f}")


@data.command("ingest")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--cache-dir", type=click.Path(), default=None, help=_CACHE_DIR_HELP)
def data_ingest(paths: tuple[str, ...], cache_dir: str | None) -> None:
    """Parse, validate and cache LOBSTER days (message csvs, folders of pairs, or .zip files)."""
    from pathlib import Path

    from tqdm import tqdm

    from data_loaders.lobster import find_days

    todo: list[str] = []
    for p in paths:
        if Path(p).is_dir():
            found = [pair.message for pair in find_days(p)] + sorted(str(z) for z in Path(p).glob("*.zip"))
            if not found:
                raise click.ClickException(f"{p}: no LOBSTER message/orderbook pair or .zip found")
            todo += found
        else:
            todo.append(p)
    for p in (bar := tqdm(todo, desc="ingest", unit="day")):
        bar.set_postfix_str(Path(p).name[:40])
        day = _load_lobster(p, None, cache_dir, False)
        tqdm.write(f"{day.ticker} {day.date} L{day.levels}: {day.n_rows:,} rows cached")


@data.command("check")
@click.argument("path", type=click.Path(exists=True))
@click.option("--orderbook", type=click.Path(exists=True), default=None,
              help="Orderbook csv, when PATH's name does not follow the LOBSTER convention.")
@click.option("--cache-dir", type=click.Path(), default=None, help=_CACHE_DIR_HELP)
@click.option("--no-cache", is_flag=True, help="Parse the files even when a cached copy exists; write no cache.")
def data_check(path: str, orderbook: str | None, cache_dir: str | None, no_cache: bool) -> None:
    """Rebuild the book from the messages and compare every row with LOBSTER's orderbook file."""
    from lobsim.book import BookMismatchError, rebuild

    day = _load_lobster(path, orderbook, cache_dir, no_cache)
    try:
        report = rebuild(day)
    except BookMismatchError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{day.ticker} {day.date} L{day.levels}: OK. {report.describe()}")


# ---- end data commands ----


# ---- lob synth (issue: synthetic market) ----
@lob.command("synth")
@click.option("--preset", type=click.Choice(["thick", "thin"]), default="thick", show_default=True,
              help="thick: about $9, 1-tick spread, tens of thousands of shares on 10 levels (like Ford); "
                   "thin: about $580, wide spread, a few thousand shares (like GOOG).")
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
def lob_synth(preset: str, days: int, hours: float, out_dir: str, seed: int, levels: int, as_zip: bool,
              ticker: str | None, start_date: str) -> None:
    """Simulate a zero-intelligence market and write real LOBSTER files (one pair per trading day)."""
    from data_loaders.synthetic import write_days

    try:
        paths = write_days(out_dir, preset=preset, days=days, hours=hours, seed=seed, levels=levels,
                           ticker=ticker, start_date=start_date, zip=as_zip, progress=True)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    for p in paths:
        click.echo(str(p))
    click.echo(f"wrote {len(paths)} day(s) of the {preset!r} synthetic market to {out_dir}")



# ---- end lob synth ----


# ---- lob train / evaluate / table (issue: valuation models) ----
def _train_market(cfg_data: dict, features):
    from lobsim.dataset import Market

    return Market.from_paths(cfg_data["paths"], dt=cfg_data["dt"], start=cfg_data["start"], end=cfg_data["end"],
                             features=features, split=cfg_data["split"],
                             train_fraction=cfg_data["train_fraction"], progress=True)


@lob.command("train")
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="LOBSTER day(s): a message csv, a LOBSTER .zip or a folder (several days are expanded in date "
                   "order). Repeat for more days. Several days split by day (first 80% train), one day by time.")
@click.option("--synthetic", type=click.Choice(["thick", "thin"]), default=None,
              help="Instead of --data: simulate this synthetic market into OUT/data first.")
@click.option("--days", type=click.IntRange(min=1), default=5, show_default=True, help="Synthetic days.")
@click.option("--hours", type=click.FloatRange(min=0, max=6.5, min_open=True), default=1.0, show_default=True,
              help="Synthetic hours per day, from 09:30.")
@click.option("--model", "kind", type=click.Choice(["linear", "mlp", "lstm"]), default="mlp", show_default=True,
              help="Valuation model.")
@click.option("--preset", type=click.Choice(["small", "paper"]), default="small", show_default=True,
              help="small: CPU-sized (MLP 2x256, LSTM pooled by 20 then 1x32); paper: thesis sizes (needs a GPU).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Run directory to write.")
@click.option("--steps", type=click.IntRange(min=0), default=None,
              help="Optimiser steps [default: 1500 small, 5000 paper]. Raise it to continue a finished run.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Snippets per step, freshly sampled [default: 256 small, 2000 paper].")
@click.option("--lr", type=float, default=None,
              help="Learning rate [default: linear 1e-5, mlp 1e-4 (paper 1e-5), lstm 1e-3].")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="torch CPU threads (0: torch's default; 1 is often faster for small models on a busy CPU).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True,
              help="adam, or sgd with momentum 0.9 (the thesis' optimiser).")
@click.option("--window", type=float, default=60.0, show_default=True, help="Input window in seconds.")
@click.option("--horizon", type=float, default=10.0, show_default=True, help="Label horizon in seconds.")
@click.option("--dt", type=float, default=0.01, show_default=True, help="Grid step in seconds.")
@click.option("--start", type=float, default=None,
              help="Session start, seconds after midnight [default: 34200 (09:30) if the day covers 09:30-10:30, "
                   "else the first message].")
@click.option("--end", type=float, default=None, help="Session end [default: 37800 (10:30), else the last message].")
@click.option("--relative", is_flag=True, help="Label on the relative SWA change instead of dollars.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for init, sampling and synthetic data.")
@click.option("--eval-n", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Test snippets for the evaluation after training.")
@click.option("--fresh", is_flag=True, help="Ignore a checkpoint in OUT instead of resuming from it.")
def lob_train(data_paths, synthetic, days, hours, kind, preset, out_dir, steps, batch, lr, threads, optimizer, window,
              horizon, dt, start, end, relative, device, seed, eval_n, fresh) -> None:
    """Train a valuation model (SWA window -> down/flat/up) and evaluate it on held-out test snippets.

    Writes OUT/config.json, checkpoint.safetensors (resumable: rerun the same command after Ctrl-C),
    weights.safetensors, model.json, train_log.json and metrics.json.
    """
    from pathlib import Path

    from lobsim.dataset import FeatureConfig
    from lobsim.features import LabelConfig
    from lobsim.train import default_config, evaluate, train

    if bool(data_paths) == bool(synthetic):
        raise click.UsageError("give either --data PATH (repeatable) or --synthetic PRESET")
    if threads:
        import torch

        torch.set_num_threads(threads)
    if synthetic:
        from data_loaders.synthetic import write_days

        data_paths = tuple(str(p) for p in write_days(Path(out_dir) / "data", synthetic, days=days, hours=hours,
                                                      seed=seed, progress=True))
    features = FeatureConfig(dt=dt, window_s=window, horizon_s=horizon, labels=LabelConfig(relative=relative))
    data_cfg = {"paths": [str(Path(p).resolve()) for p in data_paths], "dt": dt, "start": start, "end": end,
                "split": "auto", "train_fraction": 0.8, "synthetic": synthetic}
    cfg = default_config(kind, preset, features, steps=steps, batch=batch, lr=lr, optimizer=optimizer, device=device,
                         seed=seed, eval_n=eval_n, data=data_cfg)
    market = _train_market(data_cfg, features)
    click.echo(f"market: {len(market.books)} day(s), split by {market.split}: {market.n_train:,} train / "
               f"{market.n_test:,} test snippet starts")
    trained = train(cfg, market, out_dir, progress=True, resume=not fresh)
    click.echo(f"trained {kind}/{preset} ({trained.info['parameters']:,} parameters) in "
               f"{trained.info['train_seconds_this_session']:.1f} s on {trained.device}")
    click.echo(evaluate(trained, market, n=eval_n, seed=cfg.eval_seed).summary())


@lob.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--n", "n", type=click.IntRange(min=1), default=10_000, show_default=True, help="Test snippets.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the test-snippet draw.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda ...")
def lob_evaluate(run: str, n: int, seed: int, device: str) -> None:
    """Evaluate a trained run on its market's test snippets; writes RUN/metrics.json."""
    from lobsim.train import evaluate, load_run

    trained = load_run(run, device=device)
    if not trained.config.data:
        raise click.ClickException(f"{run}: config holds no data paths; evaluate it from Python with a Market")
    market = _train_market(trained.config.data, trained.config.features)
    click.echo(evaluate(trained, market, n=n, seed=seed).summary())


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
@click.option("--max-iter", type=click.IntRange(min=1), default=300, show_default=True,
              help="capital: iterations before a snippet is given up.")
@click.option("--step-shares", type=float, default=0.1, show_default=True,
              help="capital: expected first step, in shares on the largest-gradient entry (sets alpha0).")
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
def lob_attack(kind, model_run, victims, n, budget, budgets, max_iter, step_shares, target, gamma, steps, lr,
               train_n, out_dir, seed, device, overwrite) -> None:
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
                       overwrite=overwrite)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    from lobsim.report_tables import table_32_markdown, table_33_markdown

    rep = m["report"]
    if rep.get("table_3_2"):
        click.echo(table_32_markdown(rep["table_3_2"]))
    for t in rep.get("table_3_3", []):
        click.echo(table_33_markdown(t["matrix"]))
    for v, res in m.get("transfer", {}).items():
        click.echo(f"transfer to {v}: accuracy {100 * res['accuracy']:.2f}% (clean {100 * res['clean_accuracy']:.2f}%)")
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
              help="demo: 2-core CPU in minutes (3 synthetic days x 1 h, dt = 0.1 s, small models); tiny: seconds "
                   "(smoke test); paper: thesis grid (dt = 0.01 s) and model sizes, needs a GPU.")
@click.option("--synthetic", type=click.Choice(["thick", "thin"]), default=None,
              help="Synthetic market preset [default: thick] (ignored with --data).")
@click.option("--data", "data_paths", multiple=True, type=click.Path(exists=True),
              help="Real LOBSTER day(s) instead of the synthetic market (one day splits by time). Repeatable.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda ...")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in OUT.")
def lob_demo(out_dir, seed, preset, synthetic, data_paths, device, overwrite) -> None:
    """Synthetic market -> train Linear/MLP/LSTM -> random, capital and universal attacks -> tables and figures."""
    from lobsim.experiments import preset_config, run_experiment
    from lobsim.report_tables import table_32_markdown, table_33_markdown

    data = [str(p) for p in data_paths]
    try:
        cfg = preset_config(preset, seed=seed, device=device, data=data or None,
                            synthetic=None if data else (synthetic or "thick"))
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


# ---- vision commands (issue: vision) ----
class _Radius(click.ParamType):
    """A radius given as a float or a fraction such as 8/255."""

    name = "radius"

    def convert(self, value, param, ctx):  # noqa: ANN001 - click's signature
        from vision.evaluate import parse_eps

        if isinstance(value, float):
            return value
        try:
            return parse_eps(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@vision.command("train")
@click.option("--dataset", type=click.Choice(["digits", "mnist", "fashion-mnist", "cifar10", "folder"]),
              default="digits", show_default=True, help="Image dataset (digits is built in; see docs/vision.md).")
@click.option("--root", type=click.Path(), default=None,
              help="Where the dataset lives: IDX folder, CIFAR-10 batches/PNG subset/image folder/tar. "
                   "Default: the shared data folder (mnist, cifar10) or /usr/share/datasets (fashion-mnist).")
@click.option("--model", default="auto", show_default=True,
              help="mnist_small, mnist_large, preact18, resnet10, resnet18, wrn-34-10, wrn-28-10 (any wrn-D-W); "
                   "auto = mnist_small for grey images, preact18 for colour.")
@click.option("--defense", type=click.Choice(["standard", "pgd", "fast", "trades"]), default="standard",
              show_default=True, help="Training procedure: clean, PGD adversarial, FGSM+random start, TRADES.")
@click.option("--eps", type=_Radius(), default="8/255", show_default=True, help="Linf training radius (0.3, 8/255).")
@click.option("--alpha", type=_Radius(), default=None,
              help="Attack step during training. Default: 1.25*eps (fast), eps/4 (pgd, trades).")
@click.option("--attack-steps", type=int, default=7, show_default=True, help="PGD / TRADES inner steps.")
@click.option("--trades-beta", type=float, default=6.0, show_default=True, help="TRADES weight of the KL term.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Minibatch size.")
@click.option("--optimizer", type=click.Choice(["sgd", "adam"]), default="sgd", show_default=True,
              help="SGD (momentum 0.9) or Adam.")
@click.option("--lr-max", type=float, default=0.2, show_default=True, help="Peak learning rate.")
@click.option("--schedule", type=click.Choice(["cyclic", "piecewise", "cosine", "constant"]), default="cyclic",
              show_default=True, help="Learning-rate schedule, stepped every iteration.")
@click.option("--lr-peak", type=float, default=0.5, show_default=True,
              help="Cyclic schedule: fraction of training where the rate peaks (0.4 for the MNIST recipe).")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="Weight decay.")
@click.option("--augment/--no-augment", default=None,
              help="Random crop (pad 4) + flip on the device. Default: on for cifar10 only.")
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default="auto", show_default=True,
              help="Mixed precision: auto = bf16 autocast on CUDA, off on CPU.")
@click.option("--guard/--no-guard", default=None,
              help="Catastrophic-overfitting guard (PGD-5 on one training batch per epoch). Default: on for fast.")
@click.option("--normalize/--no-normalize", default=True, show_default=True,
              help="Per-channel mean/std normalisation inside the model; --no-normalize feeds [0, 1] pixels as is.")
@click.option("--val-size", type=int, default=0, show_default=True,
              help="Hold out this many training images and keep the epoch with the best PGD accuracy on them.")
@click.option("--n-train", type=int, default=None, help="Train on the first N (shuffled) training images only.")
@click.option("--n-test", type=int, default=1000, show_default=True, help="Test images for the quick final check.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (same seed => same numbers).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda, cuda:1.")
@click.option("--out", type=click.Path(), required=True, help="Run directory to create.")
@click.option("--overwrite", is_flag=True, help="Replace a finished run in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def vision_train(out, overwrite, quiet, **opts) -> None:
    """Train an image classifier with a defense and write a run directory.

    \b
    Example (CPU, seconds):
      advsim vision train --dataset digits --defense fast --eps 0.1 --optimizer adam --lr-max 5e-3 --out runs/d
    """
    from vision.train import VisionTrainConfig, train_run

    cfg = VisionTrainConfig(**opts)
    try:
        m = train_run(cfg, out, overwrite=overwrite, progress=not quiet)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{out}: {m['defense']} {m['model_name']}, {m['epochs_run']} epochs in {m['train_seconds']:.1f} s "
               f"on {m['device']}; test clean {m['test_clean_acc']:.4f}, {m['test_pgd']}: {m['test_pgd_acc']:.4f}")
    if m["stopped_early"]:
        click.echo(f"stopped early: {m['stopped_early']}")


@vision.command("evaluate")
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.option("--attack", type=click.Choice(["fgsm", "pgd", "apgd", "msd"]), default="pgd", show_default=True,
              help="Attack from vision.attacks.")
@click.option("--eps", type=_Radius(), default=None, help="Radius (default: the run's training eps).")
@click.option("--norm", type=click.Choice(["linf", "l2", "l1"]), default="linf", show_default=True,
              help="Threat model of pgd/apgd (msd attacks the union of all three).")
@click.option("--steps", type=int, default=50, show_default=True, help="Attack iterations.")
@click.option("--restarts", type=int, default=10, show_default=True, help="Random restarts (best kept).")
@click.option("--alpha", type=_Radius(), default=None,
              help="PGD step. Default: eps/4 for linf, 2.5*eps/steps for l2/l1.")
@click.option("--msd-eps", default=None, help="MSD radii linf,l2,l1 (default 0.3,2,10).")
@click.option("--n", type=int, default=1000, show_default=True, help="Attack the first N test images.")
@click.option("--dataset", default=None, help="Evaluate on another dataset than the run's (same image shape).")
@click.option("--root", type=click.Path(), default=None, help="Root of --dataset (see vision train --root).")
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True,
              help="Which split to attack.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per attack batch.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random starts.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when present), cpu, cuda.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def vision_evaluate(run, quiet, **opts) -> None:
    """Attack a trained run's model and record clean and robust accuracy in RUN/eval-*.json."""
    from vision.evaluate import evaluate_run

    try:
        r = evaluate_run(run, progress=not quiet, **opts)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    eps = r["eps"] if isinstance(r["eps"], dict) else f"{r['eps']:.4g}"
    click.echo(f"{run}: {r['attack']} {r['norm']} eps={eps} steps={r['steps']} restarts={r['restarts']} "
               f"n={r['n']}: clean {r['clean_acc']:.4f}, robust {r['robust_acc']:.4f} ({r['seconds']:.1f} s)")


# ---- end vision commands ----


if __name__ == "__main__":
    main()
