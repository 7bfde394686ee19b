"""Where the tooling finds the data and the bundle: the command's argument, else the environment
(``GRATA_DATA_DIR``, ``GRATA_BUNDLE_DIR``); never the package's own location."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["data_dir", "bundle_dir"]


def data_dir(value: str | os.PathLike | None, subfolder: str = "abdomen") -> Path:
    """``value``, else ``$GRATA_DATA_DIR/<subfolder>``.

    Raises:
        FileNotFoundError: neither is given, or the folder does not exist.
    """
    if value is None:
        if not os.environ.get("GRATA_DATA_DIR"):
            raise FileNotFoundError(
                f"no data folder: pass --data_dir, or set GRATA_DATA_DIR to the folder holding {subfolder}/."
            )
        value = Path(os.environ["GRATA_DATA_DIR"]) / subfolder
    path = Path(value).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data folder '{path}' does not exist: pass --data_dir or set GRATA_DATA_DIR."
        )
    return path


def bundle_dir(value: str | os.PathLike | None) -> Path:
    """``value``, else ``$GRATA_BUNDLE_DIR``: a bundle folder holding ``configs/``.

    Raises:
        FileNotFoundError: neither is given, or it holds no ``configs/`` folder.
    """
    value = value if value is not None else os.environ.get("GRATA_BUNDLE_DIR")
    if not value:
        raise FileNotFoundError(
            "no bundle: pass --bundle_dir <bundle folder>, or set GRATA_BUNDLE_DIR (e.g. to ./bundle)."
        )
    path = Path(value).expanduser()
    if not (path / "configs").is_dir():
        raise FileNotFoundError(
            f"'{path}' is not a bundle folder (no configs/ in it): pass --bundle_dir or set GRATA_BUNDLE_DIR."
        )
    return path
