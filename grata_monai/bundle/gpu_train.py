"""Training on the GPU: patch sampling and every random augmentation batched on device tensors.

The bundle's deterministic preprocessing (load, orientation, spacing, percentile scaling, body
crop) runs once per volume and is cached; :class:`GPUPatchSampler` then keeps all training
volumes on the device and yields whole training batches, each built by a handful of batched
kernels — no per-crop Python transforms, no host round trips:

- **crops** centred on a random organ voxel (each present organ equally likely) or anywhere in
  the volume, drawn with a random **affine** (rotation, scaling) by one ``grid_sample`` per volume;
- :class:`GPUAugment`, per crop: class-wise **location-scale** intensity (SLAug-style: each label
  region gets its own random scale and shift), **GIN** random-convolution remapping blended with
  the input by a scalar or a smooth spatial weight (IPA-like), **gamma**, **inversion**, a
  multiplicative **bias field**, **thick-slice** simulation along the last axis (the target MR
  has 7.7 mm slices), Gaussian **blur** and **noise**, then rescaling to [0, 1].

Per-crop random draws come from a ``torch.Generator`` on the device and per-batch structural
choices (which volumes, GIN depth and kernels, blur and slice factors) from a host RNG, both
seeded by ``seed``, so no draw waits on the device.
References: Ouyang et al., IEEE TMI 2022 (GIN/IPA); Su et al., AAAI 2023 (SLAug).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

__all__ = ["GPUAugment", "GPUPatchSampler", "TrainingLog"]


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
    augmentation only.

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
        self.location_scale_prob, self.scale_range, self.shift = location_scale_prob, tuple(scale_range), shift
        self.gin_prob, self.gin_layers, self.gin_channels = gin_prob, tuple(gin_layers), int(gin_channels)
        self.gin_kernels, self.gin_spatial_prob = tuple(int(k) for k in gin_kernels), gin_spatial_prob
        self.gamma_prob, self.gamma_range, self.invert_prob = gamma_prob, tuple(gamma_range), invert_prob
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

    @staticmethod
    def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(mask.view(_per_sample(a)), a, b)

    def _smooth_field(self, g: torch.Generator, shape: tuple, grid: int, device) -> torch.Tensor:
        coarse = torch.randn((shape[0], 1) + (grid,) * (len(shape) - 2), generator=g, device=device)
        return F.interpolate(coarse, size=shape[2:], mode="trilinear", align_corners=True)

    # --- the augmentations -------------------------------------------------------------------
    def location_scale(self, g: torch.Generator, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
            w = torch.randn(b * cout, cin, k, k, k, generator=g, device=device) / math.sqrt(cin * k**3)
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
        low = F.interpolate(x, size=(*x.shape[2:4], max(int(round(depth / factor)), 1)), mode="area")
        return F.interpolate(low, size=x.shape[2:], mode="trilinear", align_corners=False)

    def blur(self, rng: random.Random, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur, one sigma (voxels) per batch."""
        sigma = rng.uniform(*self.blur_sigma)
        radius = max(int(math.ceil(2 * sigma)), 1)
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = kernel / kernel.sum()
        for axis in range(3):
            shape = [1, 1, 1, 1, 1]
            shape[2 + axis] = kernel.numel()
            pad = [0, 0, 0, 0, 0, 0]
            pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
            x = F.conv3d(F.pad(x, pad, mode="replicate"), kernel.view(shape))
        return x

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, g: torch.Generator, rng: random.Random) -> torch.Tensor:
        """Augment the crops ``x`` (labels ``labels``) with device generator ``g`` and host RNG ``rng``."""
        b, dev = x.shape[0], x.device
        x = x.float()
        x = self._where(self._coin(g, b, self.location_scale_prob, dev), self.location_scale(g, x, labels), x)
        x = self._where(self._coin(g, b, self.gin_prob, dev), self.gin(g, rng, x), x)
        lo, hi = math.log(self.gamma_range[0]), math.log(self.gamma_range[1])
        gamma = torch.exp(self._uniform(g, b, lo, hi, dev)).view(_per_sample(x))
        x = self._where(self._coin(g, b, self.gamma_prob, dev), x.clamp_min(0) ** gamma, x)
        x = self._where(self._coin(g, b, self.invert_prob, dev), 1 - x, x)
        field = torch.exp(self.bias_std * self._smooth_field(g, x.shape, 3, dev))
        x = self._where(self._coin(g, b, self.bias_prob, dev), x * field, x)
        if rng.random() < self.thick_slice_prob:
            x = self.thick_slices(rng, x)
        x = self._where(self._coin(g, b, self.blur_prob, dev), self.blur(rng, x), x)
        std = self._uniform(g, b, 0, self.noise_std, dev).view(_per_sample(x))
        noisy = x + std * torch.randn(x.shape, generator=g, device=dev)
        x = self._where(self._coin(g, b, self.noise_prob, dev), noisy, x)
        return _rescale(x)


