"""The test-time views: weak-view inverses, the strong augmentation and its device noise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from grata_monai.views import (
    WEAK_VIEWS,
    DeviceGaussianNoise,
    StrongAugmentation,
    strong_augmentation,
    weak_transform,
)


@pytest.mark.parametrize("name", WEAK_VIEWS)
def test_weak_transform_inverse_is_exact(name):
    x = torch.randn(2, 3, 6, 6, 5)
    y = weak_transform(x, name)
    assert not torch.equal(y, x)
    assert torch.equal(weak_transform(y, name, inverse=True), x)


def test_strong_augmentation_range_device_and_seed():
    x = torch.rand(1, 16, 16, 8)
    aug = strong_augmentation(prob=1.0)
    aug.set_random_state(seed=3)
    y = torch.as_tensor(aug(x))
    assert y.shape == x.shape and y.device == x.device
    assert y.min().item() == pytest.approx(0.0, abs=1e-6) and y.max().item() == pytest.approx(
        1.0, abs=1e-6
    )
    assert not torch.allclose(y, x)
    aug.set_random_state(seed=3)
    assert torch.equal(torch.as_tensor(aug(x)), y)


class _HostReads(TorchDispatchMode):
    """Counts the operations that read a tensor's value to the host (``item``, ``bool``, ``float``)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func in (
            torch.ops.aten._local_scalar_dense.default,
            torch.ops.aten.is_nonzero.default,
        )
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("prob", [0.0, 0.5, 1.0])
def test_strong_augmentation_batch_matches_monai_image_by_image(prob):
    x = torch.rand(6, 1, 20, 18, 10)
    x[5] = 0.3  # a constant image: ScaleIntensity gives zeros
    batched, reference = StrongAugmentation(prob), strong_augmentation(prob)
    batched.set_random_state(np.random.RandomState(7))
    reference.set_random_state(state=np.random.RandomState(7))
    expected = torch.stack([torch.as_tensor(reference(img)) for img in x])
    torch.testing.assert_close(batched(x), expected, rtol=1e-5, atol=1e-5)


def test_strong_augmentation_reads_nothing_to_the_host():
    x = torch.rand(4, 1, 16, 16, 8)
    batched, reference = StrongAugmentation(1.0), strong_augmentation(1.0)
    batched.set_random_state(np.random.RandomState(0))
    with _HostReads() as reads:
        batched(x)
    assert reads.count == 0
    with _HostReads() as reads:  # the check can fail: MONAI's transforms do read
        reference(x[0])
    assert reads.count > 0


def test_strong_augmentation_keeps_dtype_and_range():
    x = torch.rand(2, 1, 16, 16, 8).to(torch.bfloat16)
    augment = StrongAugmentation(1.0)
    augment.set_random_state(np.random.RandomState(1))
    y = augment(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    assert y.float().amin().item() == 0.0 and y.float().amax().item() == 1.0


def test_device_gaussian_noise_is_seeded_and_bounded():
    x = torch.zeros(1, 32, 32, 16)
    noise = DeviceGaussianNoise(prob=1.0, std=0.2)
    noise.set_random_state(seed=1)
    a = noise(x)
    noise.set_random_state(seed=1)
    assert torch.equal(noise(x), a)
    assert 0 < a.std().item() <= 0.2 and abs(a.mean().item()) < 0.01
    assert torch.equal(DeviceGaussianNoise(prob=0.0)(x), x)


def test_unknown_weak_view():
    with pytest.raises(ValueError, match="Unknown weak transform"):
        weak_transform(torch.zeros(1, 1, 2, 2, 2), "shear")
