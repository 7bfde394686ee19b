"""``grata-monai dice``: Dice per organ of a written segmentation against its label map."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest

from grata_monai.bench.dice import file_dice, print_dice


def _save(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), str(path))
    return str(path)


def test_dice_per_organ_by_hand(tmp_path, capsys):
    label = np.zeros((8, 8, 4))
    label[:4, :4] = 1  # liver: 64 voxels
    label[4:, 4:, :2] = 4  # spleen: 32 voxels
    pred = label.copy()
    pred[:2, :4] = 0  # liver: 32 of 64 found
    pred[4:, 4:, 2:] = 4  # spleen: 32 false positives
    result = file_dice(_save(tmp_path / "p.nii.gz", pred), _save(tmp_path / "l.nii.gz", label))
    assert result["liver"] == pytest.approx(2 * 32 / (32 + 64))
    assert result["spleen"] == pytest.approx(2 * 32 / (64 + 32))
    assert math.isnan(result["right kidney"]) and math.isnan(
        result["left kidney"]
    )  # absent from both
    assert result["mean"] == pytest.approx(2 / 3)
    print_dice(str(tmp_path / "p.nii.gz"), str(tmp_path / "l.nii.gz"))
    assert capsys.readouterr().out.startswith("Dice: liver 0.667, right kidney nan")


def test_dice_refuses_two_grids(tmp_path):
    a = _save(tmp_path / "a.nii.gz", np.zeros((8, 8, 4)))
    b = _save(tmp_path / "b.nii.gz", np.zeros((8, 8, 5)))
    with pytest.raises(ValueError, match="not on one grid"):
        file_dice(a, b)
