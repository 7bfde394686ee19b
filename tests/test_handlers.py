"""The audit report saved next to each segmentation by the bundle's handler (unit test; the bundle
run in test_bundle.py writes it end to end)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from grata_monai import GraTaInferer
from grata_monai.audit import checksum
from grata_monai.bundle.handlers import AuditReportHandler


def _engine(inferer, unet, volume, names: list[str]):
    """The engine state of a SupervisedEvaluator once the inferer has returned (FORWARD_COMPLETED)."""
    batch = MetaTensor(
        torch.cat([volume, volume.flip(2)][: len(names)]), meta={"filename_or_obj": names}
    )
    batch.is_batch = True
    with torch.no_grad():
        pred = inferer(batch, unet)
    return SimpleNamespace(state=SimpleNamespace(output={"image": batch, "pred": pred}))


def test_one_report_per_volume_with_the_documented_fields(unet, volume, tmp_path):
    inferer = GraTaInferer((16, 16, 16), steps=2, patches_per_step=2)
    engine = _engine(inferer, unet, volume, ["/data/a.nii.gz", "/data/b"])
    handler = AuditReportHandler(str(tmp_path), "seg_report")
    handler(engine)
    a = json.loads((tmp_path / "a_seg_report.json").read_text())
    b = json.loads((tmp_path / "b_seg_report.json").read_text())
    assert a["input"] == "/data/a.nii.gz" and a["method"] == "grata" and b["input"] == "/data/b"
    assert a["settings"]["steps"] == 2 and len(a["steps"]) == 2
    assert {"aux_loss", "pseudo_loss", "cosine", "lr"} <= set(a["steps"][0])
    assert a["steps"] != b["steps"]  # each volume its own record
    assert a["guard"] is None and a["adapt_seconds"] > 0 and a["device"] == "cpu"
    assert a["output"] == str(tmp_path / "a_seg.nii.gz") and b["output"] == str(
        tmp_path / "b_seg.nii.gz"
    )
    assert a["written_utc"].endswith("+00:00") and set(a["versions"]) == {
        "grata-monai",
        "monai",
        "torch",
        "python",
    }
    assert (
        a["autocast"] == "off" and a["settings"]["amp"] is False
    )  # amp asked, but no autocast on a CPU
    assert a["source_sha256"] == checksum(unet)
    with pytest.raises(FileExistsError, match="already exists"):
        handler(engine)
    AuditReportHandler(str(tmp_path), "seg_report", overwrite=True)(engine)


def test_no_report_for_a_plain_inferer(unet, volume, tmp_path):
    engine = _engine(SlidingWindowInferer(16), unet, volume, ["/data/a.nii"])
    assert AuditReportHandler(str(tmp_path)).write(engine.state.output["pred"]) == []
    assert not list(tmp_path.iterdir())
