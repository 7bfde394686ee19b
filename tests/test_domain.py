"""domain.py: intensity histograms, their distance, the blending weight and the reference."""

from __future__ import annotations

import pytest
import torch

from grata_monai.domain import (
    foreground_entropies,
    foreground_entropy,
    histogram_distance,
    intensity_histogram,
    reference_histogram,
    volume_weight,
)


def test_histogram_is_normalized_and_ignores_air():
    x = torch.zeros(1, 10, 10, 10)
    x[0, :5] = 0.75
    h = intensity_histogram(x, bins=4)
    assert torch.allclose(h, torch.tensor([0.0, 0.0, 0.0, 1.0]))  # the zeros (air) are not counted


def test_distance_is_zero_to_itself_and_two_for_disjoint():
    a, b = torch.full((1, 4, 4, 4), 0.2), torch.full((1, 4, 4, 4), 0.9)
    assert histogram_distance(a, intensity_histogram(a, 8).tolist()) == pytest.approx(0.0)
    assert histogram_distance(a, intensity_histogram(b, 8).tolist()) == pytest.approx(2.0)


def test_volume_weight_is_piecewise_linear():
    assert volume_weight(0.1, (0.4, 0.6)) == 0.0
    assert volume_weight(0.5, (0.4, 0.6)) == pytest.approx(0.5)
    assert volume_weight(0.9, (0.4, 0.6)) == 1.0


def test_reference_is_the_mean_histogram():
    a, b = torch.full((1, 4, 4, 4), 0.2), torch.full((1, 4, 4, 4), 0.9)
    ref = reference_histogram([a, b], bins=2)
    assert ref == [0.5, 0.5]
    with pytest.raises(ValueError, match="at least one"):
        reference_histogram([])


def test_foreground_entropy_is_the_mean_entropy_over_predicted_organs():
    logits = torch.zeros(1, 2, 4, 4, 2)
    logits[:, 1, :2] = 10.0  # confident organ voxels
    logits[:, 1, 2:] = -10.0  # confident background: not counted
    confident = foreground_entropy(logits)
    logits[:, 1, :2] = 0.1  # organ predicted, but barely
    assert confident < 0.01 and foreground_entropy(logits) == pytest.approx(0.693, abs=0.01)
    assert foreground_entropy(
        torch.zeros(1, 2, 2, 2, 2) - torch.tensor([0.0, 1.0]).view(1, 2, 1, 1, 1)
    ) == float("inf")
    assert foreground_entropy(torch.full((1, 1, 2, 2, 2), 10.0), sigmoid=True) < 0.01


def test_foreground_entropies_are_each_outputs_entropy():
    g = torch.Generator().manual_seed(0)
    outputs = [torch.randn(1, 3, 4, 4, 2, generator=g) * s for s in (0.5, 2.0, 8.0)]
    entropies = foreground_entropies(outputs)
    assert entropies == pytest.approx([foreground_entropy(o) for o in outputs])
    assert entropies[0] > entropies[1] > entropies[2]  # sharper logits, lower entropy
