"""Entropy, weak-transform inverses, strong augmentation and the consistency loss."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grata_monai.losses import (
    WEAK_TRANSFORMS,
    ConsistencyLoss,
    DeviceGaussianNoise,
    EntropyLoss,
    entropy,
    soft_pseudo_label,
    strong_augmentation,
    weak_transform,
)


@pytest.mark.parametrize("name", WEAK_TRANSFORMS)
def test_weak_transform_inverse_is_exact(name):
    x = torch.randn(2, 3, 6, 6, 5)
    y = weak_transform(x, name)
    assert not torch.equal(y, x)
    assert torch.equal(weak_transform(y, name, inverse=True), x)


def test_unknown_weak_transform():
    with pytest.raises(ValueError, match="Unknown weak transform"):
        weak_transform(torch.zeros(1, 1, 2, 2, 2), "shear")
    with pytest.raises(ValueError, match="Unknown weak transforms"):
        ConsistencyLoss(weak=("flip0", "zoom"))


def test_entropy_softmax_and_sigmoid():
    logits = torch.randn(2, 4, 3, 3, 3)
    p = torch.softmax(logits, 1)
    assert entropy(logits).item() == pytest.approx((-(p * torch.log(p + 1e-6)).sum(1)).mean().item(), rel=1e-6)
    q = torch.sigmoid(logits)
    assert entropy(logits, sigmoid=True).item() == pytest.approx((-(q * torch.log(q + 1e-6)).sum(1)).mean().item())
    uniform = torch.zeros(1, 4, 2, 2, 2)
    assert entropy(uniform).item() == pytest.approx(torch.log(torch.tensor(4.0)).item(), rel=1e-5)
    assert EntropyLoss()(nn.Identity(), logits).item() == pytest.approx(entropy(logits).item())


def test_pseudo_label_of_equivariant_network_is_its_prediction():
    """A voxel-wise network commutes with flips/rotations, so the averaged label equals its prediction."""
    net = nn.Conv3d(1, 3, 1)
    x = torch.randn(1, 1, 6, 6, 4)
    target = soft_pseudo_label(net, x)
    torch.testing.assert_close(target, torch.softmax(net(x), 1), rtol=1e-5, atol=1e-6)


def test_pseudo_label_averages_mapped_back_predictions():
    """A position-dependent network: the label is the mean of the back-mapped predictions."""
    bias = torch.randn(1, 2, 4, 4, 3)

    def net(x):
        return torch.cat([x, -x], 1) + bias

    x = torch.randn(1, 1, 4, 4, 3)
    expected = torch.softmax(net(x), 1)
    for name in ("flip2",):
        expected = expected + weak_transform(torch.softmax(net(weak_transform(x, name)), 1), name, inverse=True)
    torch.testing.assert_close(soft_pseudo_label(net, x, weak=("flip2",)), expected / 2)


def test_strong_augmentation_range_device_and_seed():
    x = torch.rand(1, 16, 16, 8)
    aug = strong_augmentation(prob=1.0)
    aug.set_random_state(seed=3)
    y = torch.as_tensor(aug(x))
    assert y.shape == x.shape and y.device == x.device
    assert y.min().item() == pytest.approx(0.0, abs=1e-6) and y.max().item() == pytest.approx(1.0, abs=1e-6)
    assert not torch.allclose(y, x)
    aug.set_random_state(seed=3)
    assert torch.equal(torch.as_tensor(aug(x)), y)


def test_consistency_loss_is_soft_cross_entropy():
    net = nn.Conv3d(1, 3, 1)
    x = torch.rand(2, 1, 6, 6, 4)
    loss = ConsistencyLoss(weak=(), prob=0.0)  # no weak views, strong = rescale to [0, 1] only
    target = torch.softmax(net(x), 1)
    rescaled = torch.stack([(v - v.min()) / (v.max() - v.min()) for v in x])
    expected = -(target * torch.log_softmax(net(rescaled), 1)).sum(1).mean()
    assert loss(net, x).item() == pytest.approx(expected.item(), rel=1e-5)
    bce = ConsistencyLoss(weak=(), prob=0.0, sigmoid=True)(net, x)
    ref = nn.functional.binary_cross_entropy_with_logits(net(rescaled), torch.sigmoid(net(x)))
    assert bce.item() == pytest.approx(ref.item(), rel=1e-5)


def test_device_gaussian_noise_is_seeded_and_bounded():
    x = torch.zeros(1, 32, 32, 16)
    noise = DeviceGaussianNoise(prob=1.0, std=0.2)
    noise.set_random_state(seed=1)
    a = noise(x)
    noise.set_random_state(seed=1)
    assert torch.equal(noise(x), a)
    assert 0 < a.std().item() <= 0.2 and abs(a.mean().item()) < 0.01
    assert torch.equal(DeviceGaussianNoise(prob=0.0)(x), x)


def test_batched_views_equal_separate_views_without_batch_statistics():
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3), nn.Conv3d(3, 3, 1)).eval()
    x = torch.randn(2, 1, 8, 8, 6)
    separate = soft_pseudo_label(net, x, batch_views=False)
    batched = soft_pseudo_label(net, x, batch_views=True)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-6)
    assert ConsistencyLoss(batch_views=True).batch_views
