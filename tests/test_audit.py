"""The audit report saved next to each segmentation."""

from __future__ import annotations

import json

import pytest
import torch
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer

from grata_monai import GraTaInferer
from grata_monai.audit import SaveAuditReportd
from grata_monai.inferer import checksum


def test_report_written_with_the_documented_fields(unet, volume, tmp_path):
    inferer = GraTaInferer((16, 16, 16), steps=2, patches_per_step=2)
    with torch.no_grad():
        pred = inferer(volume, unet)[0]
    pred = MetaTensor(pred, meta={"filename_or_obj": "/data/case_07.nii.gz"})
    save = SaveAuditReportd("pred", inferer, str(tmp_path), "seg_report")
    save({"pred": pred})
    report = json.loads((tmp_path / "case_07_seg_report.json").read_text())
    assert report["input"] == "/data/case_07.nii.gz" and report["method"] == "grata"
    assert report["settings"]["steps"] == 2 and len(report["steps"]) == 2
    assert {"aux_loss", "pseudo_loss", "cosine", "lr"} <= set(report["steps"][0])
    assert report["guard"] is None and report["adapt_seconds"] > 0 and report["device"] == "cpu"
    assert report["source_sha256"] == checksum(unet)
    with pytest.raises(FileExistsError, match="already exists"):
        save({"pred": pred})
    SaveAuditReportd("pred", inferer, str(tmp_path), "seg_report", overwrite=True)({"pred": pred})


def test_no_report_for_a_plain_inferer(tmp_path):
    SaveAuditReportd("pred", SlidingWindowInferer(16), str(tmp_path))({"pred": torch.zeros(1, 4, 4, 4)})
    assert not list(tmp_path.iterdir())
