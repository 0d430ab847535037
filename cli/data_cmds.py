"""``advsim data ...``: inspect, ingest and check LOBSTER files."""

from __future__ import annotations

import click

from cli.app import data, threads_option

# ---- data commands (issue: LOBSTER ingestion) ----
_CACHE_DIR_HELP = "Parquet cache folder (default: $ADVSIM_CACHE or ~/.cache/advsim)."


def _load_lobster(path: str, orderbook: str | None, cache_dir: str | None, no_cache: bool):
    from data_loaders.lobster import LobsterFormatError, load_day

    try:
        return load_day(path, orderbook, cache_dir=cache_dir, use_cache=not no_cache)
    except (LobsterFormatError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None


def _try_load(path: str, cache_dir: str | None, no_cache: bool):
    """(day, None) or (None, one-line error) for one day of a many-day loop, which goes on after a bad day."""
    from cli.app import EXPECTED_ERRORS, one_line
    from data_loaders.lobster import load_day

    try:
        return load_day(path, cache_dir=cache_dir, use_cache=not no_cache), None
    except EXPECTED_ERRORS as exc:
        return None, one_line(exc)


def _day_paths(paths: tuple[str, ...]) -> list[str]:
    """Every LOBSTER day named by the arguments (files, .zips, folders, glob patterns), in a stable order."""
    from lobsim.dataset import expand_day_paths

    return expand_day_paths(paths)


def _print_one_day(day, levels_shown: int, as_json: bool) -> None:
    import json

    from data_loaders.lobster_stats import day_stats

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


@data.command("inspect")
@click.argument("paths", nargs=-1, required=True)
@click.option("--orderbook", type=click.Path(exists=True), default=None,
              help="Orderbook csv, when PATH is one message csv whose name does not follow the LOBSTER convention.")
@click.option("--levels-shown", type=int, default=0, show_default=True,
              help="One day: also print the time-weighted mean size of the first N levels of each side.")
@click.option("--json", "as_json", is_flag=True, help="Print the statistics as JSON instead of text.")
@click.option("--cache-dir", type=click.Path(), default=None, help=_CACHE_DIR_HELP)
@click.option("--no-cache", is_flag=True, help="Parse the files even when a cached copy exists; write no cache.")
def data_inspect(paths: tuple[str, ...], orderbook: str | None, levels_shown: int, as_json: bool,
                 cache_dir: str | None, no_cache: bool) -> None:
    """Summarise LOBSTER days: one day in detail, several as one row per ticker-day plus totals.

    PATHS: message csvs, LOBSTER .zips, folders of days (csv pairs and .zips, not recursive) or glob patterns
    (quote them, e.g. 'data/*/'). A day that fails validation is listed with its error; the exit code is then 1.
    """
    import json

    from data_loaders.lobster_stats import day_row, day_stats, days_totals, format_days_table

    if orderbook is not None:
        if len(paths) != 1:
            raise click.UsageError("--orderbook goes with exactly one message csv")
        _print_one_day(_load_lobster(paths[0], orderbook, cache_dir, no_cache), levels_shown, as_json)
        return
    days = _day_paths(paths)
    if len(days) == 1:
        _print_one_day(_load_lobster(days[0], None, cache_dir, no_cache), levels_shown, as_json)
        return
    from tqdm import tqdm

    rows, stats, errors = [], [], []
    for p in tqdm(days, desc="inspect", unit="day", leave=False):
        day, err = _try_load(p, cache_dir, no_cache)
        if day is None:
            errors.append(err)
            continue
        st = day_stats(day)
        stats.append(st)
        rows.append(day_row(st))
    totals = days_totals(rows, failed=len(errors))
    if as_json:
        click.echo(json.dumps({"days": stats, "totals": totals, "errors": errors}, indent=2))
    else:
        click.echo(format_days_table(rows, totals, errors))
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(days)} day(s) failed validation (listed above)")


@data.command("ingest")
@click.argument("paths", nargs=-1, required=True)
@click.option("--cache-dir", type=click.Path(), default=None, help=_CACHE_DIR_HELP)
@threads_option
def data_ingest(paths: tuple[str, ...], cache_dir: str | None) -> None:
    """Parse, validate and cache LOBSTER days, with one progress bar over all of them.

    PATHS: message csvs, LOBSTER .zips, folders of days (csv pairs and .zips, not recursive) or glob patterns.
    A day that fails validation is reported and the others are still cached; the exit code is then 1.
    """
    from pathlib import Path

    from tqdm import tqdm

    days = _day_paths(paths)
    errors: list[str] = []
    rows = 0
    with tqdm(days, desc="ingest", unit="day") as bar:
        for p in bar:
            bar.set_postfix_str(Path(p).name[:40])
            day, err = _try_load(p, cache_dir, False)
            if day is None:
                errors.append(err)
                tqdm.write(f"failed: {err}")
            else:
                rows += day.n_rows
    click.echo(f"cached {len(days) - len(errors)} of {len(days)} day(s), {rows:,} rows")
    if errors:
        raise click.ClickException(f"{len(errors)} of {len(days)} day(s) failed validation (listed above)")


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
