"""The audit trail: save each volume's adaptation report as JSON next to its segmentation."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai.transforms import MapTransform

from grata_monai.inferer import AdaptiveInferer

__all__ = ["SaveAuditReportd"]


class SaveAuditReportd(MapTransform):
    """Write ``inferer.last_report`` (the volume just inferred by this thread) to
    ``<output_dir>/<input stem>_<postfix>.json``; a bundle puts it in ``postprocessing``.

    The report holds the method and settings, each step's aux/pseudo loss, cosine and lr, whether
    the divergence guard fired and why, adaptation and total seconds, the device and the source
    model's SHA-256 (fields: docs/reliability.md). An existing report is not replaced unless
    ``overwrite`` is set: the write is refused with a ``FileExistsError``.

    Args:
        keys: the prediction key, whose metadata names the input file.
        inferer: the bundle's inferer (a :class:`~grata_monai.inferer.AdaptiveInferer`).
        output_dir: where the segmentations are written.
        postfix: file name postfix, e.g. ``"seg_report"``.
        overwrite: replace an existing report.
    """

    def __init__(
        self, keys: Any, inferer: Any, output_dir: str, postfix: str = "report", overwrite: bool = False
    ) -> None:
        super().__init__(keys)
        self.inferer, self.output_dir, self.postfix, self.overwrite = inferer, output_dir, postfix, overwrite

    def path_for(self, source: str) -> Path:
        name = Path(str(source).rstrip("/\\")).name
        for suffix in (".nii.gz", ".nii"):
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        return Path(self.output_dir) / f"{name}_{self.postfix}.json"

    def __call__(self, data: dict) -> dict:
        if not isinstance(self.inferer, AdaptiveInferer) or self.inferer.last_report is None:
            return data
        for key in self.key_iterator(data):
            source = getattr(data[key], "meta", {}).get("filename_or_obj", "volume")
            path = self.path_for(source)
            if path.exists() and not self.overwrite:
                raise FileExistsError(f"audit report '{path}' already exists; pass --overwrite true to replace it.")
            os.makedirs(path.parent, exist_ok=True)
            report = {"input": str(source), **self.inferer.last_report.to_dict()}
            path.write_text(json.dumps(report, indent=1, default=str))
        return data
