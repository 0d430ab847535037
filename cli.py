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
            pairs = find_days(p)
            if not pairs:
                raise click.ClickException(f"{p}: no LOBSTER message/orderbook pair found")
            todo += [pair.message for pair in pairs]
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

# ---- end lob train ----


# ---- lob attack / report / demo (issue: attacks) ----

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
