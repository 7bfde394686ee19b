"""GPUAugment: each augmentation's effect, range, shape, per-crop independence and reproducibility."""

from __future__ import annotations

import random

import pytest
import torch

from grata_monai.augment import GPUAugment

OFF = dict(
    location_scale_prob=0.0,
    gin_prob=0.0,
    gamma_prob=0.0,
    invert_prob=0.0,
    bias_prob=0.0,
    thick_slice_prob=0.0,
    blur_prob=0.0,
    noise_prob=0.0,
)


def _batch(b: int = 3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 1, 16, 12, 8, generator=g) * 0.3
    y = torch.zeros(b, 1, 16, 12, 8)
    x[:, :, 4:12, 3:9, 2:6] += 0.5
    y[:, :, 4:12, 3:9, 2:6] = 1
    return x, y


def _run(aug: GPUAugment, x, y, seed: int = 0):
    return aug(x, y, torch.Generator().manual_seed(seed), random.Random(seed))


def test_all_off_only_rescales():
    x, y = _batch()
    out = _run(GPUAugment(**OFF), x, y)
    lo = x.amin((1, 2, 3, 4), keepdim=True)
    hi = x.amax((1, 2, 3, 4), keepdim=True)
    assert torch.allclose(out, (x - lo) / (hi - lo), atol=1e-6)


@pytest.mark.parametrize(
    "name", ["location_scale", "gin", "gamma", "invert", "bias", "thick_slice", "blur", "noise"]
)
def test_each_augmentation_changes_the_image_within_range(name):
    x, y = _batch()
    out = _run(GPUAugment(**(OFF | {f"{name}_prob": 1.0})), x, y)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1 + 1e-6
    assert not torch.allclose(out, _run(GPUAugment(**OFF), x, y), atol=1e-3)


def test_invert_is_exact():
    x, y = _batch()
    base, inv = (
        _run(GPUAugment(**OFF), x, y),
        _run(GPUAugment(**(OFF | {"invert_prob": 1.0})), x, y),
    )
    assert torch.allclose(inv, 1 - base, atol=1e-6)


def test_location_scale_is_uniform_within_a_region():
    """Away from the (smoothed) region borders every voxel of a region gets the same affine map."""
    x, y = _batch(1)
    x = torch.full_like(x, 0.2)
    x[y > 0] = 0.6
    out = GPUAugment(**OFF).location_scale(torch.Generator().manual_seed(1), x, y)
    inner = out[0, 0, 6:10, 5:7, 3:5]
    assert torch.allclose(inner, inner.flatten()[0].expand_as(inner), atol=1e-5)


def test_crops_get_their_own_parameters_and_seeds_reproduce():
    x, y = _batch(2)
    x[1] = x[0]
    aug = GPUAugment(gin_prob=1.0)
    a, b = _run(aug, x, y, seed=3), _run(aug, x, y, seed=3)
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1], atol=1e-3)


def test_gin_keeps_the_anatomy():
    """A GIN remap is a local intensity function: the organ stays distinguishable from its surround."""
    x, y = _batch(1)
    out = GPUAugment(**OFF).gin(torch.Generator().manual_seed(0), random.Random(0), x)
    inside, outside = out[y > 0].mean(), out[y == 0].mean()
    assert abs(float(inside - outside)) > 0.01
