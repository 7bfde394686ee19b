"""The audit report saved next to each segmentation."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from grata_monai import GraTaInferer
from grata_monai.audit import AuditReportHandler
from grata_monai.inferer import checksum


def _output(name: str, pred: torch.Tensor) -> dict:
    return {"pred": MetaTensor(pred, meta={"filename_or_obj": f"/data/{name}"})}


def test_one_report_per_volume_with_the_documented_fields(unet, volume, tmp_path):
    inferer = GraTaInferer((16, 16, 16), steps=2, patches_per_step=2)
    with torch.no_grad():
        preds = inferer(torch.cat([volume, volume.flip(2)]), unet)
    engine = SimpleNamespace(state=SimpleNamespace(output=[_output("a.nii.gz", preds[0]), _output("b", preds[1])]))
    handler = AuditReportHandler(inferer, str(tmp_path), "seg_report")
    handler(engine)
    a = json.loads((tmp_path / "a_seg_report.json").read_text())
    b = json.loads((tmp_path / "b_seg_report.json").read_text())
    assert a["input"] == "/data/a.nii.gz" and a["method"] == "grata" and b["input"] == "/data/b"
    assert a["settings"]["steps"] == 2 and len(a["steps"]) == 2
    assert {"aux_loss", "pseudo_loss", "cosine", "lr"} <= set(a["steps"][0])
    assert a["steps"] != b["steps"]  # each volume its own record
    assert a["guard"] is None and a["adapt_seconds"] > 0 and a["device"] == "cpu"
    assert a["source_sha256"] == checksum(unet)
    with pytest.raises(FileExistsError, match="already exists"):
        handler(engine)
    AuditReportHandler(inferer, str(tmp_path), "seg_report", overwrite=True)(engine)


def test_no_report_for_a_plain_inferer(tmp_path):
    handler = AuditReportHandler(SlidingWindowInferer(16), str(tmp_path))
    assert handler.write([_output("a.nii", torch.zeros(1, 4, 4, 4))]) == []
    assert not list(tmp_path.iterdir())


def test_checksum_follows_in_place_changes(unet):
    first = checksum(unet)
    assert checksum(unet) == first
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)
    assert checksum(unet) != first
    assert checksum(torch.jit.script(unet)) == checksum(unet)
