"""The benchmark tooling's shared helpers: one way to read the bundle's configs."""

from __future__ import annotations

import pytest

from grata_monai.bench.common import bundle_config, names, out_path, read_config
from tests.conftest import BUNDLE_DIR


def test_bundle_config_sets_the_bundle_root_and_reads_each_config():
    parser = bundle_config(BUNDLE_DIR)
    assert (
        parser["bundle_root"] == str(BUNDLE_DIR)
        and parser["inferer"]["_target_"] == "grata_monai.GraTaInferer"
    )
    assert bundle_config(BUNDLE_DIR, "train.json")["roi_size"] == parser["roi_size"]


def test_read_config_applies_overrides():
    parser = read_config(BUNDLE_DIR / "configs" / "inference.json", dataset_dir="/data/x")
    assert parser["dataset_dir"] == "/data/x"


def test_names_and_out_path():
    assert names("a,b,") == ("a", "b") and names(["a"]) == ("a",)
    with pytest.raises(ValueError, match="--out"):
        out_path(None)
