"""Patch sampling from the body, and the windows that settle the normalization statistics."""

from __future__ import annotations

import numpy as np
import torch

from grata_monai.sampling import body_patches, windows


def test_body_patches_are_centred_on_the_body_and_seeded(volume):
    def sample():  # threshold 0.3 of the range: above the background (< 0.2), below the blob (> 0.6)
        return body_patches(
            volume[0], (8, 8, 8), 6, np.random.RandomState(0), torch.device("cpu"), 0.3
        )()

    patches = sample()
    assert patches.shape == (6, 1, 8, 8, 8)
    assert (patches[..., 4, 4, 4] > 0.6).all()
    again = sample()
    assert torch.equal(patches, again)


def test_blank_volume_samples_anywhere_and_small_volume_is_padded():
    patches = body_patches(
        torch.zeros(1, 5, 6, 4), (8, 8, 8), 2, np.random.RandomState(0), torch.device("cpu")
    )()
    assert patches.shape == (2, 1, 8, 8, 8) and torch.isfinite(patches).all()


def test_windows_tile_the_padded_volume_without_overlap(volume):
    tiles = list(windows(volume[0], (16, 16, 16), torch.device("cpu")))
    assert all(t.shape == (1, 1, 16, 16, 16) for t in tiles)
    assert len(tiles) == 3 * 3 * 2  # 40x36x20 in 16^3 windows, the last ones shifted inside
    assert sum(float(t.sum()) for t in tiles) >= float(volume.sum())


def test_windows_limit_keeps_the_brightest_in_tiling_order(volume):
    tiles = list(windows(volume[0], (16, 16, 16), torch.device("cpu")))
    top = list(windows(volume[0], (16, 16, 16), torch.device("cpu"), limit=4))
    means = sorted((float(t.mean()) for t in tiles), reverse=True)
    assert len(top) == 4 and sorted(float(t.mean()) for t in top) == sorted(means[:4])
    positions = [next(i for i, t in enumerate(tiles) if torch.equal(t, w)) for w in top]
    assert positions == sorted(positions)
    assert len(list(windows(volume[0], (16, 16, 16), torch.device("cpu"), limit=100))) == len(tiles)
