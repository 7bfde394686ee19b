"""grata-monai cache: the bundle's preprocessing applied once, saved as uint8 NIfTI + datalist."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from grata_monai.bench.cache import build_cache
from tests.conftest import BUNDLE_DIR

TRAIN = str(BUNDLE_DIR / "configs" / "train.json")


def _write_dataset(root, n=2):
    """Synthetic labelled volumes (LAS, anisotropic) in the datalist layout of the abdomen set."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir()
    entries = []
    for i in range(n):
        img = rng.normal(100, 5, (40, 36, 30)).astype(np.int16)
        img[8:32, 8:28, 4:26] += 300
        lab = np.zeros(img.shape, np.uint8)
        lab[12:20, 12:20, 10:16] = 1
        lab[22:28, 12:18, 10:14] = 4
        affine = np.diag([-1.5, 1.5, 3.0, 1.0])
        nib.save(nib.Nifti1Image(img, affine), str(root / "img" / f"v{i}_image.nii.gz"))
        nib.save(nib.Nifti1Image(lab, affine), str(root / "img" / f"v{i}_label.nii.gz"))
        entries.append({"image": f"img/v{i}_image.nii.gz", "label": f"img/v{i}_label.nii.gz"})
    spec = {
        "labels": {"0": "background", "1": "liver", "4": "spleen"},
        "train": entries[:1],
        "test": entries[1:],
    }
    (root / "datalist.json").write_text(json.dumps(spec))
    return spec


def test_build_cache(tmp_path):
    src, out = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    spec = _write_dataset(src)
    path = build_cache(str(src), str(out), TRAIN, num_workers=0, crop_splits=("train",), z_margin=1)
    cached = json.loads(open(path).read())
    assert cached == spec
    for split in ("train", "test"):
        e = cached[split][0]
        img, lab = nib.load(str(out / e["image"])), nib.load(str(out / e["label"]))
        assert img.get_data_dtype() == np.uint8 and lab.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(nib.affines.voxel_sizes(img.affine), [2, 2, 4])
        np.testing.assert_allclose(img.affine, lab.affine)
        assert img.shape == lab.shape
        data = np.asarray(img.dataobj)
        assert data.max() == 255 and data.min() == 0
        assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 4}
    # the train split is cut to the labelled slices (+1), the test split keeps the body crop
    tr = nib.load(str(out / cached["train"][0]["label"]))
    te = nib.load(str(out / cached["test"][0]["label"]))
    assert tr.shape[2] < te.shape[2]
    z = np.nonzero(np.asarray(tr.dataobj).any((0, 1)))[0]
    assert z[0] == 1 and z[-1] == tr.shape[2] - 2
    # world position of the labelled region is unchanged by the cut
    te_z = np.nonzero(np.asarray(te.dataobj).any((0, 1)))[0]
    assert (tr.affine @ [0, 0, z[0], 1])[2] == pytest.approx((te.affine @ [0, 0, te_z[0], 1])[2])
    with pytest.raises(FileExistsError, match="--overwrite"):
        build_cache(str(src), str(out), TRAIN, num_workers=0)


def test_cli_cache(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    _write_dataset(src, n=1)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "grata_monai.cli",
            "cache",
            "--data_dir",
            str(src),
            "--out_dir",
            str(tmp_path / "c"),
            "--num_workers",
            "0",
            "--config_file",
            TRAIN,
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "c" / "datalist.json").is_file()
