"""Training batches drawn on the GPU: crops with a random affine, augmented in batches.

The bundle's deterministic preprocessing (load, orientation, spacing, percentile scaling, body crop)
runs once per volume and is cached (``CacheDataset``); :class:`GPUPatchSampler` then keeps all
training volumes on the device and yields whole training batches — crops centred on a random organ
voxel (each present organ equally likely) or anywhere, drawn with a random rotation and scaling by
one ``grid_sample`` per volume, then :class:`~grata_monai.augment.GPUAugment` — with no
per-crop Python transforms and no host round trips. :class:`TrainingLog` records the loss and
validation curves for ``docs/benchmarks/training.md``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from grata_monai.augment import GPUAugment

__all__ = ["GPUPatchSampler", "TrainingLog"]


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
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of crops_per_volume ({crops_per_volume})."
            )
        self.dataset, self.roi_size = dataset, tuple(int(r) for r in roi_size)
        self.batch_size, self.crops_per_volume, self.epoch_length = (
            batch_size,
            crops_per_volume,
            epoch_length,
        )
        self.pos_fraction, self.rotate_range, self.scale_range = (
            pos_fraction,
            tuple(rotate_range),
            scale_range,
        )
        self.affine_prob, self.spacing, self.augment = (
            affine_prob,
            tuple(float(s) for s in spacing),
            augment,
        )
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.rng = random.Random(seed)
        self.volumes: list[dict] = []
        offsets = torch.stack(
            torch.meshgrid(
                *[torch.arange(r, dtype=torch.float32) - (r - 1) / 2 for r in self.roi_size],
                indexing="ij",
            ),
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
                raise ValueError(
                    f"expected channel-first 3D image and label of one shape, got {tuple(image.shape)}."
                )
            flat = label[0].reshape(-1)
            organs = [
                idx
                for idx in (
                    torch.nonzero(flat == c).flatten() for c in range(1, int(flat.max()) + 1)
                )
                if len(idx)
            ]
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
        pick = torch.randint(
            vol["n_organs"], (n,), generator=g, device=dev
        )  # organs equally likely
        offset = (torch.rand(n, generator=g, device=dev) * vol["organ_count"][pick]).long()
        flat = vol["organ_voxels"][vol["organ_start"][pick] + offset]
        organ = torch.stack(
            [flat // (shape[2] * shape[1]), (flat // shape[2]) % shape[1], flat % shape[2]], 1
        )
        pos = torch.rand(n, 1, generator=g, device=dev) < self.pos_fraction
        return torch.where(pos, organ.float(), anywhere)

    def _affines(self, n: int) -> torch.Tensor:
        """Random rotation-scaling matrices in voxel units (identity with probability 1 - affine_prob)."""
        g, dev = self.generator, self.device
        angles = (torch.rand(n, 3, generator=g, device=dev) * 2 - 1) * torch.tensor(
            self.rotate_range, device=dev
        )
        cos, sin = angles.cos(), angles.sin()
        one, zero = torch.ones(n, device=dev), torch.zeros(n, device=dev)
        rx = torch.stack(
            [one, zero, zero, zero, cos[:, 0], -sin[:, 0], zero, sin[:, 0], cos[:, 0]], 1
        ).view(n, 3, 3)
        ry = torch.stack(
            [cos[:, 1], zero, sin[:, 1], zero, one, zero, -sin[:, 1], zero, cos[:, 1]], 1
        ).view(n, 3, 3)
        rz = torch.stack(
            [cos[:, 2], -sin[:, 2], zero, sin[:, 2], cos[:, 2], zero, zero, zero, one], 1
        ).view(n, 3, 3)
        scale = 1 + (torch.rand(n, 3, generator=g, device=dev) * 2 - 1) * self.scale_range
        spacing = torch.tensor(self.spacing, device=dev)
        mm = rz @ ry @ rx @ torch.diag_embed(scale)
        vox = torch.diag(1 / spacing) @ mm @ torch.diag(spacing)
        keep = (torch.rand(n, generator=g, device=dev) < self.affine_prob).view(n, 1, 1)
        return torch.where(keep, vox, torch.eye(3, device=dev).expand(n, 3, 3))

    def _crops(self, vol: dict, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        centres, affines = self._centres(vol, n), self._affines(n)
        points = centres.view(n, 1, 1, 1, 3) + torch.einsum(
            "nij,xyzj->nxyzi", affines, self._offsets
        )
        grid = (points / (vol["shape"] - 1).clamp_min(1) * 2 - 1).flip(
            -1
        )  # grid_sample wants (z, y, x)
        image = F.grid_sample(
            vol["image"].expand(n, -1, -1, -1, -1), grid, "bilinear", "zeros", align_corners=True
        )
        label = F.grid_sample(
            vol["label"].expand(n, -1, -1, -1, -1), grid, "nearest", "zeros", align_corners=True
        )
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

    def __init__(
        self, path: str, validator=None, metric: str = "val_mean_dice", interval: int = 50
    ) -> None:
        self.path, self.validator, self.metric, self.interval = (
            Path(path),
            validator,
            metric,
            interval,
        )
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
        loss = (
            engine.state.output[0]["loss"]
            if isinstance(engine.state.output, list)
            else engine.state.output["loss"]
        )
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
