"""The audit trail of a bundle run: each volume's adaptation report saved as JSON beside its segmentation."""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import monai
import torch
from monai.engines.utils import IterationEvents

import grata_monai
from grata_monai.audit import reports_of
from grata_monai.bundle.io import output_path

__all__ = ["AuditReportHandler", "versions"]


def versions() -> dict[str, str]:
    """The versions of the software that produced a report."""
    return {
        "grata-monai": grata_monai.__version__,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


class AuditReportHandler:
    """An ignite handler for the bundle's evaluator: when the inferer has returned a batch, write the
    report it attached to each volume's prediction to ``<output_dir>/<input name>_<postfix>.json``,
    with the input, the segmentation written for it, the UTC time and the software versions.

    It reads the evaluator's raw prediction (``IterationEvents.FORWARD_COMPLETED``), before the
    postprocessing, whose inversion rebuilds the prediction's metadata from the input's. The
    report holds the method and settings, each step's aux/pseudo loss, cosine and lr, whether
    the divergence guard fired and why, adaptation and total seconds, the device and the source
    model's SHA-256 (fields: docs/reliability.md). A prediction without a report (a plain inferer)
    writes nothing. An existing report is not replaced unless ``overwrite`` is set: the write is
    refused with a ``FileExistsError``. Being a handler of the bundle's own evaluator, it does not
    run inside MONAI Label or MONAI Deploy, which ignore handlers.

    Args:
        output_dir: where the segmentations are written.
        postfix: file name postfix, e.g. ``"seg_report"``.
        overwrite: replace an existing report.
        key: the output key of the prediction (its metadata names the inputs and holds the reports).
        separate_folder: one folder per input, as ``SaveImaged(separate_folder=True)`` (its default).
        seg_postfix: the segmentations' postfix (``SaveImaged``'s ``output_postfix``), to name them.
    """

    def __init__(
        self,
        output_dir: str,
        postfix: str = "report",
        overwrite: bool = False,
        key: str = "pred",
        separate_folder: bool = False,
        seg_postfix: str = "seg",
    ) -> None:
        self.output_dir, self.postfix, self.overwrite, self.key = (
            output_dir,
            postfix,
            overwrite,
            key,
        )
        self.separate_folder, self.seg_postfix = separate_folder, seg_postfix
        self.versions = versions()

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(IterationEvents.FORWARD_COMPLETED, self)

    def write(self, pred: Any) -> list[Path]:
        """Write the report of each volume of the batch ``pred``; return the paths written."""
        reports = reports_of(pred)
        sources = getattr(pred, "meta", {}).get("filename_or_obj", [])
        sources = [sources] if isinstance(sources, str) else list(sources)
        paths = []
        for i, report in enumerate(reports):
            source = sources[i] if i < len(sources) else f"volume_{i}"
            path = Path(
                output_path(source, self.output_dir, self.postfix, ".json", self.separate_folder)
            )
            if path.exists() and not self.overwrite:
                raise FileExistsError(
                    f"audit report '{path}' already exists; pass --overwrite true to replace it."
                )
            os.makedirs(path.parent, exist_ok=True)
            record = {
                "input": str(source),
                "output": output_path(
                    source, self.output_dir, self.seg_postfix, separate_folder=self.separate_folder
                ),
                "written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "versions": self.versions,
                **report,
            }
            path.write_text(json.dumps(record, indent=1))
            paths.append(path)
        return paths

    def __call__(self, engine: Any) -> None:
        self.write(engine.state.output[self.key])
