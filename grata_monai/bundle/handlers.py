"""The audit trail of a bundle run: each volume's adaptation report saved as JSON beside its segmentation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.utils import min_version, optional_import

from grata_monai.audit import reports_of
from grata_monai.bundle.io import output_path

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["AuditReportHandler"]


class AuditReportHandler:
    """An ignite handler for the bundle's evaluator: after each iteration, write the report that the
    inferer attached to each volume's prediction to ``<output_dir>/<input name>_<postfix>.json``.

    The report holds the method and settings, each step's aux/pseudo loss, cosine and lr, whether
    the divergence guard fired and why, adaptation and total seconds, the device and the source
    model's SHA-256 (fields: docs/reliability.md). A prediction without a report (a plain inferer)
    writes nothing. An existing report is not replaced unless ``overwrite`` is set: the write is
    refused with a ``FileExistsError``. Being a handler of the bundle's own evaluator, it does not
    run inside MONAI Label or MONAI Deploy, which ignore handlers.

    Args:
        output_dir: where the segmentations are written.
        postfix: file name postfix, e.g. ``"seg_report"``.
        overwrite: replace an existing report.
        key: the output key of the prediction (its metadata names the input and holds the report).
    """

    def __init__(self, output_dir: str, postfix: str = "report", overwrite: bool = False, key: str = "pred") -> None:
        self.output_dir, self.postfix, self.overwrite, self.key = output_dir, postfix, overwrite, key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def write(self, outputs: list[dict]) -> list[Path]:
        """Write the report of each output item (a decollated batch); return the paths written."""
        paths = []
        for item in outputs:
            pred = item.get(self.key)
            for report in reports_of(pred):
                source = pred.meta.get("filename_or_obj", "volume")
                path = Path(output_path(source, self.output_dir, self.postfix, ".json"))
                if path.exists() and not self.overwrite:
                    raise FileExistsError(f"audit report '{path}' already exists; pass --overwrite true to replace it.")
                os.makedirs(path.parent, exist_ok=True)
                path.write_text(json.dumps({"input": str(source), **report}, indent=1))
                paths.append(path)
        return paths

    def __call__(self, engine: Any) -> None:
        output = engine.state.output
        self.write(output if isinstance(output, list) else [output])
