"""``advsim lob sweep CONFIG``: ticker-days x models x attacks x budgets x fill models, resumable, on Ray."""

from __future__ import annotations

import click

from cli.app import lob, threads_option


@lob.command("sweep")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Sweep folder [default: runs/sweep-NAME, NAME from the config]. Run the same command again to "
                   "resume: finished cells are skipped, failed ones retried.")
@click.option("--runner", type=click.Choice(["auto", "ray", "local"]), default="auto", show_default=True,
              help="auto: Ray when installed (pip install -e '.[ray]'), else one cell after another in this "
                   "process; ray; local (no Ray). Both give the same results table.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="Local Ray: cells run at once (0 = the cores available; each cell takes "
                   "[run] threads_per_cell of them).")
@click.option("--address", default=None,
              help="Join a running Ray cluster (e.g. auto, or HOST:6379) instead of starting Ray here. The nodes "
                   "must import advsim and see the data and the sweep folder at the same paths.")
@click.option("--max-cells", type=click.IntRange(min=0), default=None,
              help="Run at most N unfinished cells in this call (the rest on the next call).")
@click.option("--dry-run", is_flag=True,
              help="Print the cells the config expands into and stop (synthetic markets are written first: their "
                   "days make the cells).")
@threads_option
def lob_sweep(config: str, out_dir: str | None, runner: str, workers: int, address: str | None,
              max_cells: int | None, dry_run: bool) -> None:
    """Run a sweep from a TOML CONFIG (markets, models, attacks with budgets, fill models, defenses).

    Writes OUT/cells/<cell>/result.json per finished cell (error.txt for a failed one), OUT/results.parquet and
    results.csv (one row per cell and budget), timings.csv, and OUT/report/report.md with capital curves per
    ticker and model. The format of CONFIG is in docs/scale.md; examples/sweep-small.toml runs in about a minute.
    --threads sets this process; every cell runs with the config's [run] threads_per_cell, whatever the runner.
    """
    from pathlib import Path

    from lobsim.sweep import load_config, plan_sweep, run_sweep

    cfg = load_config(config)
    out = Path(out_dir) if out_dir else Path("runs") / f"sweep-{cfg.name}"
    if dry_run:
        days, instances, cells = plan_sweep(cfg, out, progress=True)
        for c in cells:
            click.echo(c.id)
        trained = sum(1 for i in instances if i.train)
        click.echo(f"{len(cells)} cells: {sum(len(v) for v in days.values())} ticker-day(s) x "
                   f"{len(instances)} model instance(s) ({trained} to train) x {len(cfg.attacks)} attack(s) x "
                   f"{len(cfg.fill_models)} fill model(s), budgets inside cells; defense(s) "
                   f"{', '.join(cfg.defenses)} (each trains its own instances; runs are attacked as trained)")
        return
    summary = run_sweep(cfg, out, runner=runner, workers=workers, address=address, progress=True,
                        max_cells=max_cells)
    click.echo(summary.line())
    click.echo(f"table: {out / 'results.csv'}; report: {out / 'report' / 'report.md'}")
    if summary.failed:
        click.echo(f"{summary.failed} cell(s) failed: their errors are in {out}/cells/*/error.txt and the report; "
                   "run the same command again to retry them", err=True)
