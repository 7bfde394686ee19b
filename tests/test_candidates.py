"""grata_monai.bench.candidates: scoring one candidate (synthetic), and one volume's candidates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grata_monai.bench.candidates import ALPHAS, score_candidate, volume_candidates
from grata_monai.postprocess import fit_layout

AFFINE = np.diag([2.0, 2.0, 4.0, 1.0])


def test_score_candidate_dice_with_and_without_post_processing():
    label = np.zeros((20, 20, 10), np.uint8)
    label[2:8, 2:8, 2:6] = 1
    probs = np.zeros((2, 20, 20, 10), np.uint8)
    probs[0] = 255
    probs[:, 2:8, 2:8, 2:6] = [[[[0]]], [[[255]]]]
    probs[:, 15, 15, 8] = [0, 255]  # one false-positive voxel far away
    layout = fit_layout([(label, AFFINE)], [1])
    scores = score_candidate((probs, label, AFFINE, layout, 0.016))
    assert scores["dice"]["raw"][0] == pytest.approx(2 * 144 / (145 + 144))
    assert scores["dice"]["lcc"][0] == pytest.approx(1.0) and scores["dice"]["layout"][
        0
    ] == pytest.approx(1.0)
    assert scores["removed_fraction"]["layout"] == pytest.approx(1 / 145)
    assert scores["volume_ml"][0] == pytest.approx(144 * 0.016)


def test_volume_candidates_one_prediction_per_blend(unet, volume):
    probs, signals = volume_candidates(
        unet, volume, adapt=False, device=torch.device("cpu"), reference=[1 / 32] * 32
    )
    assert list(probs) == [f"{a:g}" for a in ALPHAS] + ["ensemble"]
    assert all(p.dtype == np.uint8 and p.shape[1:] == volume.shape[2:] for p in probs.values())
    assert not np.array_equal(probs["0"], probs["1"])  # source and own statistics differ
    assert signals["cosine"] == [] and signals["stat_shift"] > 0
