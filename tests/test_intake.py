"""Unusable inputs (unreadable, 2D, several channels, broken series) are skipped, named, and cost
no other volume; the summary counts and names them."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pytest

from grata_monai.bundle.console import InputsSkipped
from grata_monai.bundle.intake import Intake
from tests.conftest import DATA_DIR


def _nifti(path, shape=(8, 8, 4)):
    nib.save(nib.Nifti1Image(np.random.rand(*shape).astype(np.float32), np.eye(4)), str(path))
    return str(path)


def test_corrupt_and_truncated_files_are_skipped_and_named(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz", (32, 32, 16))
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(b"not an image at all" * 10)
    truncated = tmp_path / "truncated.nii.gz"
    data = (tmp_path / "good.nii.gz").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    intake = Intake([{"image": good}, {"image": str(corrupt)}, {"image": str(truncated)}])
    assert [i["image"] for i in intake.items] == [good]
    assert [p for p, _ in intake.failed] == [str(corrupt), str(truncated)]
    with pytest.raises(InputsSkipped, match="0 of 3 input") as error:
        intake.finish(str(tmp_path / "out"))
    lines = str(error.value).splitlines()
    assert lines[0] == "done: 0 of 3 input(s) segmented, 2 skipped:"
    assert lines[1].startswith(f"  skipped {corrupt}: unreadable (")
    assert lines[2].startswith(f"  skipped {truncated}: unreadable (")
    assert lines[3].startswith(f"outputs in {tmp_path / 'out'}")


def test_2d_and_multichannel_images_are_skipped_with_the_reason(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz", (16, 16, 8))
    flat = _nifti(tmp_path / "flat.nii.gz", (16, 16))
    slab = _nifti(tmp_path / "slab.nii.gz", (16, 16, 1))
    rgb = _nifti(tmp_path / "rgb.nii.gz", (16, 16, 8, 3))
    intake = Intake(
        [{"image": p} for p in (good, flat, slab, rgb)], skipped=[("notes.txt", "not a NIfTI file")]
    )
    assert [i["image"] for i in intake.items] == [good]
    reasons = dict(intake.failed)
    assert reasons[flat].startswith("a 2D image (16x16)") and reasons[slab].startswith(
        "a 2D image (16x16x1)"
    )
    assert reasons[rgb].startswith("3 channels") and reasons["notes.txt"] == "not a NIfTI file"


def test_all_good_finishes_with_the_summary(tmp_path, capsys):
    intake = Intake([{"image": _nifti(tmp_path / "a.nii")}])
    assert len(intake.items) == 1
    (tmp_path / "a_seg.nii.gz").write_bytes(b"")
    intake.finish(str(tmp_path))
    assert capsys.readouterr().out.splitlines() == [
        "done: 1 of 1 input(s) segmented, 0 skipped",
        f"outputs in {tmp_path} (<name>_seg.nii.gz, <name>_seg_report.json)",
    ]
    intake.finish(str(tmp_path), adapted=False)
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"outputs in {tmp_path} (<name>_seg.nii.gz; plain run, --adapt false: the source model, no adaptation, "
        "no audit report)"
    )


def test_nothing_readable_is_an_error(tmp_path):
    bad = tmp_path / "x.nii.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"junk")
    with pytest.raises(
        RuntimeError, match="none of the 1 input"
    ):  # InputsSkipped is a RuntimeError
        Intake([{"image": str(bad)}])


def test_dicom_series_with_a_missing_slice_is_skipped(tmp_path):
    series = DATA_DIR / "dicom-samples" / "totalseg_ct_jpeg2000"
    if not series.is_dir():
        pytest.skip(f"DICOM samples not found at {series}")
    gap = tmp_path / "gap"
    gap.mkdir()
    files = sorted(series.iterdir())
    for f in files[:5] + files[6:]:
        shutil.copy(f, gap / f.name)
    intake = Intake([{"image": str(series)}, {"image": str(gap)}])
    assert [i["image"] for i in intake.items] == [str(series)]
    assert intake.failed[0][0] == str(gap) and intake.failed[0][1].startswith(
        "not one complete DICOM series"
    )
    assert "missing slices" in intake.failed[0][1] and str(gap) not in intake.failed[0][1]
