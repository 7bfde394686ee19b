"""grata_monai.bench.pipeline: the bundle's pipeline split into stages; writer threads and processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from grata_monai.bench.pipeline import (
    Pipeline,
    bundle_volumes,
    split_at_labels,
    split_pipeline,
    start_writers,
)
from tests.conftest import BUNDLE_DIR, synthetic_nifti


def test_split_pipeline_matches_the_bundle_preprocessing(tmp_path):
    """Load then preprocess (on the CPU, with and without the device step) equals the bundle's preprocessing."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_DIR / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE_DIR)
    preprocessing = parser.get_parsed_content("preprocessing")
    postprocessing = parser.get_parsed_content("postprocessing")
    item = {"image": synthetic_nifti(tmp_path / "x.nii.gz")}
    today = preprocessing(dict(item))["image"]
    for device in (None, torch.device("cpu")):
        load, pre, post, write = split_pipeline(preprocessing, postprocessing, device)
        staged = pre(load(dict(item)))["image"]
        assert staged.shape == today.shape
        assert torch.allclose(staged.as_tensor(), today.as_tensor())
        assert [type(t).__name__ for t in write.transforms] == ["SaveImaged"]
        assert "Invertd" in [type(t).__name__ for t in post.transforms]
    first = split_pipeline(preprocessing, postprocessing, torch.device("cpu"))[1].transforms[0]
    assert type(first).__name__ == "EnsureTyped"


def test_split_pipeline_needs_a_loader_and_a_writer():
    from monai.transforms import Compose, Identityd

    with pytest.raises(ValueError, match="LoadImaged"):
        split_pipeline(Compose([Identityd("image")]), Compose([Identityd("pred")]))


def test_split_at_labels_ends_the_first_part_with_the_argmax():
    from monai.transforms import Activationsd, AsDiscreted, Compose, Identityd

    argmax = AsDiscreted("pred", argmax=True)
    to_labels, rest = split_at_labels(
        Compose([Activationsd("pred", softmax=True), argmax, Identityd("pred")])
    )
    assert to_labels.transforms[-1] is argmax and len(to_labels.transforms) == 2
    assert [type(t).__name__ for t in rest.transforms] == ["Identityd"]
    to_labels, rest = split_at_labels(Compose([Identityd("pred")]))
    assert not to_labels.transforms and len(rest.transforms) == 1


def test_writer_processes_write_what_the_inferring_thread_writes(tiny_bundle, tmp_path):
    """The same volume finished in this thread and handed to a writer process: the same label file."""
    import nibabel as nib

    root, data = tiny_bundle
    written = {}
    for mode in ("threads", "processes"):
        out = tmp_path / mode
        pipe = Pipeline(root, torch.device("cpu"), str(out), device_preprocessing=False)
        item = bundle_volumes(root, data)[0]
        loaded, times = pipe.loader([item], 0).dataset[0]
        batch, pred, _ = pipe.infer("plain", loaded, times)
        writer = start_writers(pipe, 1, mode)
        try:
            if mode == "threads":
                writer.submit(pipe.finish, batch, pred, times).result()
            else:
                pipe.hand_off(batch, pred, times, writer)()
        finally:
            writer.shutdown()
        assert times["postprocess"] > 0 and times["write"] > 0
        (path,) = out.glob("*.nii.gz")
        written[mode] = nib.load(path)
    a, b = written["threads"], written["processes"]
    assert np.array_equal(a.get_fdata(), b.get_fdata()) and np.allclose(a.affine, b.affine)
    assert a.get_fdata().max() > 0  # organs found, not an empty map
