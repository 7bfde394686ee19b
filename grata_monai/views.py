"""The test-time views of GraTa: weak invertible views for the pseudo-label, strong intensity views.

Weak views are exact flips and axial rotations (:func:`weak_transform` maps a view and its
prediction back); the strong view is MONAI's random intensity transforms (:func:`strong_augmentation`),
applied to each image of a batch on its device by :class:`StrongAugmentation`.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.networks.layers import separable_filtering
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
    "StrongAugmentation",
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


class StrongAugmentation:
    """:func:`strong_augmentation` on each image of a batch (B, C, *spatial), on the batch's device
    without a host read.

    The random draws are its MONAI transforms' own (their ``randomize``, in the Compose's order);
    the arithmetic is theirs, with the drawn values as host numbers and each image's minimum,
    maximum and mean kept on the device. MONAI's transforms read the minimum and maximum, and build
    the blur kernels, on the host, and on a GPU each such read waits for all queued work. The
    output matches the Compose applied image by image (the tests assert it).
    """

    def __init__(self, prob: float = 0.5) -> None:
        self.transforms = strong_augmentation(prob)

    def set_random_state(self, state: np.random.RandomState) -> None:
        """Draw the augmentation's randomness from ``state``."""
        self.transforms.set_random_state(state=state)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._image(convert_to_tensor(i, track_meta=False)) for i in x]).to(
            x.dtype
        )

    def _image(self, img: torch.Tensor) -> torch.Tensor:
        brightness, contrast, gamma, noise, blur, _ = self.transforms.transforms
        img = img.float()
        brightness.randomize(img)
        if brightness._do_transform:
            img = img * (1 + brightness.factor)
        contrast.randomize(img)
        if contrast._do_transform:
            mean = img.mean()
            img = (img - mean) * (1 + contrast.factor) + mean
        gamma.randomize()
        if gamma._do_transform:  # on the inverted image, as invert_image=True
            inverted = -img
            low = inverted.amin()
            span = inverted.amax() - low
            img = -(((inverted - low) / (span + 1e-7)) ** gamma.gamma_value * span + low)
        img = noise(img)
        blur.randomize()
        if blur._do_transform:
            kernels = [_erf_kernel(s, img.device) for s in (blur.x, blur.y, blur.z)]
            img = separable_filtering(img[None], kernels[: img.ndim - 1])[0]
        low, high = img.amin(), img.amax()  # ScaleIntensity(0, 1); a constant image becomes 0
        return torch.where(high > low, (img - low) / (high - low), img * 0.0)


def _erf_kernel(sigma: float, device: torch.device) -> torch.Tensor:
    """MONAI's ``gaussian_1d(sigma, 4.0, "erf")``, built on ``device`` from a host ``sigma``."""
    sigma32 = np.float32(sigma)
    tail = int(max(float(sigma32) * 4.0, 0.5) + 0.5)
    t = float(np.float32(0.70710678) / abs(sigma32))
    x = torch.arange(-tail, tail + 1, dtype=torch.float, device=device)
    return (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0)
