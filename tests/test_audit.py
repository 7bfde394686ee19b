"""The audit record: the source checksum, and reports that travel with the prediction."""

from __future__ import annotations

import torch
from monai.data import MetaTensor, decollate_batch

from grata_monai.audit import (
    REPORT_KEY,
    VolumeReport,
    attach_reports,
    checksum,
    reports_of,
    to_host,
)


def test_checksum_follows_in_place_changes(unet):
    first = checksum(unet)
    assert checksum(unet) == first
    with torch.no_grad():
        next(unet.parameters()).add_(1.0)
    assert checksum(unet) != first
    assert checksum(torch.jit.script(unet)) == checksum(unet)


def test_reports_survive_decollation_one_per_volume():
    batch = MetaTensor(
        torch.zeros(2, 3, 4, 4, 4), meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]}
    )
    batch.is_batch = True
    out = attach_reports(
        batch, [VolumeReport("grata", steps=[{"lr": 1.0}]), VolumeReport("grata", guard="worse")]
    )
    assert [r["guard"] for r in reports_of(out)] == [None, "worse"]
    items = decollate_batch({"pred": out})
    assert [reports_of(i["pred"]) for i in items] == [[reports_of(out)[0]], [reports_of(out)[1]]]
    assert items[1]["pred"].meta["filename_or_obj"] == "b.nii.gz"


def test_plain_tensors_carry_reports_and_others_have_none():
    out = attach_reports(torch.zeros(1, 2, 3, 3, 3), [VolumeReport("tent")])
    assert isinstance(out, MetaTensor) and reports_of(out)[0]["method"] == "tent"
    assert REPORT_KEY in out.meta
    assert reports_of(torch.zeros(1)) == [] and reports_of(MetaTensor(torch.zeros(1))) == []


def test_to_host_reads_each_value_flat_and_in_order():
    values = [torch.tensor(1.5), torch.tensor([[1, 2], [3, 4]]), torch.tensor(True), torch.zeros(0)]
    assert to_host(values) == [[1.5], [1.0, 2.0, 3.0, 4.0], [1.0], []]
    assert to_host([]) == []
