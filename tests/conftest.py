"""Shared fixtures and helpers: tiny networks for unit tests, the bundle and the real data.

Test modules import the helpers as ``from tests.conftest import ...``; fixtures come by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from monai.networks.nets import UNet

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("GRATA_DATA_DIR", ROOT.parent / "shared" / "data"))
BUNDLE_DIR = Path(os.environ.get("GRATA_BUNDLE_DIR", ROOT / "bundle"))


def tiny_unet(norm="batch", seed: int = 0) -> torch.nn.Module:
    """A small 3D MONAI UNet with adaptable norm layers, in eval mode."""
    torch.manual_seed(seed)
    return UNet(3, 1, 3, (4, 8, 16), (2, 2), num_res_units=1, norm=norm).eval()


@pytest.fixture
def unet() -> torch.nn.Module:
    return tiny_unet()


@pytest.fixture
def volume() -> torch.Tensor:
    """A (1, 1, 40, 36, 20) volume: a bright blob (the 'body') in a dark background."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 40, 36, 20, generator=g) * 0.2
    x[..., 8:32, 6:30, 4:16] += 0.6
    return x


def abdomen_dir() -> Path:
    """The real abdomen data set, or skip the test with the reason."""
    path = DATA_DIR / "abdomen"
    if not (path / "datalist.json").is_file():
        pytest.skip(
            f"real data not found at {path} (set GRATA_DATA_DIR to the folder holding abdomen/)"
        )
    return path
