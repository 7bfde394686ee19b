"""Training-time intensity augmentation for cross-modality robustness (CT -> MR).

MONAI has gamma, histogram shift, bias field, noise and smoothing; it has no random
convolution remapping, which the domain-generalization literature found to be the strongest
single augmentation for CT <-> MR shifts: GIN (global intensity non-linear augmentation, a
random shallow conv net) and its spatially varying blend (IPA-like), from Ouyang et al.,
"Causality-inspired single-source domain generalization for medical image segmentation",
IEEE TMI 2022. `RandGIN` / `RandGINd` implement it as MONAI transforms on tensors of any
device (CPU or CUDA); all random draws come from the transform's `R`, so `set_determinism`
and `set_random_state` make them reproducible.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["RandGIN", "RandGINd"]


class RandGIN(RandomizableTransform):
    """Random-convolution intensity remapping (GIN), blended with the input and rescaled to [0, 1].

    The input (channel first, 2D or 3D, any device) is standardized, passed through
    ``n_layers`` random convolutions (kernel size drawn from ``kernel_sizes``, ``channels``
    hidden channels, leaky ReLU between layers, weights and biases drawn fresh each call),
    standardized again, blended with the input by ``alpha`` and min-max rescaled to [0, 1].
    ``alpha`` is a scalar drawn from ``alpha_range`` or, with probability
    ``spatial_mix_prob``, a smooth random field (a coarse ``field_grid`` lattice of uniform
    values, upsampled), so different regions get different remappings.

    Args:
        prob: probability of applying the transform.
        n_layers: inclusive range of the number of conv layers.
        channels: hidden channels of the random net.
        kernel_sizes: kernel sizes to draw from, per layer.
        negative_slope: leaky ReLU slope.
        alpha_range: range of the weight of the remapped image in the blend.
        spatial_mix_prob: probability of a spatially varying blend instead of a scalar one.
        field_grid: lattice size of the spatial blend field (per spatial dim).
    """

    def __init__(
        self,
        prob: float = 1.0,
        n_layers: Sequence[int] = (2, 4),
        channels: int = 4,
        kernel_sizes: Sequence[int] = (1, 3),
        negative_slope: float = 0.2,
        alpha_range: Sequence[float] = (0.0, 1.0),
        spatial_mix_prob: float = 0.5,
        field_grid: int = 4,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        if n_layers[0] < 1 or n_layers[1] < n_layers[0]:
            raise ValueError(f"n_layers must be an inclusive range (lo, hi) with 1 <= lo <= hi, got {n_layers}.")
        self.n_layers = (int(n_layers[0]), int(n_layers[1]))
        self.channels = int(channels)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.negative_slope = float(negative_slope)
        self.alpha_range = (float(alpha_range[0]), float(alpha_range[1]))
        self.spatial_mix_prob = float(spatial_mix_prob)
        self.field_grid = int(field_grid)
        self._layers: list[tuple[np.ndarray, np.ndarray]] = []
        self._alpha: np.ndarray | float = 0.0

    def randomize(self, data: torch.Tensor) -> None:  # type: ignore[override]
        super().randomize(None)
        if not self._do_transform:
            return
        in_ch, spatial_dims = data.shape[0], data.ndim - 1
        depth = int(self.R.randint(self.n_layers[0], self.n_layers[1] + 1))
        self._layers = []
        for i in range(depth):
            out_ch = in_ch if i == depth - 1 else self.channels
            cin = in_ch if i == 0 else self.channels
            k = int(self.R.choice(self.kernel_sizes))
            fan_in = cin * k**spatial_dims
            w = self.R.standard_normal((out_ch, cin) + (k,) * spatial_dims) / np.sqrt(fan_in)
            b = self.R.standard_normal(out_ch)
            self._layers.append((w.astype(np.float32), b.astype(np.float32)))
        lo, hi = self.alpha_range
        if self.R.rand() < self.spatial_mix_prob:
            grid = self.R.uniform(lo, hi, (1, 1) + (self.field_grid,) * spatial_dims)
            self._alpha = grid.astype(np.float32)
        else:
            self._alpha = float(self.R.uniform(lo, hi))

    @staticmethod
    def _standardize(x: torch.Tensor) -> torch.Tensor:
        return (x - x.mean()) / (x.std() + 1e-6)

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:  # type: ignore[override]
        """Apply to a channel-first image ``[C, *spatial]``; returns the same type and device."""
        if randomize:
            self.randomize(img)
        if not self._do_transform:
            return img
        x = img.as_tensor() if isinstance(img, MetaTensor) else torch.as_tensor(img)
        dtype, device = x.dtype, x.device
        x = x.float()
        spatial_dims = x.ndim - 1
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial_dims]
        h = self._standardize(x)[None]
        for i, (w, b) in enumerate(self._layers):
            wt, bt = torch.as_tensor(w, device=device), torch.as_tensor(b, device=device)
            h = conv(h, wt, bt, padding=w.shape[-1] // 2)
            if i < len(self._layers) - 1:
                h = F.leaky_relu(h, self.negative_slope)
        gin = self._standardize(h[0])
        if isinstance(self._alpha, np.ndarray):
            mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
            alpha = F.interpolate(
                torch.as_tensor(self._alpha, device=device), size=x.shape[1:], mode=mode, align_corners=True
            )[0]
        else:
            alpha = torch.tensor(self._alpha, device=device)
        out = alpha * gin + (1 - alpha) * self._standardize(x)
        out = (out - out.min()) / (out.max() - out.min()).clamp_min(1e-6)
        out = out.to(dtype)
        if isinstance(img, MetaTensor):
            return MetaTensor(out, meta=img.meta, applied_operations=img.applied_operations)
        return out


class RandGINd(RandomizableTransform, MapTransform):
    """Dictionary version of `RandGIN`: one random net per call, applied to every key.

    Args:
        keys: keys of the images to remap (labels must not be listed).
        prob: probability of applying the transform.
        allow_missing_keys: do not raise for missing keys.
        kwargs: the other arguments of `RandGIN`.
    """

    def __init__(self, keys: KeysCollection, prob: float = 1.0, allow_missing_keys: bool = False, **kwargs) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.gin = RandGIN(prob=1.0, **kwargs)

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> RandGINd:
        super().set_random_state(seed, state)
        self.gin.set_random_state(seed, state)
        return self

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        first = True
        for key in self.key_iterator(d):
            if first:
                self.gin.randomize(d[key])
                first = False
            d[key] = self.gin(d[key], randomize=False)
        return d
