"""What a bundle run shows on the console: stop errors as one plain sentence, no known noise.

``python -m monai.bundle run`` is MONAI's entry point: the bundle cannot wrap it, and an error in
a config expression reaches the user as MONAI's ``Failed to evaluate ConfigExpression`` traceback
with the useful message far above it. Errors that stop a run (no input, outputs that exist, a bad
setting, inputs that were skipped) are raised as :class:`RunStopped`; :func:`setup`, called from the
config's ``initialize``, installs a ``sys.excepthook`` that ends the output with that message alone
(exit status 1) when a ``RunStopped`` is anywhere in the exception's chain. ``GRATA_DEBUG=1`` keeps
the full traceback. Other exceptions are untouched. :func:`setup` also silences warnings we know
to be harmless on every run (MONAI's nvImageCodec note on machines without it, the announced
change of ``Orientationd``'s default labels, torch's deprecation note on MONAI's sliding-window
indexing) and, for ``python -m grata_monai.bundle`` (the only entry that runs before MONAI parses a
config), MONAI's notice that a config can run code; MONAI Label's and MONAI Deploy's hosts of the
bundle call :func:`quiet` too.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from types import TracebackType

__all__ = [
    "CONFIG_NOTICE",
    "RunStopped",
    "NotFound",
    "OutputsExist",
    "BadSetting",
    "InputsSkipped",
    "stop_reason",
    "quiet",
    "setup",
]

# (message regex, category) of warnings every CPU run prints and nobody can act on.
KNOWN_WARNINGS = (
    ("NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register", UserWarning),
    # MONAI announces a future default of Orientationd(labels=...); the bundle's RAS is unaffected.
    (r".*Orientationd\.__init__:labels: Current default value", FutureWarning),
    # torch on MONAI's sliding-window slicing (monai/inferers/utils.py indexes with a list).
    ("Using a non-tuple sequence for multidimensional indexing is deprecated", UserWarning),
)


# MONAI's notice on every parse of a config by `monai.bundle run`: "_target_" and "$" values run code.
CONFIG_NOTICE = (
    r"parsing config_file .*any `\"_target_\"` value in it is resolved to an importable callable"
)


class RunStopped(Exception):
    """An error that stops a bundle run and whose message says all the user needs."""

    prefix = "error: "


class NotFound(RunStopped, FileNotFoundError):
    """A file or folder the run needs is missing, or the input folder holds no volume."""


class OutputsExist(RunStopped, FileExistsError):
    """An output of the run already exists and ``--overwrite`` is not set."""


class BadSetting(RunStopped, ValueError):
    """A setting given on the command line or in a config has a value the bundle cannot use."""


class InputsSkipped(RunStopped, RuntimeError):
    """Some inputs were skipped; the message is the run's summary, printed as it is."""

    prefix = ""


def stop_reason(error: BaseException | None) -> RunStopped | None:
    """The first :class:`RunStopped` in ``error``'s chain (causes and contexts), if any."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, RunStopped):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _excepthook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    reason = stop_reason(error)
    if reason is None or os.environ.get("GRATA_DEBUG", "") not in ("", "0"):
        sys.__excepthook__(kind, error, tb)
        return
    sys.stdout.flush()
    print(f"{reason.prefix}{reason}", file=sys.stderr, flush=True)


def quiet() -> None:
    """Silence the known harmless warnings (``KNOWN_WARNINGS`` and MONAI's nvImageCodec log note)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)


def setup(trusted_configs: bool = False) -> None:
    """Install the plain stop-error hook and silence the known harmless warnings (for ``initialize``).

    Args:
        trusted_configs: also silence MONAI's notice, printed each time a config is parsed, that a config
            can run code (``python -m grata_monai.bundle``, which runs this bundle's own configs).
    """
    sys.excepthook = _excepthook
    quiet()
    if trusted_configs:
        warnings.filterwarnings("ignore", message=CONFIG_NOTICE, category=UserWarning)
