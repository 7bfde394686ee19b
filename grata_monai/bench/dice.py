"""Dice of a written segmentation against a label map on the same grid (``grata-monai dice``).

The bundle writes each segmentation in its input's space, so a label map of the input compares
voxel by voxel; MONAI's ``DiceMetric`` gives one value per organ (background excluded).
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from monai.transforms import LoadImage

from grata_monai import defaults
from grata_monai.bundle.console import quiet

__all__ = ["file_dice", "print_dice"]


def file_dice(pred: str, label: str, organs: tuple[str, ...] = defaults.ORGANS) -> dict[str, float]:
    """Dice per organ of the label map ``pred`` against ``label`` (NIfTI or anything MONAI reads).

    Args:
        pred: the segmentation (labels 0..len(organs)).
        label: the reference on the same grid.
        organs: the names of labels 1, 2, ...

    Returns:
        ``{organ: dice, ..., "mean": mean over organs}``; NaN for an organ absent from both.

    Raises:
        ValueError: the two images are not on the same grid.
    """
    load = LoadImage(image_only=True, ensure_channel_first=True)
    p, t = load(pred), load(label)
    if p.shape != t.shape or not np.allclose(p.affine.numpy(), t.affine.numpy(), atol=1e-3):
        raise ValueError(
            f"'{pred}' {tuple(p.shape[1:])} and '{label}' {tuple(t.shape[1:])} are not on one grid: "
            "compare a segmentation with the label map of its own input."
        )
    n = len(organs) + 1
    p, t = (one_hot(torch.as_tensor(x).round().long()[None], n) for x in (p, t))
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(p, t)[
        0
    ].tolist()
    result = dict(zip(organs, dice))
    return {**result, "mean": float(np.nanmean(dice))}


def print_dice(pred: str, label: str) -> None:
    """Print the Dice per organ and their mean, one line."""
    quiet()
    result = file_dice(pred, label)
    print("Dice: " + ", ".join(f"{k} {v:.3f}" for k, v in result.items()))
