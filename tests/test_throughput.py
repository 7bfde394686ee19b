"""grata_monai.bench.throughput: the bundle's pipeline split into stages, and the command on a tiny bundle."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from grata_monai.bench.throughput import (
    STAGES,
    _Pipeline,
    _writers,
    run_throughput,
    split_at_labels,
    split_pipeline,
    write_markdown,
)
from grata_monai.defaults import loader_workers
from tests.conftest import BUNDLE_DIR, ROOT, tiny_unet


def _nifti(path, shape=(44, 40, 22), spacing=(1.8, 2.2, 4.5), seed=0) -> str:
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
    _nifti(data / "a_image.nii.gz", seed=1)
    _nifti(data / "b_image.nii.gz", shape=(40, 44, 20), seed=2)
    _nifti(data / "a_label.nii.gz", seed=3)  # excluded by the bundle's rule
    return root, data


def test_loader_workers_sized_to_the_machine():
    assert loader_workers(2) == 1
    assert loader_workers(16) == 8
    assert loader_workers(128) == 8
    assert loader_workers(1) == 1


def test_split_pipeline_matches_the_bundle_preprocessing(tmp_path):
    """Load then preprocess (on the CPU, with and without the device step) equals the bundle's preprocessing."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE_DIR / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE_DIR)
    preprocessing = parser.get_parsed_content("preprocessing")
    postprocessing = parser.get_parsed_content("postprocessing")
    item = {"image": _nifti(tmp_path / "x.nii.gz")}
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
        pipe = _Pipeline(root, torch.device("cpu"), str(out), device_preprocessing=False)
        item = pipe.volumes(data)[0]
        loaded, times = pipe.loader([item], 0).dataset[0]
        batch, pred, _ = pipe.infer("plain", loaded, times)
        writer = _writers(pipe, 1, mode)
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


@pytest.mark.parametrize(
    "device_preprocessing, repeats, writers, streams, write_in",
    [
        (False, 2, 0, 1, "threads"),
        (True, 1, 0, 1, "threads"),
        (False, 2, 2, 2, "threads"),
        (False, 1, 2, 1, "processes"),
    ],
)
def test_run_throughput_writes_both_methods(
    tiny_bundle, tmp_path, device_preprocessing, repeats, writers, streams, write_in
):
    root, data = tiny_bundle
    out = tmp_path / "out"
    results = run_throughput(
        str(data),
        str(root),
        str(out),
        name="tp",
        repeats=repeats,
        device="cpu",
        num_workers=1,
        device_preprocessing=device_preprocessing,
        writers=writers,
        write_in=write_in,
        streams=streams,
    )
    saved = json.loads((out / "tp.json").read_text())
    assert saved["settings"]["volumes"] == ["a_image.nii.gz", "b_image.nii.gz"]
    assert saved["settings"]["device_preprocessing"] is device_preprocessing
    assert saved["settings"]["writers"] == writers and saved["settings"]["streams"] == streams
    assert saved["settings"]["write_in"] == write_in
    assert saved["settings"]["plain"]["roi_size"] == [16, 16, 8]
    assert saved["settings"]["grata"]["method"] == "grata"
    for method in ("plain", "grata"):
        m = saved["methods"][method]
        assert len(m["passes"]) == repeats and m["volumes_per_s"] > 0 and m["peak_memory_mib"] > 0
        assert set(m["stages_s"]) == set(STAGES)
        assert (
            m["stages_s"]["load"] > 0
            and m["stages_s"]["write"] > 0
            and m["stages_s"]["preprocess"] > 0
        )
    assert saved["methods"]["plain"]["stages_s"]["adapt"] == 0.0
    assert saved["methods"]["grata"]["stages_s"]["adapt"] > 0.0
    assert saved["grata_over_plain"] == pytest.approx(results["grata_over_plain"])
    md = (out / "tp.md").read_text()
    assert "| plain |" in md and "| grata |" in md and "GraTa/plain" in md


def test_run_throughput_refuses_to_replace_results(tiny_bundle, tmp_path):
    root, data = tiny_bundle
    (tmp_path / "tp.md").write_text("earlier results")
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_throughput(str(data), str(root), str(tmp_path), name="tp", device="cpu")
    assert (tmp_path / "tp.md").read_text() == "earlier results"


@pytest.mark.parametrize(
    "options",
    [
        {"repeats": 0},
        {"num_workers": -1},
        {"limit": 0},
        {"writers": -1},
        {"streams": 0},
        {"write_in": "process", "writers": 2},
        {"write_in": "processes"},
        {"settings": "settle_windows=4"},
        {"settings": {"settle_window": 4}},
    ],
)
def test_run_throughput_rejects_bad_options(tiny_bundle, tmp_path, options):
    root, data = tiny_bundle
    with pytest.raises(ValueError):
        run_throughput(str(data), str(root), str(tmp_path), device="cpu", **options)


def test_run_throughput_replaces_inferer_settings(tiny_bundle, tmp_path):
    root, data = tiny_bundle
    results = run_throughput(
        str(data),
        str(root),
        str(tmp_path),
        device="cpu",
        num_workers=0,
        limit=1,
        repeats=1,
        settings={"settle_windows": 1, "statistics_candidates": (0.0, 1.0)},
    )
    grata = results["settings"]["grata"]
    assert grata["settle_windows"] == 1 and list(grata["statistics_candidates"]) == [0.0, 1.0]
    assert results["settings"]["overrides"]["settle_windows"] == 1


@pytest.mark.parametrize(
    "results", sorted((ROOT / "docs" / "benchmarks").glob("throughput*.json")), ids=lambda p: p.stem
)
def test_committed_tables_are_generated_from_their_results(results):
    """Each committed throughput table is write_markdown of its JSON file (notes included)."""
    table = results.with_suffix(".md").read_text()
    assert table == write_markdown(json.loads(results.read_text()))
