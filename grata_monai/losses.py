"""Self-supervised losses of GraTa: the auxiliary entropy loss and the pseudo consistency loss.

Each loss is a callable ``loss(network, x) -> scalar`` on a batch ``x`` shaped (B, C, *spatial).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
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
from torch import nn

__all__ = [
    "EPS",
    "WEAK_TRANSFORMS",
    "probabilities",
    "probability_entropy",
    "entropy",
    "EntropyLoss",
    "weak_transform",
    "soft_pseudo_label",
    "DeviceGaussianNoise",
    "augment_each",
    "strong_augmentation",
    "ConsistencyLoss",
]

EPS = 1e-6
# Weak, exactly invertible transforms for the pseudo-label: flips along a spatial axis and
# rotations by k*90 degrees in the plane of the first two spatial axes (axial for RAS volumes).
WEAK_TRANSFORMS = ("flip0", "flip1", "flip2", "rot90", "rot180", "rot270")


def probabilities(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Class probabilities: softmax over channels, or per-channel sigmoid."""
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)


def probability_entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel entropy of probabilities ``p``, ``-sum_c p_c log(p_c + 1e-6)`` (channels summed)."""
    return -(p * torch.log(p + EPS)).sum(dim=1).mean()


def entropy(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Mean per-voxel prediction entropy of ``logits`` (see :func:`probability_entropy`)."""
    return probability_entropy(probabilities(logits.float(), sigmoid))


class EntropyLoss:
    """Auxiliary loss L_aux: mean prediction entropy of the network on ``x``."""

    def __init__(self, sigmoid: bool = False) -> None:
        self.sigmoid = sigmoid

    def __call__(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return entropy(network(x), self.sigmoid)


def weak_transform(x: torch.Tensor, name: str, inverse: bool = False) -> torch.Tensor:
    """Apply the weak transform ``name`` (or its exact inverse) to a (B, C, *spatial) tensor."""
    if name.startswith("flip"):
        return torch.flip(x, dims=(2 + int(name[4:]),))
    if name.startswith("rot"):
        k = int(name[3:]) // 90
        return torch.rot90(x, k=-k if inverse else k, dims=(2, 3))
    raise ValueError(f"Unknown weak transform {name!r}; choose from {WEAK_TRANSFORMS}.")


@torch.no_grad()
def soft_pseudo_label(
    network: nn.Module,
    x: torch.Tensor,
    weak: Sequence[str] = WEAK_TRANSFORMS,
    sigmoid: bool = False,
    batch_views: bool = False,
) -> torch.Tensor:
    """Average the probabilities predicted for ``x`` and its weak variants, each mapped back.

    ``batch_views`` predicts all same-shaped views in one forward pass (faster on GPUs; norm layers
    in test-statistics mode then see the statistics of all views together).
    """
    views = [("identity", x)] + [(name, weak_transform(x, name)) for name in weak]
    groups: dict[tuple, list] = {}
    for name, view in views:
        groups.setdefault(tuple(view.shape) if batch_views else (name,), []).append((name, view))
    total = torch.zeros((), device=x.device)
    for group in groups.values():
        probs = probabilities(network(torch.cat([v for _, v in group])).float(), sigmoid).split(len(x))
        for (name, _), p in zip(group, probs):
            total = total + (p if name == "identity" else weak_transform(p, name, inverse=True))
    return total / len(views)


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


class ConsistencyLoss:
    """Pseudo loss L_pse: cross-entropy of the strongly augmented input against the soft pseudo-label.

    Args:
        weak: names of the weak transforms whose predictions are averaged (see ``WEAK_TRANSFORMS``).
        sigmoid: multi-label sigmoid outputs (BCE) instead of softmax (CE).
        seed: seed of the strong augmentation's random state.
        prob: probability of each strong intensity transform.
        batch_views: predict the weak views in one batch (see ``soft_pseudo_label``).
    """

    def __init__(
        self,
        weak: Sequence[str] = WEAK_TRANSFORMS,
        sigmoid: bool = False,
        seed: int | None = 0,
        prob: float = 0.5,
        batch_views: bool = False,
    ) -> None:
        unknown = set(weak) - set(WEAK_TRANSFORMS)
        if unknown:
            raise ValueError(f"Unknown weak transforms {sorted(unknown)}; choose from {WEAK_TRANSFORMS}.")
        self.weak, self.sigmoid, self.batch_views = tuple(weak), sigmoid, batch_views
        self.augment = strong_augmentation(prob)
        self.augment.set_random_state(seed=seed)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        """Strongly augment each image of the batch independently."""
        return augment_each(self.augment, x)

    def __call__(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        target = soft_pseudo_label(network, x, self.weak, self.sigmoid, self.batch_views)
        logits = network(self.strong(x)).float()
        if self.sigmoid:
            return F.binary_cross_entropy_with_logits(logits, target)
        return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

