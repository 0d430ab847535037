"""``advsim data ...``: inspect, ingest and check LOBSTER files."""

from __future__ import annotations

import click

from cli.app import data

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
