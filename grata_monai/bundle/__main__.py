"""``python -m grata_monai.bundle``: MONAI's bundle command line (``python -m monai.bundle``, same
commands and arguments) with the bundle's console set up before MONAI reads a config.

``python -m monai.bundle run`` prints MONAI's notice that a config can run code, and a traceback for
a mistyped ``--config_file``, before any code of the bundle runs. This entry installs
:func:`grata_monai.bundle.console.setup` (one-line stop errors, known warnings silenced, the notice
too: run it on this bundle's configs or others you trust) and checks that the config files exist,
then hands over to MONAI.
"""

from __future__ import annotations

import runpy
import sys

from grata_monai.bundle.console import setup
from grata_monai.bundle.overrides import check_config_files, run_arguments

__all__ = ["main"]


def main() -> None:
    """Set up the console, check ``--config_file`` of a ``run``, and run MONAI's bundle command line."""
    setup(trusted_configs=True)
    if len(sys.argv) > 1 and sys.argv[1] == "run":
        check_config_files(run_arguments(sys.argv[2:]).get("config_file"))
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
