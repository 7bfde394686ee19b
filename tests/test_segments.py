"""The SDK-free part of the Deploy app: segment labels, their codes and the bundle metadata."""

from __future__ import annotations

import pytest
from pydicom.sr.codedict import codes

from grata_monai import defaults
from grata_monai.deploy.segments import SEGMENT_CODES, bundle_metadata, segment_labels
from tests.conftest import BUNDLE_DIR


def test_segment_labels_are_the_organs_and_coded():
    labels = segment_labels(bundle_metadata(BUNDLE_DIR))
    assert tuple(labels) == defaults.ORGANS == tuple(SEGMENT_CODES)
    assert SEGMENT_CODES["liver"] == codes.SCT.Liver and SEGMENT_CODES["spleen"] == codes.SCT.Spleen
    assert all(code.scheme_designator == "SCT" for code in SEGMENT_CODES.values())


def test_metadata_from_an_exported_model_and_a_clear_error(tmp_path):
    assert (
        bundle_metadata(BUNDLE_DIR / "models" / "model.ts")["version"]
        == bundle_metadata(BUNDLE_DIR)["version"]
    )
    with pytest.raises(FileNotFoundError, match="ckpt_export"):
        bundle_metadata(tmp_path)
