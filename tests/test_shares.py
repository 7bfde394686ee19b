"""grata_monai.bundle.shares: one bundle run split over processes gives the files of one process."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from grata_monai.bundle.console import BadSetting, OutputsExist
from grata_monai.bundle.shares import ProcessFailed, bundle_items, run_in_processes, shares

QUICK = {"inferer#steps": 1, "inferer#patches_per_step": 1}


def _run_args(root, data, out, **more) -> dict:
    return {
        "config_file": str(root / "configs" / "inference.json"),
        "bundle_root": str(root),
        "dataset_dir": str(data),
        "output_dir": str(out),
        **QUICK,
        **more,
    }


def test_shares_deal_the_items_out_in_turn():
    assert shares(list("abcde"), 2) == [["a", "c", "e"], ["b", "d"]]
    assert shares(list("ab"), 4) == [["a"], ["b"]]
    assert shares([], 3) == []


def test_bundle_items_are_what_the_bundle_lists(tiny_bundle, tmp_path):
    root, data = tiny_bundle
    items = bundle_items(_run_args(root, data, tmp_path / "out"))
    assert sorted(i["image"] for i in items) == [
        str(data / "a_image.nii.gz"),
        str(data / "b_image.nii.gz"),
    ]


def test_two_processes_write_the_files_of_one(tiny_bundle, tmp_path):
    from monai.bundle import run

    root, data = tiny_bundle
    run(**_run_args(root, data, tmp_path / "one"))
    run_in_processes(2, _run_args(root, data, tmp_path / "two"))
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "two").iterdir())
    segs = [n for n in names if n.endswith("_seg.nii.gz")]
    assert len(segs) == 2
    for name in segs:
        one, two = (nib.load(str(tmp_path / d / name)) for d in ("one", "two"))
        np.testing.assert_array_equal(np.asarray(one.dataobj), np.asarray(two.dataobj))
        np.testing.assert_array_equal(one.affine, two.affine)
    with pytest.raises(OutputsExist):  # refused before any process starts, as one run refuses
        run_in_processes(2, _run_args(root, data, tmp_path / "two"))


def test_a_failed_process_is_raised(tiny_bundle, tmp_path):
    root, data = tiny_bundle
    args = _run_args(root, data, tmp_path / "out", **{"inferer#steps": -1})
    with pytest.raises(ProcessFailed, match="2 of 2 processes failed"):
        run_in_processes(2, args)


@pytest.mark.parametrize("processes", [0, -1, "two", 1.5, True])
def test_bad_process_counts_are_refused(tiny_bundle, tmp_path, processes):
    root, data = tiny_bundle
    with pytest.raises(BadSetting, match="--processes must be a whole number"):
        run_in_processes(processes, _run_args(root, data, tmp_path / "out"))
