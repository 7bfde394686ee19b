"""Entropy, the soft pseudo-label and the consistency loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from grata_monai.losses import (
    STRONG_VIEWS,
    ConsistencyLoss,
    EntropyLoss,
    entropy,
    soft_pseudo_label,
)
from grata_monai.views import weak_transform


def test_unknown_weak_view():
    with pytest.raises(ValueError, match="Unknown weak transforms"):
        ConsistencyLoss(weak=("flip0", "zoom"))


def test_entropy_softmax_and_sigmoid():
    logits = torch.randn(2, 4, 3, 3, 3)
    p = torch.softmax(logits, 1)
    assert entropy(logits).item() == pytest.approx(
        (-(p * torch.log(p + 1e-6)).sum(1)).mean().item(), rel=1e-6
    )
    q = torch.sigmoid(logits)
    assert entropy(logits, sigmoid=True).item() == pytest.approx(
        (-(q * torch.log(q + 1e-6)).sum(1)).mean().item()
    )
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
        expected = expected + weak_transform(
            torch.softmax(net(weak_transform(x, name)), 1), name, inverse=True
        )
    torch.testing.assert_close(soft_pseudo_label(net, x, weak=("flip2",)), expected / 2)


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


def test_batched_views_equal_separate_views_without_batch_statistics():
    net = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.BatchNorm3d(3), nn.Conv3d(3, 3, 1)).eval()
    x = torch.randn(2, 1, 8, 8, 6)
    separate = soft_pseudo_label(net, x, batch_views=False)
    batched = soft_pseudo_label(net, x, batch_views=True)
    torch.testing.assert_close(batched, separate, rtol=1e-5, atol=1e-6)
    assert ConsistencyLoss(batch_views=True).batch_views


@pytest.mark.parametrize("name", sorted(STRONG_VIEWS))
def test_each_strong_view_is_seeded_by_the_loss(name):
    x = torch.rand(2, 1, 12, 12, 8, generator=torch.Generator().manual_seed(0))
    a, b = (ConsistencyLoss(("flip1",), strong=name, seed=3, prob=1.0) for _ in range(2))
    assert isinstance(a.strong, STRONG_VIEWS[name])
    torch.testing.assert_close(a.strong(x), b.strong(x))
    a.set_random_state(np.random.RandomState(4))
    assert not torch.equal(a.strong(x), b.strong(x))
