"""The test-time views: weak-view inverses, the strong augmentation and its device noise."""

from __future__ import annotations

import pytest
import torch

from grata_monai.views import WEAK_VIEWS, DeviceGaussianNoise, strong_augmentation, weak_transform


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
