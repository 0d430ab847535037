"""The ``advsim`` command line: groups ``data``, ``lob`` and ``vision``. Thin: parse, call the library, print.

Each ``*_cmds`` module attaches its commands to the groups of :mod:`cli.app`; importing this package
registers them all.
"""

import cli.defense_cmds  # noqa: F401  (registers the commands)
import cli.stress_cmds  # noqa: F401  (registers the commands)
import cli.vision_distill_cmds  # noqa: F401  (registers the commands)
import cli.vision_suite_cmds  # noqa: F401  (registers the commands)
import cli.vision_theory_cmds  # noqa: F401  (registers the commands)
from cli import data_cmds, lob_cmds, sweep_cmds, vision_certify_cmds, vision_cmds, vision_studies_cmds  # noqa: F401  (registers the commands)
from cli.app import main

__all__ = ["main"]

if __name__ == "__main__":
    main()
