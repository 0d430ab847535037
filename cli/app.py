"""The ``advsim`` click groups and the error layer every command shares.

Expected failures (bad input files, wrong flags, runs that do not fit together) reach the user as ONE line on
stderr, ``Error: <file>: <problem>``, exit code 1; Ctrl-C prints one line and exits 130. ``advsim --debug ...``
(or ``ADVSIM_DEBUG=1``) shows the full traceback instead. Programming errors (anything else) keep their
traceback, so bugs are never hidden.
"""

from __future__ import annotations

import functools
import os
import sys
import zipfile
from collections.abc import Callable
from typing import Any

import click

# Exceptions that describe bad input or a refused operation, not a bug.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    zipfile.BadZipFile,
    EOFError,
)


def _debug() -> bool:
    return os.environ.get("ADVSIM_DEBUG", "") not in ("", "0")


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (newlines joined with '; ')."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError):
        text = f"missing entry {text}"
    parts = [p.strip() for p in text.splitlines() if p.strip()]
    return "; ".join(parts)


class AdvsimGroup(click.Group):
    """The top-level group: turns expected exceptions into one-line errors (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except (click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            if _debug():
                raise
            click.echo("interrupted (Ctrl-C): finished results are kept; run the same command again to resume "
                       "or to start over", err=True)
            sys.exit(130)
        except EXPECTED_ERRORS as exc:
            if _debug():
                raise
            raise click.ClickException(one_line(exc)) from None


@click.group(cls=AdvsimGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="advsim")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error instead of one line.")
def main(debug: bool) -> None:
    """advsim: how much money, placed how, makes a trading model mispredict?

    \b
    Groups:
      data    inspect and ingest LOBSTER files (message + orderbook, .csv or .zip)
      lob     synthetic markets, valuation models, order-book attacks, reports
      vision  image datasets, models, attacks and adversarial training
    """
    if debug:
        os.environ["ADVSIM_DEBUG"] = "1"


@main.group()
def data() -> None:
    """Read, validate, inspect and cache LOBSTER order-book data."""


@main.group()
def lob() -> None:
    """The market side: synthetic data, models, attacks and reports."""


@main.group()
def vision() -> None:
    """The image side: datasets, models, attacks and defenses."""


THREADS_HELP = ("CPU threads for torch and Numba (0 = automatic: the cores not busy now, from the load "
                "average, at least 1; this avoids oversubscribing a shared machine).")


def threads_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--threads N`` to a compute command and apply it before the command runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, threads: int = 0, **kwargs: Any) -> Any:
        from data_loaders.runtime import set_threads

        set_threads(threads)
        return fn(*args, **kwargs)

    return click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                        help=THREADS_HELP)(wrapper)
