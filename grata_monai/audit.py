"""The audit trail: save each volume's adaptation report as JSON next to its segmentation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.utils import min_version, optional_import

from grata_monai.inferer import AdaptiveInferer

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["AuditReportHandler", "report_path"]


def report_path(source: str, output_dir: str, postfix: str) -> Path:
    """``<output_dir>/<input stem>_<postfix>.json`` for the input ``source`` (file or folder)."""
    name = Path(str(source).rstrip("/\\")).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return Path(output_dir) / f"{name}_{postfix}.json"


class AuditReportHandler:
    """An ignite handler for the bundle's evaluator: after each iteration, write the inferer's report
    of every volume of the batch to :func:`report_path` of its input.

    The report holds the method and settings, each step's aux/pseudo loss, cosine and lr, whether
    the divergence guard fired and why, adaptation and total seconds, the device and the source
    model's SHA-256 (fields: docs/reliability.md). An existing report is not replaced unless
    ``overwrite`` is set: the write is refused with a ``FileExistsError``. Being a handler of the
    bundle's own evaluator, it does not run inside MONAI Label or MONAI Deploy, which ignore handlers.

    Args:
        inferer: the bundle's inferer (a :class:`~grata_monai.inferer.AdaptiveInferer`; others write nothing).
        output_dir: where the segmentations are written.
        postfix: file name postfix, e.g. ``"seg_report"``.
        overwrite: replace an existing report.
        key: the output key whose metadata names the input.
    """

    def __init__(self, inferer: Any, output_dir: str, postfix: str = "report", overwrite: bool = False, key: str = "pred"):
        self.inferer, self.output_dir, self.postfix, self.overwrite, self.key = inferer, output_dir, postfix, overwrite, key

    def attach(self, engine: Any) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def write(self, outputs: list[dict]) -> list[Path]:
        """Write one report per output item (decollated batch); return the paths written."""
        if not isinstance(self.inferer, AdaptiveInferer):
            return []
        paths = []
        for item, report in zip(outputs, self.inferer.last_reports):
            source = getattr(item.get(self.key), "meta", {}).get("filename_or_obj", "volume")
            path = report_path(source, self.output_dir, self.postfix)
            if path.exists() and not self.overwrite:
                raise FileExistsError(f"audit report '{path}' already exists; pass --overwrite true to replace it.")
            os.makedirs(path.parent, exist_ok=True)
            path.write_text(json.dumps({"input": str(source), **report.to_dict()}, indent=1, default=str))
            paths.append(path)
        return paths

    def __call__(self, engine: Any) -> None:
        output = engine.state.output
        self.write(output if isinstance(output, list) else [output])
