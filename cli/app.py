"""The ``advsim`` click groups and the error layer every command shares.

Expected failures (bad input files, wrong flags, runs that do not fit together, nonsense option values) reach
the user as ONE line on stderr, ``Error: <file>: <problem>``, exit code 1 (2 for a bad flag or value, as click
does); Ctrl-C prints one line and exits 130. ``advsim --debug ...`` (or ``ADVSIM_DEBUG=1``) shows the full
traceback instead. Programming errors (anything else) keep their traceback, so bugs are never hidden.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import traceback
import zipfile
from collections.abc import Callable, Sequence
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

INTERRUPTED = ("interrupted (Ctrl-C): finished files are kept (an unfinished run directory is marked INCOMPLETE); "
               "run the same command again to resume or redo it")

# numpy >= 2 prints scalars as np.float64(1.5); users should read 1.5.
_NP_SCALAR = re.compile(r"\bnp\.(?:float|int|uint|complex)\d*\(([^()]*)\)|\bnp\.(?:bool_?|str_)\(([^()]*)\)")


_debug_flag = False  # --debug of the current invocation (reset by every AdvsimGroup.main call)


def _debug() -> bool:
    return _debug_flag or os.environ.get("ADVSIM_DEBUG", "") not in ("", "0")


def one_line(exc: BaseException | str) -> str:
    """The exception's message on one line (newlines joined with '; ', numpy scalar reprs as plain numbers)."""
    if isinstance(exc, str):
        text = exc.strip()
    else:
        text = str(exc).strip() or type(exc).__name__
        if isinstance(exc, KeyError):
            text = f"missing entry {text}"
    text = _NP_SCALAR.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), text)
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
            click.echo(f"Error: {INTERRUPTED}", err=True)
            sys.exit(130)
        except EXPECTED_ERRORS as exc:
            if _debug():
                raise
            raise click.ClickException(one_line(exc)) from exc

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        """Like click's, but every error is one line: a usage error names the command's ``--help`` instead of
        printing the usage block; with ``--debug`` the traceback of the underlying exception is printed too."""
        global _debug_flag
        _debug_flag = False
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
            click.echo(f"Error: {one_line(exc.format_message())}{where}", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            if _debug() and exc.__cause__ is not None:
                traceback.print_exception(exc.__cause__, file=sys.stderr)
            click.echo(f"Error: {one_line(exc.format_message())}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) and not isinstance(rv, bool) else 0)


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
    global _debug_flag
    _debug_flag = debug


@main.group()
def data() -> None:
    """Read, validate, inspect and cache LOBSTER order-book data."""


@main.group()
def lob() -> None:
    """The market side: synthetic data, models, attacks and reports."""


@main.group()
def vision() -> None:
    """The image side: datasets, models, attacks and defenses."""


THREADS_HELP = ("CPU threads for torch and Numba. 0 (the default) = automatic: the cores not busy right now "
                "(cores available to advsim minus the 1-minute load average, at least 1), so a shared machine "
                "is not oversubscribed; N > 0 uses N (at most the available cores).")


def threads_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--threads N`` to a compute command and apply it before the command runs."""

    @functools.wraps(fn)
    def wrapper(*args: Any, threads: int = 0, **kwargs: Any) -> Any:
        from data_loaders.runtime import set_threads

        set_threads(threads)
        return fn(*args, **kwargs)

    return click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
                        help=THREADS_HELP)(wrapper)
