"""Checking a bundle run's inputs before the run: unreadable volumes are skipped and reported.

MONAI's evaluator stops at the first volume that fails to load, so one corrupt file would cost
every other volume of the run. :class:`Intake` reads each volume once up front (DICOM folders are
also checked to be one complete series), keeps the readable ones for the run and, after the run,
:meth:`Intake.finish` fails with one message naming every skipped input and why. Nothing is
written to the output folder for a skipped input.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from monai.transforms import LoadImage

from grata_monai.bundle.dicom import check_item

__all__ = ["Intake"]

logger = logging.getLogger(__name__)


class Intake:
    """The readable volumes of ``items`` (datalist dicts) and the inputs that failed.

    Args:
        items: datalist items, e.g. from ``grata_monai.bundle.io.list_volumes``.
        key: the image key.
        reader: the reader ``LoadImage`` should use (None: MONAI picks ITK, nibabel or pydicom).

    Raises:
        RuntimeError: when no volume at all can be read.
    """

    def __init__(self, items: Sequence[Mapping], key: str = "image", reader: str | None = None) -> None:
        load = LoadImage(reader=reader, image_only=True)
        self.items: list[Mapping] = []
        self.failed: list[tuple[str, str]] = []
        for item in items:
            try:
                check_item(item, key)
                load(item[key])
            except Exception as error:  # any reader error makes the input unusable
                self.failed.append((str(item[key]), f"{type(error).__name__}: {error}".strip()))
                logger.error("cannot read '%s' (skipped, nothing written for it): %s", *self.failed[-1])
            else:
                self.items.append(item)
        if not self.items:
            raise RuntimeError(f"none of the {len(self.failed)} input volume(s) could be read:\n{self._listing()}")

    def _listing(self) -> str:
        return "\n".join(f"  {path}: {reason[:500]}" for path, reason in self.failed)

    def finish(self) -> None:
        """Raise after the run when inputs were skipped, naming each one and why."""
        if self.failed:
            raise RuntimeError(
                f"{len(self.failed)} input volume(s) could not be read and were skipped "
                f"({len(self.items)} processed):\n{self._listing()}"
            )
