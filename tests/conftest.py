"""Shared fixtures and helpers: tiny networks for unit tests, the bundle and the real data.

Test modules import the helpers as ``from tests.conftest import ...``; fixtures come by name.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
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


def synthetic_nifti(path, shape=(44, 40, 22), spacing=(1.8, 2.2, 4.5), seed=0) -> str:
    """A synthetic MR-like volume: a bright body in a dark background, off the bundle's spacing."""
    rng = np.random.default_rng(seed)
    image = rng.random(shape, dtype=np.float32) * 50
    image[6:38, 6:34, 3:19] += 400
    nib.save(nib.Nifti1Image(image, np.diag([*spacing, 1.0])), str(path))
    return str(path)


@pytest.fixture
def tiny_bundle(tmp_path):
    """The bundle's inference.json with a tiny UNet (its weights in models/model.pt) and 16-voxel windows."""
    root = tmp_path / "bundle"
    (root / "models").mkdir(parents=True)
    shutil.copytree(BUNDLE_DIR / "configs", root / "configs")
    config = json.loads((root / "configs" / "inference.json").read_text())
    config["network_def"].update(
        {"out_channels": 3, "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}
    )
    config["num_classes"] = 3
    config["roi_size"] = [16, 16, 8]
    (root / "configs" / "inference.json").write_text(json.dumps(config))
    torch.save(tiny_unet().state_dict(), root / "models" / "model.pt")
    data = tmp_path / "volumes"
    data.mkdir()
    synthetic_nifti(data / "a_image.nii.gz", seed=1)
    synthetic_nifti(data / "b_image.nii.gz", shape=(40, 44, 20), seed=2)
    synthetic_nifti(data / "a_label.nii.gz", seed=3)  # excluded by the bundle's rule
    return root, data
