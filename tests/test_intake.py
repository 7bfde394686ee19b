"""Unreadable inputs are skipped, named, and cost no other volume."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import nibabel as nib
import pytest

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
    with pytest.raises(RuntimeError, match="2 input volume") as error:
        intake.finish()
    assert "corrupt.nii.gz" in str(error.value) and "truncated.nii.gz" in str(error.value)


def test_all_good_finishes_quietly(tmp_path):
    intake = Intake([{"image": _nifti(tmp_path / "a.nii")}])
    assert len(intake.items) == 1
    intake.finish()


def test_nothing_readable_is_an_error(tmp_path):
    bad = tmp_path / "x.nii.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"junk")
    with pytest.raises(RuntimeError, match="none of the 1 input"):
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
    assert intake.failed[0][0] == str(gap) and "missing slices" in intake.failed[0][1]
