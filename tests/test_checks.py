"""The inference path's input check: 2D, multi-channel and too-thin volumes are refused with one line,
the same reason the bundle run's intake gives; usable volumes pass through unchanged."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from grata_monai.bundle.checks import CheckInputd, UnusableInput, too_thin, unusable_shape
from grata_monai.bundle.console import stop_reason
from grata_monai.bundle.intake import Intake

ROI, PIXDIM = (96, 96, 48), (2.0, 2.0, 4.0)  # the bundle's window: a 192 mm cube


def _nifti(path, shape, zooms=(1.0, 1.0, 1.0)):
    nib.save(
        nib.Nifti1Image(np.random.rand(*shape).astype(np.float32), np.diag([*zooms, 1.0])),
        str(path),
    )
    return str(path)


@pytest.mark.parametrize(
    "shape,ok",
    [
        ((1, 8, 8, 4), True),
        ((1, 8, 8), False),
        ((2, 8, 8, 4), False),
        ((1, 8, 8, 1), False),
        ((1, 8, 8, 4, 2), False),
    ],
)
def test_unusable_shape(shape, ok):
    assert (unusable_shape(shape) is None) == ok


def test_thin_slab_is_refused_and_a_full_volume_is_not():
    slab = too_thin((256, 256, 4), np.diag([1.5, 1.5, 7.75, 1.0]), ROI, PIXDIM)  # a 31 mm MR slab
    assert (
        slab
        == "too thin: 31 mm along S (256x256x4 voxels), less than 0.25 of the model's 192 mm window"
    )
    assert too_thin((256, 256, 36), np.diag([1.5, 1.5, 7.75, 1.0]), ROI, PIXDIM) is None  # 279 mm
    assert (
        too_thin((256, 256, 7), np.diag([1.5, 1.5, 7.0, 1.0]), ROI, PIXDIM) is None
    )  # 49 mm: just enough
    # A permuted affine: the thin axis is judged in world space (here R), not by voxel order.
    permuted = np.array([[0, 0, 5.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])
    assert too_thin((200, 200, 4), permuted, ROI, PIXDIM).startswith("too thin: 20 mm along R")


def test_transform_passes_usable_volumes_unchanged_and_refuses_others():
    check = CheckInputd("image", ROI, PIXDIM)
    good = MetaTensor(
        torch.rand(1, 64, 64, 40), affine=torch.diag(torch.tensor([3.0, 3.0, 5.0, 1.0]))
    )
    out = check({"image": good, "other": 1})
    assert out["image"] is good and out["other"] == 1
    with pytest.raises(UnusableInput, match="^a 2D image \\(64x64x1\\)"):
        check({"image": MetaTensor(torch.rand(1, 64, 64, 1))})
    with pytest.raises(UnusableInput, match="^too thin: 12 mm along S"):
        check(
            {
                "image": MetaTensor(
                    torch.rand(1, 64, 64, 3), affine=torch.diag(torch.tensor([3.0, 3.0, 4.0, 1.0]))
                )
            }
        )
    with pytest.raises(ValueError, match="3D roi_size"):
        CheckInputd("image", (96, 96), PIXDIM)


def test_in_a_compose_the_reason_is_found_in_the_chain(tmp_path):
    """MONAI wraps a transform's error in a RuntimeError; the one-line reason is still found, and it is
    the reason the bundle run's intake gives for the same file."""
    path = _nifti(tmp_path / "slab.nii.gz", (128, 128, 4), (1.5, 1.5, 7.75))
    check = CheckInputd("image", ROI, PIXDIM)
    chain = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), check])
    with pytest.raises(RuntimeError) as error:
        chain({"image": path})
    reason = stop_reason(error.value)
    assert isinstance(reason, UnusableInput) and isinstance(reason, ValueError)
    intake_reason = dict(
        Intake(
            [{"image": path}, {"image": _nifti(tmp_path / "ok.nii.gz", (64, 64, 20), (3, 3, 5))}],
            check=check,
        ).failed
    )[path]
    assert str(reason) == intake_reason
    assert "\n" not in intake_reason and intake_reason.startswith("too thin: 31 mm along S")
