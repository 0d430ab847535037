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

# ---- end data commands ----


# ---- lob synth (issue: synthetic market) ----

# ---- end lob synth ----


# ---- lob train / evaluate / table (issue: valuation models) ----

# ---- end lob train ----


# ---- lob attack / report / demo (issue: attacks) ----

# ---- end lob attack ----


# ---- vision commands (issue: vision) ----

# ---- end vision commands ----


if __name__ == "__main__":
    main()
