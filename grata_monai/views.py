"""The test-time views of GraTa: weak invertible views for the pseudo-label, strong intensity views.

Weak views are exact flips and axial rotations (:func:`weak_transform` maps a view and its
prediction back); the strong view is MONAI's random intensity transforms (:func:`strong_augmentation`),
applied to each image of a batch by :func:`augment_each`.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandGaussianSmooth,
    RandomizableTransform,
    RandScaleIntensity,
    RandScaleIntensityFixedMean,
    ScaleIntensity,
)
from monai.utils import convert_to_tensor

__all__ = [
    "WEAK_VIEWS",
    "weak_transform",
    "DeviceGaussianNoise",
    "augment_each",
    "strong_augmentation",
]

# Weak, exactly invertible transforms for the pseudo-label: flips along a spatial axis and
# rotations by k*90 degrees in the plane of the first two spatial axes (axial for RAS volumes).
WEAK_VIEWS = ("flip0", "flip1", "flip2", "rot90", "rot180", "rot270")


def weak_transform(x: torch.Tensor, name: str, inverse: bool = False) -> torch.Tensor:
    """Apply the weak transform ``name`` (or its exact inverse) to a (B, C, *spatial) tensor."""
    if name.startswith("flip"):
        return torch.flip(x, dims=(2 + int(name[4:]),))
    if name.startswith("rot"):
        k = int(name[3:]) // 90
        return torch.rot90(x, k=-k if inverse else k, dims=(2, 3))
    raise ValueError(f"Unknown weak transform {name!r}; choose from {WEAK_VIEWS}.")


class DeviceGaussianNoise(RandomizableTransform):
    """Additive Gaussian noise with std ~ U(0, ``std``), drawn on the image's device.

    Like MONAI's ``RandGaussianNoise`` (same parameters, seeded by ``set_random_state``) but without
    generating the noise with NumPy on the host, which dominates a GPU adaptation step.
    """

    def __init__(self, prob: float = 0.5, std: float = 0.1) -> None:
        RandomizableTransform.__init__(self, prob)
        self.std = std

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        self.randomize(None)
        if not self._do_transform:
            return img
        img = convert_to_tensor(img, track_meta=False)
        std = self.R.uniform(0, self.std)
        generator = torch.Generator(device=img.device).manual_seed(int(self.R.randint(2**31)))
        noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype)
        return img + std * noise


def augment_each(augment: Compose, x: torch.Tensor) -> torch.Tensor:
    """Apply ``augment`` to each image of the batch ``x`` independently (plain tensors out)."""
    return torch.stack([convert_to_tensor(augment(img), track_meta=False) for img in x]).to(x.dtype)


def strong_augmentation(prob: float = 0.5) -> Compose:
    """The strong intensity augmentation of GraTa, built from MONAI transforms.

    Brightness x U(0.5, 1.5), contrast x U(0.5, 1.5) about the mean, gamma U(0.5, 2) applied to the
    inverted image, Gaussian noise (std up to sqrt(0.05)), Gaussian blur sigma U(0.5, 1.5), each
    with probability ``prob``, then rescaling to [0, 1]. Works per image (C, *spatial) on any device.
    """
    sigma = (0.5, 1.5)
    return Compose(
        [
            RandScaleIntensity(factors=0.5, prob=prob),
            RandScaleIntensityFixedMean(factors=0.5, prob=prob),
            RandAdjustContrast(gamma=(0.5, 2.0), invert_image=True, retain_stats=False, prob=prob),
            DeviceGaussianNoise(prob=prob, std=float(np.sqrt(0.05))),
            RandGaussianSmooth(sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=prob),
            ScaleIntensity(minv=0.0, maxv=1.0),
        ]
    )
