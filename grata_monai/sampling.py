"""Where the inferers look at a volume: patches from the body for adaptation, and windows for the
normalization statistics."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from monai.data.utils import dense_patch_slices
from monai.transforms import RandCropByPosNegLabel, SpatialCrop, SpatialPad
from monai.utils import convert_to_tensor

__all__ = ["body_patches", "windows"]


def body_patches(
    volume: torch.Tensor,
    roi_size: Sequence[int],
    num_samples: int,
    rng: np.random.RandomState,
    device: torch.device,
    foreground_threshold: float = 0.1,
) -> Callable[[], torch.Tensor]:
    """A function drawing ``num_samples`` roi-sized patches of ``volume`` (C, *spatial) as one batch.

    Patch centres are voxels of the body: above ``foreground_threshold`` of the first channel's
    intensity range (anywhere when nothing is). The volume is padded to ``roi_size`` first.

    Args:
        volume: the volume, channel first.
        roi_size: the patch size.
        num_samples: patches per draw.
        rng: the random state of the draws (shared with the method's augmentations).
        device: where the patches are.
        foreground_threshold: the body threshold, as a fraction of the intensity range.
    """
    volume = convert_to_tensor(SpatialPad(roi_size)(volume.to(device)), track_meta=False)
    low, high = volume[0].min(), volume[0].max()
    mask = (volume[0] > low + foreground_threshold * (high - low))[None]
    # The body's voxel indices (as map_binary_to_indices lists them), read to the host once: every
    # draw then picks its centres there, without waiting for the device.
    body = mask.flatten().nonzero()[:, 0].int().cpu()
    if len(body) == 0:
        body = torch.arange(mask.numel(), dtype=torch.int32)
    crop = RandCropByPosNegLabel(roi_size, pos=1, neg=0, num_samples=num_samples)
    crop.set_random_state(state=rng)

    def sample() -> torch.Tensor:
        # pos=1: centres come from the body only, so the background list is never drawn from
        crop.randomize(label=mask, fg_indices=body, bg_indices=body)
        # the crops as plain slices (the transform's own), without MetaTensor bookkeeping
        boxes = [SpatialCrop.compute_slices(roi_center=c, roi_size=roi_size) for c in crop.centers]
        return torch.stack([volume[(slice(None), *box)] for box in boxes])

    return sample


def windows(
    volume: torch.Tensor, roi_size: Sequence[int], device: torch.device, limit: int | None = None
) -> Iterator[torch.Tensor]:
    """Non-overlapping roi-sized windows covering ``volume`` (C, *spatial), one batch of one at a time
    (for settling the normalization statistics of the whole volume).

    Args:
        volume: the volume, channel first.
        roi_size: the window size.
        device: where the windows are.
        limit: only the ``limit`` windows of the highest mean intensity (the most body), in tiling order.
    """
    volume = convert_to_tensor(SpatialPad(roi_size)(volume), track_meta=False)
    slices = [(slice(None), *s) for s in dense_patch_slices(volume.shape[1:], roi_size, roi_size)]
    if limit is not None and limit < len(slices):
        means = torch.stack([volume[s].float().mean() for s in slices])
        slices = [slices[i] for i in sorted(means.topk(limit).indices.tolist())]
    for s in slices:
        yield volume[s][None].to(device)