class GPUPatchSampler:
    """Training batches drawn on the device from volumes kept there, augmented in batches.

    Iterating yields ``len(self)`` batches ``{"image": (B, 1, *roi), "label": (B, 1, *roi)}`` (an
    epoch), on ``device``. The volumes are read from ``dataset`` (items with ``image`` in [0, 1]
    and integer ``label``, channel first, e.g. a ``CacheDataset`` over the bundle's deterministic
    preprocessing) on the first iteration.

    Args:
        dataset: the preprocessed training volumes.
        roi_size: crop size (voxels).
        batch_size: crops per batch.
        crops_per_volume: crops drawn from one volume; a batch holds ``batch_size //
            crops_per_volume`` volumes (``batch_size`` from one volume: BatchNorm sees one volume's
            statistics, as the per-volume statistics used at test time).
        epoch_length: batches per epoch.
        pos_fraction: fraction of crops centred on an organ voxel (organs equally likely); the
            others are centred anywhere in the volume.
        rotate_range: max rotation (radians) about each axis (the last is in-plane).
        scale_range: max relative scaling.
        affine_prob: probability of a random affine per crop (else an axis-aligned crop).
        spacing: voxel spacing, so rotations are rigid in millimetres.
        augment: the intensity augmentation (None: crops only).
        device: where volumes and batches live (default: CUDA when available).
        seed: seed of the device generator.
    """

    def __init__(
        self,
        dataset: Sequence[dict],
        roi_size: Sequence[int],
        batch_size: int = 8,
        crops_per_volume: int = 1,
        epoch_length: int = 100,
        pos_fraction: float = 2 / 3,
        rotate_range: Sequence[float] = (0.1, 0.1, 0.3),
        scale_range: float = 0.15,
        affine_prob: float = 0.5,
        spacing: Sequence[float] = (2.0, 2.0, 4.0),
        augment: GPUAugment | None = None,
        device: torch.device | str | None = None,
        seed: int = 0,
    ) -> None:
        if batch_size % crops_per_volume:
            raise ValueError(f"batch_size ({batch_size}) must be a multiple of crops_per_volume ({crops_per_volume}).")
        self.dataset, self.roi_size = dataset, tuple(int(r) for r in roi_size)
        self.batch_size, self.crops_per_volume, self.epoch_length = batch_size, crops_per_volume, epoch_length
        self.pos_fraction, self.rotate_range, self.scale_range = pos_fraction, tuple(rotate_range), scale_range
        self.affine_prob, self.spacing, self.augment = affine_prob, tuple(float(s) for s in spacing), augment
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.rng = random.Random(seed)
        self.volumes: list[dict] = []
        offsets = torch.stack(
            torch.meshgrid(*[torch.arange(r, dtype=torch.float32) - (r - 1) / 2 for r in self.roi_size], indexing="ij"),
            dim=-1,
        )
        self._offsets = offsets.to(self.device)  # (*roi, 3) voxel offsets from the crop centre

    def __len__(self) -> int:
        return self.epoch_length

    def _load(self) -> None:
        for item in self.dataset:
            image = torch.as_tensor(item["image"]).float()
            label = torch.as_tensor(item["label"]).long()
            if image.ndim != 4 or label.shape != image.shape:
                raise ValueError(f"expected channel-first 3D image and label of one shape, got {tuple(image.shape)}.")
            flat = label[0].reshape(-1)
            organs = [idx for idx in (torch.nonzero(flat == c).flatten() for c in range(1, int(flat.max()) + 1)) if len(idx)]
            counts = torch.tensor([len(idx) for idx in organs], dtype=torch.long)
            self.volumes.append(
                {
                    "image": image[None].to(self.device),
                    "label": label[None].float().to(self.device),
                    "n_organs": len(organs),
                    "organ_voxels": torch.cat(organs).to(self.device) if organs else None,
                    "organ_start": (counts.cumsum(0) - counts).to(self.device),
                    "organ_count": counts.to(self.device),
                    "shape": torch.tensor(image.shape[1:], device=self.device),
                }
            )
        if not self.volumes:
            raise ValueError("the training dataset is empty.")

    def _centres(self, vol: dict, n: int) -> torch.Tensor:
        g, dev, shape = self.generator, self.device, vol["shape"]
        anywhere = (torch.rand(n, 3, generator=g, device=dev) * shape).floor()
        if not vol["n_organs"]:
            return anywhere
        pick = torch.randint(vol["n_organs"], (n,), generator=g, device=dev)  # organs equally likely
        offset = (torch.rand(n, generator=g, device=dev) * vol["organ_count"][pick]).long()
        flat = vol["organ_voxels"][vol["organ_start"][pick] + offset]
        organ = torch.stack([flat // (shape[2] * shape[1]), (flat // shape[2]) % shape[1], flat % shape[2]], 1)
        pos = torch.rand(n, 1, generator=g, device=dev) < self.pos_fraction
        return torch.where(pos, organ.float(), anywhere)

    def _affines(self, n: int) -> torch.Tensor:
        """Random rotation-scaling matrices in voxel units (identity with probability 1 - affine_prob)."""
        g, dev = self.generator, self.device
        angles = (torch.rand(n, 3, generator=g, device=dev) * 2 - 1) * torch.tensor(self.rotate_range, device=dev)
        cos, sin = angles.cos(), angles.sin()
        one, zero = torch.ones(n, device=dev), torch.zeros(n, device=dev)
        rx = torch.stack([one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], 1).view(n, 3, 3)
        ry = torch.stack([cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1).view(n, 3, 3)
        rz = torch.stack([cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], 1).view(n, 3, 3)
        scale = 1 + (torch.rand(n, 3, generator=g, device=dev) * 2 - 1) * self.scale_range
        spacing = torch.tensor(self.spacing, device=dev)
        mm = rz @ ry @ rx @ torch.diag_embed(scale)
        vox = torch.diag(1 / spacing) @ mm @ torch.diag(spacing)
        keep = (torch.rand(n, generator=g, device=dev) < self.affine_prob).view(n, 1, 1)
        return torch.where(keep, vox, torch.eye(3, device=dev).expand(n, 3, 3))

    def _crops(self, vol: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        centres, affines = self._centres(vol, n), self._affines(n)
        points = centres.view(n, 1, 1, 1, 3) + torch.einsum("nij,xyzj->nxyzi", affines, self._offsets)
        grid = (points / (vol["shape"] - 1).clamp_min(1) * 2 - 1).flip(-1)  # grid_sample wants (z, y, x)
        image = F.grid_sample(vol["image"].expand(n, -1, -1, -1, -1), grid, "bilinear", "zeros", align_corners=True)
        label = F.grid_sample(vol["label"].expand(n, -1, -1, -1, -1), grid, "nearest", "zeros", align_corners=True)
        return image, label

    def batch(self) -> dict[str, torch.Tensor]:
        """One augmented training batch."""
        if not self.volumes:
            self._load()
        n_vol = self.batch_size // self.crops_per_volume
        chosen = [self.rng.randrange(len(self.volumes)) for _ in range(n_vol)]
        crops = [self._crops(self.volumes[i], self.crops_per_volume) for i in chosen]
        image, label = torch.cat([c[0] for c in crops]), torch.cat([c[1] for c in crops])
        if self.augment is not None:
            image = self.augment(image, label, self.generator, self.rng)
        return {"image": image, "label": label}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for _ in range(self.epoch_length):
            yield self.batch()


class TrainingLog:
    """An ignite handler recording the loss every ``interval`` iterations and each validation
    metric, with wall-clock seconds since the start, to a JSON file (for curves and time-to-Dice).

    Args:
        path: JSON file to write (rewritten after each validation and at the end).
        validator: the validation engine whose ``metric`` is recorded after each run.
        metric: the validator's metric name.
        interval: iterations between loss records (each one synchronizes the device once).
    """

    def __init__(self, path: str, validator=None, metric: str = "val_mean_dice", interval: int = 50) -> None:
        self.path, self.validator, self.metric, self.interval = Path(path), validator, metric, interval
        self.record: dict = {"loss": [], "val": [], "iterations": 0, "seconds": 0.0}
        self._start = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._loss)
        engine.add_event_handler(Events.COMPLETED, self._write)
        if self.validator is not None:
            self.validator.add_event_handler(Events.COMPLETED, self._val)
        self._engine = engine

    def _elapsed(self) -> float:
        return time.perf_counter() - self._start

    def _started(self, engine) -> None:
        self._start = time.perf_counter()

    def _loss(self, engine) -> None:
        loss = engine.state.output[0]["loss"] if isinstance(engine.state.output, list) else engine.state.output["loss"]
        self.record["loss"].append([engine.state.iteration, self._elapsed(), float(loss)])

    def _val(self, validator) -> None:
        if self._start is None:
            return
        value = validator.state.metrics.get(self.metric)
        self.record["val"].append([self._engine.state.iteration, self._elapsed(), float(value)])
        self._write(self._engine)

    def _write(self, engine) -> None:
        self.record["iterations"], self.record["seconds"] = engine.state.iteration, self._elapsed()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.record, indent=1))
