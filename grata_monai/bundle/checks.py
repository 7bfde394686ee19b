"""The input check of the inference path: one reason, the same in every host.

The bundle's own run (``grata_monai.bundle.intake``), MONAI Label and MONAI Deploy all run the
``preprocessing`` of ``configs/inference.json``; :class:`CheckInputd`, right after loading, refuses
what the model cannot segment with :class:`UnusableInput`, a ``ValueError`` whose message is one
line: a 2D image, more than three spatial dimensions, several channels, or a volume too thin for
the model's window. The intake of the bundle's run skips such inputs up front with the same reason
(and names unreadable files with :func:`unreadable`), so one bad input costs no other volume there.

Too thin: the model sees windows of ``roi_size`` voxels at the training spacing ``pixdim``
(96 x 96 x 48 at 2 x 2 x 4 mm: a 192 mm cube). A volume whose extent along a world axis is under
``min_fraction`` (1/4) of the window's there (48 mm) fills less than a quarter of every window
along it; the rest is padding, which the model never saw in training (it was trained on windows
cut from whole abdomens), and its segmentation is not to be trusted. A 4-slice 31 mm MR slab is
refused; a one-slice image is refused as 2D.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from grata_monai.bundle.console import RunStopped
from grata_monai.bundle.dicom import DicomSeriesError

__all__ = [
    "MIN_FRACTION",
    "UnusableInput",
    "unusable_shape",
    "too_thin",
    "unreadable",
    "CheckInputd",
]

MIN_FRACTION = (
    0.25  # the least share of the model's window, along each world axis, a volume must fill
)


class UnusableInput(RunStopped, ValueError):
    """An input the model cannot segment; the message is the one-line reason.

    A ``RunStopped``: where it ends a run (MONAI wraps it in a ``RuntimeError`` as it leaves
    ``Compose``), ``grata_monai.bundle.console.stop_reason`` finds it in the chain and the bundle's
    console prints it as one line.
    """


def unusable_shape(shape: Sequence[int]) -> str | None:
    """Why an image of channel-first ``shape`` cannot be segmented, or None when it can."""
    channels, spatial = shape[0], tuple(shape[1:])
    size = "x".join(str(s) for s in spatial)
    if len(spatial) < 3 or min(spatial) < 2:
        return f"a 2D image ({size}); the model segments 3D volumes"
    if len(spatial) > 3:
        return f"{len(spatial)} spatial dimensions ({size}); the model segments 3D volumes"
    if channels != 1:
        return f"{channels} channels (a 4D image); the model takes one 3D volume of one channel"
    return None


def too_thin(
    spatial_shape: Sequence[int],
    affine: np.ndarray | torch.Tensor,
    roi_size: Sequence[int],
    pixdim: Sequence[float],
    min_fraction: float = MIN_FRACTION,
) -> str | None:
    """Why a 3D volume is too thin for the model's window, or None when it is not.

    Args:
        spatial_shape: the volume's three spatial sizes (voxels).
        affine: its voxel-to-world affine (4x4); the extent along each world axis is the volume's
            bounding box there, in mm.
        roi_size: the model's window in voxels of ``pixdim``, in world (RAS) axis order.
        pixdim: the training spacing in mm.
        min_fraction: the least share of the window's extent the volume must fill on every axis.
    """
    linear = np.abs(np.asarray(affine, dtype=float)[:3, :3])
    extent = linear @ np.asarray(spatial_shape, dtype=float)
    window = np.asarray(roi_size, dtype=float) * np.asarray(pixdim, dtype=float)
    thin = [i for i in range(3) if extent[i] < min_fraction * window[i]]
    if not thin:
        return None
    i = thin[0]
    return (
        f"too thin: {extent[i]:.0f} mm along {'RAS'[i]} ({'x'.join(str(s) for s in spatial_shape)} voxels), "
        f"less than {min_fraction:g} of the model's {window[i]:.0f} mm window"
    )


def unreadable(error: Exception, path: str) -> str:
    """The one-line reason for an input that could not be read (``error`` from the reader)."""
    text = " ".join(str(error).split()).replace(f"'{path}': ", "")
    if isinstance(error, DicomSeriesError):
        return f"not one complete DICOM series: {text[:300]}"
    return (
        f"unreadable ({type(error).__name__}: {text[:300]})"
        if text
        else f"unreadable ({type(error).__name__})"
    )


class CheckInputd(MapTransform):
    """Refuse, with :class:`UnusableInput`, a channel-first image the model cannot segment.

    Put it right after ``LoadImaged`` and ``EnsureChannelFirstd``; the image passes through unchanged.

    Args:
        keys: the image key(s).
        roi_size: the model's window (voxels at ``pixdim``).
        pixdim: the training spacing in mm.
        min_fraction: the least share of the window a volume must fill along each axis.
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int],
        pixdim: Sequence[float],
        min_fraction: float = MIN_FRACTION,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if len(roi_size) != 3 or len(pixdim) != 3 or not 0 <= min_fraction <= 1:
            raise ValueError(
                f"CheckInputd needs a 3D roi_size and pixdim and 0 <= min_fraction <= 1, "
                f"got {roi_size}, {pixdim}, {min_fraction}"
            )
        self.roi_size, self.pixdim, self.min_fraction = (
            tuple(roi_size),
            tuple(pixdim),
            float(min_fraction),
        )

    def reason(self, image: np.ndarray | torch.Tensor) -> str | None:
        """Why the channel-first ``image`` (a ``MetaTensor`` for its affine) cannot be segmented, or None."""
        shape = tuple(image.shape)
        why = unusable_shape(shape)
        if why is None:
            affine = getattr(image, "affine", None)
            affine = np.eye(4) if affine is None else affine
            why = too_thin(shape[1:], affine, self.roi_size, self.pixdim, self.min_fraction)
        return why

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            why = self.reason(d[key])
            if why:
                raise UnusableInput(why)
        return d
