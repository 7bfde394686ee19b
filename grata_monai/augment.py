"""Intensity augmentation for cross-modality robustness (CT -> MR), batched on the device.

Used to train the source model (:mod:`grata_monai.bundle.training`) and, at test time, as a strong
view the model was trained to be invariant to (:class:`~grata_monai.losses.ConsistencyLoss`).

:class:`GPUAugment` augments a whole batch of crops with a handful of batched kernels, each crop with
its own random parameters: class-wise **location-scale** intensity (SLAug-style: each label region
gets its own random scale and shift), **GIN** random-convolution remapping blended with the input by
a scalar or a smooth spatial weight (IPA-like), **gamma**, **inversion**, a multiplicative **bias
field**, **thick-slice** simulation along the last axis (the target MR has 7.7 mm slices), Gaussian
**blur** and **noise**, then rescaling to [0, 1]. MONAI's random intensity transforms work one image
at a time; this is the same family of transforms, applied to a batch at once.

Per-crop draws come from a ``torch.Generator`` on the device, per-batch structural choices (GIN
depth and kernels, blur and slice factors) from a host ``random.Random``, so no draw waits on the
device. References: Ouyang et al., IEEE TMI 2022 (GIN/IPA); Su et al., AAAI 2023 (SLAug).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.networks.layers import separable_filtering

__all__ = ["GPUAugment"]


def _per_sample(x: torch.Tensor) -> tuple[int, ...]:
    return (-1,) + (1,) * (x.ndim - 1)


def _standardize(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    return (x - x.mean(dims, keepdim=True)) / (x.std(dims, keepdim=True) + 1e-6)


def _rescale(x: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(1, x.ndim))
    lo, hi = x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)
    return (x - lo) / (hi - lo).clamp_min(1e-6)


class GPUAugment:
    """Batched random intensity augmentation of image crops ``(B, 1, *spatial)`` in [0, 1].

    Each augmentation is applied to each crop independently with its probability; parameters are
    drawn per crop. ``labels`` (``(B, 1, *spatial)``, integer classes) drive the location-scale
    augmentation only (None when it is off). An augmentation with probability 0 costs nothing.

    Args:
        num_classes: number of label classes (background included).
        location_scale_prob: class-wise random scale ``U(scale_range)`` and shift
            ``U(-shift, shift)`` of the intensities inside each (smoothed) label region.
        scale_range, shift: the location-scale ranges.
        gin_prob: GIN remapping; ``gin_layers`` inclusive range of random conv layers with
            ``gin_channels`` hidden channels and kernel sizes from ``gin_kernels``.
        gin_spatial_prob: a smooth spatial blend weight (IPA-like) instead of a scalar.
        gamma_prob, gamma_range: power law ``x ** gamma``, log-uniform gamma.
        invert_prob: ``1 - x``.
        bias_prob, bias_std: multiplicative field ``exp(smooth N(0, bias_std))``.
        thick_slice_prob, thick_slice_range: average and re-interpolate the last axis by a factor
            drawn from the range (one factor per batch).
        blur_prob, blur_sigma: Gaussian blur with sigma (voxels) drawn per batch.
        noise_prob, noise_std: additive Gaussian noise with std ``U(0, noise_std)``.
    """

    def __init__(
        self,
        num_classes: int = 5,
        location_scale_prob: float = 0.5,
        scale_range: Sequence[float] = (0.6, 1.4),
        shift: float = 0.25,
        gin_prob: float = 0.8,
        gin_layers: Sequence[int] = (2, 4),
        gin_channels: int = 4,
        gin_kernels: Sequence[int] = (1, 3),
        gin_spatial_prob: float = 0.5,
        gamma_prob: float = 0.5,
        gamma_range: Sequence[float] = (0.5, 2.0),
        invert_prob: float = 0.15,
        bias_prob: float = 0.3,
        bias_std: float = 0.3,
        thick_slice_prob: float = 0.5,
        thick_slice_range: Sequence[float] = (1.0, 2.5),
        blur_prob: float = 0.3,
        blur_sigma: Sequence[float] = (0.25, 1.0),
        noise_prob: float = 0.3,
        noise_std: float = 0.05,
    ) -> None:
        self.num_classes = int(num_classes)
        self.location_scale_prob, self.scale_range, self.shift = (
            location_scale_prob,
            tuple(scale_range),
            shift,
        )
        self.gin_prob, self.gin_layers, self.gin_channels = (
            gin_prob,
            tuple(gin_layers),
            int(gin_channels),
        )
        self.gin_kernels, self.gin_spatial_prob = (
            tuple(int(k) for k in gin_kernels),
            gin_spatial_prob,
        )
        self.gamma_prob, self.gamma_range, self.invert_prob = (
            gamma_prob,
            tuple(gamma_range),
            invert_prob,
        )
        self.bias_prob, self.bias_std = bias_prob, bias_std
        self.thick_slice_prob, self.thick_slice_range = thick_slice_prob, tuple(thick_slice_range)
        self.blur_prob, self.blur_sigma = blur_prob, tuple(blur_sigma)
        self.noise_prob, self.noise_std = noise_prob, noise_std

    # --- helpers -----------------------------------------------------------------------------
    @staticmethod
    def _uniform(g: torch.Generator, n: int, lo: float, hi: float, device) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g, device=device)

    @staticmethod
    def _coin(g: torch.Generator, n: int, p: float, device) -> torch.Tensor:
        return torch.rand(n, generator=g, device=device) < p

    def _maybe(self, g: torch.Generator, x: torch.Tensor, prob: float, augmented) -> torch.Tensor:
        """``augmented()`` for each crop with probability ``prob``, else ``x`` (not computed at 0)."""
        if prob <= 0:
            return x
        keep = self._coin(g, x.shape[0], prob, x.device).view(_per_sample(x))
        return torch.where(keep, augmented(), x)

    def _smooth_field(self, g: torch.Generator, shape: tuple, grid: int, device) -> torch.Tensor:
        coarse = torch.randn((shape[0], 1) + (grid,) * (len(shape) - 2), generator=g, device=device)
        return F.interpolate(coarse, size=shape[2:], mode="trilinear", align_corners=True)

    # --- the augmentations -------------------------------------------------------------------
    def location_scale(
        self, g: torch.Generator, x: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        """Each label region (smoothed one-hot) gets its own intensity scale about its mean, and shift."""
        b, k = x.shape[0], self.num_classes
        onehot = F.one_hot(labels[:, 0].long().clamp(0, k - 1), k).movedim(-1, 1).float()
        masks = F.avg_pool3d(onehot, 5, stride=1, padding=2, count_include_pad=False)
        area = masks.sum((2, 3, 4), keepdim=True).clamp_min(1.0)
        means = (masks * x).sum((2, 3, 4), keepdim=True) / area
        scale = self._uniform(g, b * k, *self.scale_range, x.device).view(b, k, 1, 1, 1)
        shift = self._uniform(g, b * k, -self.shift, self.shift, x.device).view(b, k, 1, 1, 1)
        out = (masks * (scale * (x - means) + means + shift)).sum(1, keepdim=True)
        return out.clamp(0, 1)

    def gin(self, g: torch.Generator, rng: random.Random, x: torch.Tensor) -> torch.Tensor:
        """GIN: a random shallow conv net per crop (grouped conv), blended with the input."""
        b, device = x.shape[0], x.device
        depth = rng.randint(*self.gin_layers)
        h = _standardize(x).reshape(1, b, *x.shape[2:])
        cin = 1
        for i in range(depth):
            cout = 1 if i == depth - 1 else self.gin_channels
            k = rng.choice(self.gin_kernels)
            w = torch.randn(b * cout, cin, k, k, k, generator=g, device=device) / math.sqrt(
                cin * k**3
            )
            bias = torch.randn(b * cout, generator=g, device=device)
            h = F.conv3d(h, w, bias, padding=k // 2, groups=b)
            if i < depth - 1:
                h = F.leaky_relu(h, 0.2)
            cin = cout
        remapped = _standardize(h.reshape(x.shape))
        scalar = torch.rand(b, generator=g, device=device).view(_per_sample(x))
        field = torch.sigmoid(2.0 * self._smooth_field(g, x.shape, 4, device))
        spatial = self._coin(g, b, self.gin_spatial_prob, device).view(_per_sample(x))
        alpha = torch.where(spatial, field, scalar)
        return _rescale(alpha * remapped + (1 - alpha) * _standardize(x))

    def thick_slices(self, rng: random.Random, x: torch.Tensor) -> torch.Tensor:
        """Simulate thicker slices: average the last axis down by a random factor, interpolate back."""
        factor = rng.uniform(*self.thick_slice_range)
        depth = x.shape[-1]
        low = F.interpolate(x, size=(*x.shape[2:4], max(round(depth / factor), 1)), mode="area")
        return F.interpolate(low, size=x.shape[2:], mode="trilinear", align_corners=False)

    def blur(self, rng: random.Random, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur, one sigma (voxels) per batch."""
        sigma = rng.uniform(*self.blur_sigma)
        radius = max(math.ceil(2 * sigma), 1)
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        return separable_filtering(x, [kernel / kernel.sum()] * 3, mode="replicate")

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor | None, g: torch.Generator, rng: random.Random
    ) -> torch.Tensor:
        """Augment the crops ``x`` (labels ``labels``) with device generator ``g`` and host RNG ``rng``."""
        b, dev = x.shape[0], x.device
        x = x.float()
        x = self._maybe(g, x, self.location_scale_prob, lambda: self.location_scale(g, x, labels))
        x = self._maybe(g, x, self.gin_prob, lambda: self.gin(g, rng, x))
        if (
            self.gamma_prob > 0
        ):  # parameters drawn before the coin, as in the run that trained model.pt
            lo, hi = math.log(self.gamma_range[0]), math.log(self.gamma_range[1])
            gamma = torch.exp(self._uniform(g, b, lo, hi, dev)).view(_per_sample(x))
            x = self._maybe(g, x, self.gamma_prob, lambda: x.clamp_min(0) ** gamma)
        x = self._maybe(g, x, self.invert_prob, lambda: 1 - x)
        if self.bias_prob > 0:
            field = torch.exp(self.bias_std * self._smooth_field(g, x.shape, 3, dev))
            x = self._maybe(g, x, self.bias_prob, lambda: x * field)
        if self.thick_slice_prob > 0 and rng.random() < self.thick_slice_prob:
            x = self.thick_slices(rng, x)
        x = self._maybe(g, x, self.blur_prob, lambda: self.blur(rng, x))
        if self.noise_prob > 0:
            std = self._uniform(g, b, 0, self.noise_std, dev).view(_per_sample(x))
            x = self._maybe(
                g,
                x,
                self.noise_prob,
                lambda: x + std * torch.randn(x.shape, generator=g, device=dev),
            )
        return _rescale(x)
