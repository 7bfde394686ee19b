"""Checking a bundle run's inputs before the run, and its closing summary.

MONAI's evaluator stops at the first volume that fails, so one bad file would cost every other
volume of the run. :class:`Intake` reads each volume once up front and keeps those the network can
take: for DICOM folders one complete series, then what the inference path's own input check
(:class:`~grata_monai.bundle.checks.CheckInputd`) accepts, with the same reason when it refuses.
Each other input is skipped and named in one line with its reason; nothing is written for it.
After the run, :meth:`Intake.finish` prints the summary (volumes written, inputs
skipped and why, where the outputs are); when anything was skipped it raises the summary as
:class:`~grata_monai.bundle.console.InputsSkipped`, which a bundle run prints as its last lines
with exit status 1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence

from monai.transforms import LoadImage

from grata_monai.bundle.checks import CheckInputd, unreadable, unusable_shape
from grata_monai.bundle.console import InputsSkipped
from grata_monai.bundle.dicom import check_item
from grata_monai.bundle.io import output_path

__all__ = ["Intake", "unusable_shape"]

logger = logging.getLogger(__name__)


class Intake:
    """The usable volumes of ``items`` (datalist dicts), and the inputs skipped with their reasons.

    Args:
        items: datalist items, e.g. from ``grata_monai.bundle.io.list_volumes``.
        key: the image key.
        reader: the reader ``LoadImage`` should use (None: MONAI picks ITK, nibabel or pydicom).
        skipped: inputs already known to be unusable, as ``(path, reason)``, e.g. from
            ``grata_monai.bundle.io.list_ignored``.
        check: the inference path's input check (the config's ``input_check``); None checks the
            shape only (``unusable_shape``).

    Raises:
        InputsSkipped: (a ``RuntimeError``) when no volume at all can be used.
    """

    def __init__(
        self,
        items: Sequence[Mapping],
        key: str = "image",
        reader: str | None = None,
        skipped: Iterable[tuple[str, str]] = (),
        check: CheckInputd | None = None,
    ) -> None:
        self.key = key
        self.items: list[Mapping] = []
        self.failed: list[tuple[str, str]] = []
        for path, reason in skipped:
            self._skip(str(path), reason)
        load = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        for item in items:
            try:
                check_item(item, key)
                image = load(item[key])
                reason = check.reason(image) if check is not None else unusable_shape(image.shape)
            except Exception as error:  # any reader error makes the input unusable
                reason = unreadable(error, str(item[key]))
            if reason:
                self._skip(str(item[key]), reason)
            else:
                self.items.append(item)
        if not self.items:
            raise InputsSkipped(
                f"nothing to segment: none of the {len(self.failed)} input(s) can be used:\n{self._listing()}"
            )
        logger.info("%d volume(s) to segment", len(self.items))

    def _skip(self, path: str, reason: str) -> None:
        self.failed.append((path, reason))
        logger.warning("skipped %s: %s", path, reason)

    def _listing(self) -> str:
        return "\n".join(f"  skipped {path}: {reason}" for path, reason in sorted(self.failed))

    def summary(self, output_dir: str, postfix: str = "seg", adapted: bool = True) -> str:
        """The run's closing lines: volumes written, inputs skipped with their reasons, the outputs (and,
        when not ``adapted``, that the run was plain: no adaptation, no audit reports)."""
        written = [
            i for i in self.items if os.path.exists(output_path(i[self.key], output_dir, postfix))
        ]
        lines = [
            f"done: {len(written)} of {len(self.items) + len(self.failed)} input(s) segmented, "
            f"{len(self.failed)} skipped" + (":" if self.failed else "")
        ]
        if self.failed:
            lines.append(self._listing())
        outputs = f"outputs in {os.path.abspath(output_dir)} (<name>_{postfix}.nii.gz"
        if adapted:
            lines.append(f"{outputs}, <name>_{postfix}_report.json)")
        else:
            lines.append(
                f"{outputs}; plain run, --adapt false: the source model, no adaptation, no audit report)"
            )
        return "\n".join(lines)

    def finish(self, output_dir: str, postfix: str = "seg", adapted: bool = True) -> None:
        """Print the summary, or raise it when inputs were skipped so that the exit status says so.

        Args:
            output_dir: the run's ``output_dir``.
            postfix: ``SaveImaged``'s ``output_postfix``.
            adapted: False for a plain run (``--adapt false``), which the summary then says.

        Raises:
            InputsSkipped: some inputs were skipped; the message is the summary.
        """
        if self.failed:
            raise InputsSkipped(self.summary(output_dir, postfix, adapted))
        print(self.summary(output_dir, postfix, adapted), flush=True)
