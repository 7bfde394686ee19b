"""The MONAI bundle in bundle/: metadata, configs, TorchScript export and an end-to-end run.

The end-to-end tests run ``python -m monai.bundle run`` in a subprocess, with ``--bundle_root``
(the model-zoo convention: ``bundle_root`` is ``"."`` otherwise), from a temporary working directory
and from the repository root: on the bundle's embedded sample (one CHAOS MR volume, the default
input), on a mixed folder built from it, and on real MR volumes from the shared data folder, some
with fewer adaptation steps than the shipped config so the CPU time stays modest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser

from grata_monai import defaults
from tests.conftest import BUNDLE_DIR as BUNDLE
from tests.conftest import DATA_DIR, ROOT, abdomen_dir

CONFIGS = BUNDLE / "configs"
SAMPLE = BUNDLE / "sample"
META = CONFIGS / "metadata.json"
INFERENCE = CONFIGS / "inference.json"
EVALUATE = CONFIGS / "evaluate.json"
TRAIN = CONFIGS / "train.json"
LABELS = {"0": "background", "1": "liver", "2": "right kidney", "3": "left kidney", "4": "spleen"}
MR_VOLUME = "mr/mr_01_image.nii.gz"
QUICK = ["--inferer#steps", "2", "--inferer#patches_per_step", "2"]


def _parser(*files: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.read_meta(str(META))
    parser["bundle_root"] = str(BUNDLE)
    for k, v in overrides.items():
        parser[k] = v
    return parser


def _bundle_run(config_files: list[Path], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{f}'" for f in config_files) + "]"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--bundle_root",
        str(BUNDLE),
        *args,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(BUNDLE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def test_required_files():
    for rel in (
        "LICENSE",
        "configs/metadata.json",
        "models/model.pt",
        "models/model.ts",
        "docs/README.md",
        "docs/data_license.txt",
        "configs/inference.json",
        "configs/train.json",
        "configs/evaluate.json",
    ):
        assert (BUNDLE / rel).is_file(), rel


def test_metadata_required_keys():
    """The bundle spec's mandatory keys, checked offline (verify_metadata would download its schema)."""
    meta = json.loads(META.read_text())
    for key in (
        "version",
        "changelog",
        "monai_version",
        "pytorch_version",
        "numpy_version",
        "required_packages_version",
        "task",
        "description",
        "authors",
        "copyright",
        "network_data_format",
    ):
        assert meta.get(key) not in (None, ""), key
    assert meta["version"] in meta["changelog"]
    fmt = meta["network_data_format"]
    for io, name in (("inputs", "image"), ("outputs", "pred")):
        entry = fmt[io][name]
        for key in (
            "type",
            "format",
            "modality" if io == "inputs" else "type",
            "num_channels",
            "spatial_shape",
            "dtype",
            "value_range",
            "is_patch_data",
            "channel_def",
        ):
            assert key in entry, f"{io}.{name}.{key}"
        assert len(entry["spatial_shape"]) == 3
    assert fmt["inputs"]["image"]["num_channels"] == 1
    assert fmt["outputs"]["pred"]["num_channels"] == 5
    assert fmt["outputs"]["pred"]["channel_def"] == LABELS


def test_inference_config_builds():
    parser = _parser(INFERENCE)
    net = parser.get_parsed_content("network_def")
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert norms and all(m.affine for m in norms)
    assert parser.get_parsed_content("preprocessing") is not None
    assert parser.get_parsed_content("postprocessing") is not None
    assert type(parser.get_parsed_content("inferer")).__name__ == "GraTaInferer"
    assert (
        parser.get_parsed_content("network_def").state_dict().keys()
        == torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True).keys()
    )


def test_bundle_settings_are_the_library_defaults():
    """grata_monai.defaults holds the bundle's settings: the inferer's, the roi and the organs."""
    config = json.loads(INFERENCE.read_text())
    assert config["inferer"] == {
        "_target_": "grata_monai.GraTaInferer",
        "roi_size": "@roi_size",
        "sw_batch_size": defaults.SW_BATCH_SIZE,
        "overlap": defaults.OVERLAP,
        "steps": defaults.STEPS,
        "lr0": defaults.LR0,
        "batch_views": defaults.BATCH_VIEWS,
        "episodic": defaults.EPISODIC,
        "amp": defaults.AMP,
        "cuda_graphs": defaults.CUDA_GRAPHS,
        "channels_last": defaults.CHANNELS_LAST,
        "seed": defaults.SEED,
        "norm_stats": defaults.BUNDLE_NORM_STATS,
        "reference_histogram": "@reference_histogram",
        **{k: f"$@device_settings['{k}']" for k in defaults.DEVICE_SETTINGS["cuda"]},
    }
    assert config["device_settings"] == "$grata_monai.defaults.for_device(@device)"
    assert len(config["reference_histogram"]) == defaults.HISTOGRAM_BINS
    assert tuple(config["roi_size"]) == defaults.ROI_SIZE
    channels = json.loads(META.read_text())["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert tuple(channels[str(c)] for c in range(1, len(channels))) == defaults.ORGANS


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bundle_inferer_takes_the_device_settings(device):
    """The inferer the bundle builds follows its device (built, not run: no GPU needed)."""
    parser = ConfigParser()
    parser.read_config(str(INFERENCE))
    parser["device"] = f"$torch.device('{device}')"
    inferer = parser.get_parsed_content("inferer")
    expected = defaults.for_device(device)
    assert (inferer.patches_per_step, inferer.weak_transforms) == (
        expected["patches_per_step"],
        expected["weak_transforms"],
    )
    assert (inferer.guard is not None, inferer.settle_windows) == (
        expected["guard"],
        expected["settle_windows"],
    )
    assert inferer.patch_size == tuple(expected["patch_size"] or defaults.ROI_SIZE)
    assert inferer.statistics_candidates == expected["statistics_candidates"]
    assert inferer.pair_patches == expected["pair_patches"] == (device == "cpu")


def test_preprocessing_identical_in_train_validate_and_inference():
    """Inference's preprocessing is train's deterministic part with the image key only."""
    train = json.loads(TRAIN.read_text())["train"]["deterministic_transforms"]
    config = json.loads(INFERENCE.read_text())
    by_id = {"@image_keys": "image", "@spacing_mode": "bilinear"}
    assert config["image_keys"] == ["image"] and config["spacing_mode"] == by_id["@spacing_mode"]
    transforms = config["preprocessing"]["transforms"]
    # inference also checks its input: DICOM series folders first, then what the model can take
    assert transforms[3] == "@input_check"
    assert config["input_check"]["_target_"] == "grata_monai.bundle.checks.CheckInputd"
    inference = [
        {k: by_id.get(v, v) if isinstance(v, str) else v for k, v in t.items()}
        for t in transforms[:3] + transforms[4:]
    ]
    check, *inference = inference
    assert check["_target_"] == "grata_monai.bundle.dicom.CheckDicomSeriesd"
    assert len(train) == len(inference)
    for t, i in zip(train, inference):
        t = dict(t, keys="image") if t["keys"] == ["image", "label"] else dict(t)
        if t["_target_"] == "Spacingd":
            t["mode"] = t["mode"][0]
        assert t == i
    targets = [t["_target_"] for t in inference]
    assert targets == [
        "LoadImaged",
        "EnsureChannelFirstd",
        "Orientationd",
        "Spacingd",
        "ScaleIntensityRangePercentilesd",
        "CropForegroundd",
        "EnsureTyped",
    ]
    assert "reader" not in inference[0], "let MONAI pick the reader (ITK, else nibabel / pydicom)"
    assert (
        json.loads(TRAIN.read_text())["validate"]["preprocessing"]["transforms"]
        == "%train#deterministic_transforms"
    )


def test_train_config_builds():
    parser = _parser(TRAIN, dataset_dir="/nonexistent")
    assert parser.get_parsed_content("network_def") is not None
    assert parser.get_parsed_content("validate#preprocessing") is not None
    augment = parser.get_parsed_content("augment")
    assert (
        type(augment).__name__ == "GPUAugment"
        and augment.gin_prob > 0
        and augment.location_scale_prob > 0
    )
    assert parser.get_parsed_content("loss") is not None
    assert parser["train_key"] == "ct_train" and parser["val_key"] == "ct_val"


def _tiny_datalist(root: Path) -> None:
    """Two synthetic labelled volumes as ct_train and ct_val, in MONAI's datalist form."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(2):
        image = (rng.random((48, 40, 20)) * 100).astype(np.float32)
        label = np.zeros((48, 40, 20), dtype=np.uint8)
        label[10:30, 10:25, 5:15] = 1 + i
        image[label > 0] += 200
        affine = np.diag([2.0, 2.0, 4.0, 1.0])
        for kind, data in (("image", image), ("label", label)):
            nib.save(nib.Nifti1Image(data, affine), root / f"v{i}_{kind}.nii.gz")
        entries.append({"image": f"v{i}_image.nii.gz", "label": f"v{i}_label.nii.gz"})
    (root / "datalist.json").write_text(json.dumps({"ct_train": entries, "ct_val": entries[:1]}))


def test_train_one_iteration_on_cpu(tmp_path):
    """train.json runs end to end on the CPU (1 iteration, validation, checkpoint, training log)."""
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    _tiny_datalist(data)
    overrides = [
        "--max_epochs",
        "1",
        "--epoch_length",
        "1",
        "--val_interval",
        "1",
        "--batch_size",
        "2",
        "--roi_size",
        "[32, 32, 16]",
        "--train#dataset#num_workers",
        "0",
        "--validate#dataset#num_workers",
        "0",
    ]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            str(TRAIN),
            "--bundle_root",
            str(BUNDLE),
            "--dataset_dir",
            str(data),
            "--ckpt_dir",
            str(out),
            "--device",
            "$torch.device('cpu')",
            *overrides,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=dict(os.environ, CUDA_VISIBLE_DEVICES=""),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "model.pt").is_file()
    log = json.loads((out / "training_log.json").read_text())
    assert log["iterations"] == 1 and len(log["val"]) == 1


@pytest.mark.parametrize("layers", [(INFERENCE,), (INFERENCE, EVALUATE)])
def test_adapt_switch(layers):
    for value, expected in (("true", "GraTaInferer"), ("false", "SlidingWindowInferer")):
        parser = _parser(*layers, adapt=value)
        assert type(parser.get_parsed_content("evaluator#inferer")).__name__ == expected
    plain = _parser(*layers, adapt="false").get_parsed_content("evaluator#inferer")
    assert (list(plain.roi_size), plain.sw_batch_size, plain.overlap) == (
        [96, 96, 48],
        4,
        0.25,
    )  # same window
    assert (
        type(_parser(*layers, adapt="false").get_parsed_content("inferer")).__name__
        == "GraTaInferer"
    )  # hosts


def test_plain_run_of_one_file_via_grata_monai_bundle(tmp_path):
    """--adapt false: the source model and MONAI's SlidingWindowInferer on one NIfTI file; the summary says so,
    no audit report; ``python -m grata_monai.bundle`` prints no config notice."""
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "grata_monai.bundle",
        "run",
        "--config_file",
        str(INFERENCE),
        "--bundle_root",
        str(BUNDLE),
        "--dataset_dir",
        str(SAMPLE / "mr_01_image.nii.gz"),
        "--adapt",
        "false",
        "--output_dir",
        str(out),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(BUNDLE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["mr_01_image_seg.nii.gz"]
    assert r.stdout.splitlines()[-1] == (
        f"outputs in {out} (<name>_seg.nii.gz; plain run, --adapt false: the source "
        "model, no adaptation, no audit report)"
    )
    assert "parsing config_file" not in r.stderr and "Traceback" not in r.stderr
    seg = np.asarray(nib.load(str(out / "mr_01_image_seg.nii.gz")).dataobj)
    assert set(np.unique(seg).tolist()) == {0, 1, 2, 3, 4}


def test_wrong_config_file_stops_in_one_line(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "grata_monai.bundle",
        "run",
        "--config_file",
        str(CONFIGS / "inferenc.json"),
        "--bundle_root",
        str(BUNDLE),
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(BUNDLE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and r.stderr.splitlines() == [
        f"error: config file '{CONFIGS / 'inferenc.json'}' not found: did you mean '{INFERENCE}'?"
    ], r.stderr[-3000:]


def test_evaluate_without_data_stops_in_one_line(tmp_path):
    r = _bundle_run([INFERENCE, EVALUATE], tmp_path, "--dataset_dir", str(tmp_path / "none"))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.splitlines()[-1].startswith(
        f"error: no datalist at '{tmp_path / 'none' / 'datalist.json'}': "
        "pass --dataset_dir <folder holding datalist.json"
    )


def test_verify_net_in_out():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_net_in_out",
            "network_def",
            "--meta_file",
            str(META),
            "--config_file",
            str(INFERENCE),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "verified with no error" in r.stdout + r.stderr, r.stderr[-2000:]


def test_ckpt_export_reproduces_model_ts(tmp_path):
    out = tmp_path / "model.ts"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "ckpt_export",
            "network_def",
            "--filepath",
            str(out),
            "--ckpt_file",
            str(BUNDLE / "models" / "model.pt"),
            "--meta_file",
            str(META),
            "--config_file",
            str(INFERENCE),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    extra = {"metadata.json": "", "inference.json": ""}
    committed = torch.jit.load(
        str(BUNDLE / "models" / "model.ts"), map_location="cpu", _extra_files=extra
    ).eval()
    fresh = torch.jit.load(str(out), map_location="cpu").eval()
    assert json.loads(extra["metadata.json"])["version"] == json.loads(META.read_text())["version"]
    assert (
        json.loads(extra["inference.json"])["inferer"]
        == json.loads(INFERENCE.read_text())["inferer"]
    )
    x = torch.rand(1, 1, 96, 96, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(committed(x), fresh(x), atol=1e-5, rtol=1e-5)
    names = {m.original_name for m in committed.modules()}
    assert "BatchNorm3d" in names  # scripted, not traced: the norm layers stay adaptable


@pytest.mark.realdata
@pytest.mark.parametrize("where", ["elsewhere", "repository root"])
def test_inference_end_to_end_on_real_mr(tmp_path, where):
    src = abdomen_dir() / MR_VOLUME
    data, out = tmp_path / "in", tmp_path / "out"
    cwd = tmp_path / "elsewhere" if where == "elsewhere" else ROOT
    data.mkdir(), cwd.mkdir(exist_ok=True)
    shutil.copy(src, data / src.name)
    r = _bundle_run([INFERENCE], cwd, "--dataset_dir", str(data), "--output_dir", str(out), *QUICK)
    assert r.returncode == 0, r.stderr[-3000:]
    seg_path = out / src.name.replace(".nii.gz", "_seg.nii.gz")
    assert seg_path.is_file(), (
        sorted(p.name for p in out.iterdir()) if out.exists() else "no output dir"
    )
    img, seg = nib.load(str(src)), nib.load(str(seg_path))
    assert seg.shape == img.shape
    np.testing.assert_allclose(seg.affine, img.affine, atol=1e-4)
    labels = set(np.unique(np.asarray(seg.dataobj)).tolist())
    assert labels <= {0, 1, 2, 3, 4} and len(labels) > 1
    report = json.loads((out / src.name.replace(".nii.gz", "_seg_report.json")).read_text())
    assert (
        report["method"] == "grata"
        and len(report["steps"]) == 2
        and report["input"].endswith(src.name)
    )
    # a second run must not overwrite silently
    r = _bundle_run([INFERENCE], cwd, "--dataset_dir", str(data), "--output_dir", str(out), *QUICK)
    assert r.returncode != 0 and "--overwrite true" in r.stderr.splitlines()[-1]


def test_inference_without_bundle_root_says_to_pass_it(tmp_path):
    (tmp_path / "in").mkdir()
    nib.save(
        nib.Nifti1Image(
            np.zeros((8, 8, 4), np.int16), np.diag([8.0, 8.0, 16.0, 1.0])
        ),  # 64 mm: not too thin
        str(tmp_path / "in" / "v.nii.gz"),
    )
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        str(INFERENCE),
        "--dataset_dir",
        str(tmp_path / "in"),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "--bundle_root" in r.stderr


def test_inference_without_input_says_what_it_looked_for(tmp_path):
    r = _bundle_run(
        [INFERENCE], tmp_path, "--dataset_dir", str(tmp_path), "--output_dir", str(tmp_path / "o")
    )
    assert r.returncode != 0
    assert "no input volume found" in r.stderr and "*.nii.gz" in r.stderr


@pytest.mark.realdata
def test_evaluate_source_only_on_real_mr(tmp_path):
    src = abdomen_dir()
    data, cwd, out = tmp_path / "data", tmp_path / "elsewhere", tmp_path / "eval"
    (data / "mr").mkdir(parents=True), cwd.mkdir()
    for kind in ("image", "label"):
        shutil.copy(src / MR_VOLUME.replace("image", kind), data / "mr")
    (data / "datalist.json").write_text(
        json.dumps(
            {"mr_test": [{"image": MR_VOLUME, "label": MR_VOLUME.replace("image", "label")}]}
        )
    )
    r = _bundle_run(
        [INFERENCE, EVALUATE],
        cwd,
        "--dataset_dir",
        str(data),
        "--adapt",
        "false",
        "--output_dir",
        str(out),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = (out / "mean_dice_summary.csv").read_text().splitlines()
    assert summary[0].startswith("class,mean") and len(summary) == 6  # 4 organs + mean
    dice = float((out / "metrics.csv").read_text().split(",")[1])
    assert 0.0 <= dice <= 1.0


def test_evaluate_config_carries_the_label_through_every_spatial_transform():
    """evaluate.json overrides inference.json by name (image_keys, spacing_mode, handler ids)."""
    parser = _parser(INFERENCE, EVALUATE)
    for t in parser.get_parsed_content("preprocessing").transforms:
        name = type(t).__name__
        if name in (
            "LoadImaged",
            "EnsureChannelFirstd",
            "Orientationd",
            "Spacingd",
            "CropForegroundd",
            "EnsureTyped",
        ):
            assert "label" in t.keys, name
    overrides = [k for k in json.loads(EVALUATE.read_text()) if "#" in k]
    assert not [k for k in overrides if any(part.isdigit() for part in k.split("#"))], (
        "override by name, not position"
    )
    assert not [
        k
        for k in json.loads((CONFIGS / "multi_gpu_evaluate.json").read_text())
        if any(part.isdigit() for part in k.split("#"))
    ]


def test_default_run_segments_the_embedded_sample(tmp_path):
    """No --dataset_dir: the bundle segments its sample (bundle/sample) on the CPU, all four organs."""
    out = tmp_path / "out"
    r = _bundle_run([INFERENCE], tmp_path, "--output_dir", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    seg = nib.load(str(out / "mr_01_image_seg.nii.gz"))
    image = nib.load(str(SAMPLE / "mr_01_image.nii.gz"))
    assert seg.shape == image.shape
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) == {0, 1, 2, 3, 4}
    lines = r.stdout.splitlines()
    assert "[1/1] mr_01_image.nii.gz" in r.stdout
    assert lines[-2:] == [
        "done: 1 of 1 input(s) segmented, 0 skipped",
        f"outputs in {out} (<name>_seg.nii.gz, <name>_seg_report.json)",
    ]
    assert "Traceback" not in r.stderr and "WARNING" not in r.stdout  # quiet: progress and summary


def test_sample_is_chaos_mr_with_its_licence():
    names = sorted(p.name for p in SAMPLE.iterdir())
    assert names == ["LICENSE", "README.md", "mr_01_image.nii.gz", "mr_01_label.nii.gz"]
    assert "CC BY-SA 4.0" in (SAMPLE / "LICENSE").read_text()
    assert "Kavur" in (SAMPLE / "README.md").read_text()
    config = json.loads(INFERENCE.read_text())
    assert (
        config["dataset_dir"] == "$@bundle_root + '/sample'" and "*_label.nii*" in config["exclude"]
    )


def _gap_series(tmp: Path) -> Path | None:
    series = DATA_DIR / "dicom-samples" / "totalseg_ct_jpeg2000"
    if not series.is_dir():
        return None
    gap = tmp / "series_with_gap"
    gap.mkdir()
    files = sorted(series.iterdir())
    for f in files[:5] + files[6:]:
        shutil.copy(f, gap / f.name)
    return gap


def test_mixed_folder_writes_the_good_volume_and_names_each_bad_one(tmp_path):
    """Good MR + 2D NIfTI + corrupt file + text file (+ a DICOM series with a gap when the shared
    data is there): the good volume is written, the run ends with the summary naming each bad input,
    and the exit status is 1."""
    src = SAMPLE / "mr_01_image.nii.gz"
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir()
    shutil.copy(src, data / src.name)
    image = nib.load(str(src))
    nib.save(
        nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 10].copy(), image.affine),
        str(data / "slice.nii.gz"),
    )
    (data / "broken.nii.gz").write_bytes(src.read_bytes()[:5000])  # truncated
    (data / "notes.txt").write_text("not an image")
    gap = _gap_series(data)
    r = _bundle_run(
        [INFERENCE], tmp_path, "--dataset_dir", str(data), "--output_dir", str(out), *QUICK
    )
    assert r.returncode == 1, r.stderr[-3000:]
    bad = {
        "broken.nii.gz": "unreadable (",
        "notes.txt": "not a NIfTI file",
        "slice.nii.gz": "a 2D image (256x256)",
    }
    if gap is not None:
        bad["series_with_gap"] = "not one complete DICOM series: series"
    last = r.stderr.splitlines()[-(len(bad) + 2) :]
    assert last[0] == f"done: 1 of {len(bad) + 1} input(s) segmented, {len(bad)} skipped:"
    for line, (name, reason) in zip(last[1:-1], sorted(bad.items())):
        assert line.startswith(f"  skipped {data / name}: {reason}"), line
    assert last[-1].startswith(f"outputs in {out}")
    assert "Traceback" not in r.stderr
    written = sorted(p.name for p in out.iterdir())
    assert written == ["mr_01_image_seg.nii.gz", "mr_01_image_seg_report.json"]


@pytest.mark.parametrize("case", ["no input", "outputs exist", "bad setting"])
def test_stop_errors_end_with_one_plain_sentence(tmp_path, case):
    data, out = tmp_path / "in", tmp_path / "out"
    data.mkdir(), out.mkdir()
    args = ["--dataset_dir", str(data), "--output_dir", str(out)]
    if case != "no input":
        shutil.copy(SAMPLE / "mr_01_image.nii.gz", data)
    if case == "outputs exist":
        (out / "mr_01_image_seg.nii.gz").write_bytes(b"")
    if case == "bad setting":
        args += ["--overwrite", "maybe"]
    r = _bundle_run([INFERENCE], tmp_path, *args)
    expected = {
        "no input": "error: no input volume found in",
        "outputs exist": "error: 1 output(s) already exist",
        "bad setting": "error: --overwrite expects a boolean (true or false), got 'maybe'.",
    }[case]
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(expected), r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def _small_volume_preprocessing():
    """The inference preprocessing with the thinness check off: these tests feed small synthetic volumes."""
    parser = _parser(INFERENCE)
    parser["input_check"]["min_fraction"] = 0.0
    return parser.get_parsed_content("preprocessing")


@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    spacing=st.tuples(st.floats(0.5, 6.0), st.floats(0.5, 6.0), st.floats(1.0, 8.0)),
    scale=st.floats(1.0, 4000.0),
    offset=st.floats(-1024.0, 100.0),
    dtype=st.sampled_from([np.uint8, np.int16, np.float32]),
    flips=st.tuples(st.booleans(), st.booleans(), st.booleans()),
)
def test_property_preprocessing_any_spacing_range_dtype_orientation(
    tmp_path, spacing, scale, offset, dtype, flips
):
    """Whatever the input grid, intensity range, dtype or axis directions: RAS, 2x2x4 mm, finite [0, 1]."""
    rng = np.random.default_rng(0)
    data = rng.random((24, 20, 10)) * scale + offset
    data[6:18, 5:15, 2:8] += scale  # a 'body' brighter than the background
    if dtype != np.float32:
        info = np.iinfo(dtype)
        data = np.clip(data, info.min, info.max)
    affine = np.diag([(-s if f else s) for s, f in zip(spacing, flips)] + [1.0])
    path = tmp_path / f"v_{abs(hash((spacing, scale, offset, str(dtype), flips)))}.nii.gz"
    nib.save(nib.Nifti1Image(data.astype(dtype), affine), str(path))
    image = _small_volume_preprocessing()({"image": str(path)})["image"]
    assert image.dtype == torch.float32 and min(image.shape[1:]) > 0
    assert torch.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    np.testing.assert_allclose(image.pixdim.numpy(), [2.0, 2.0, 4.0], rtol=1e-4)
    assert np.all(np.diag(image.affine.numpy())[:3] > 0)  # RAS


@pytest.mark.parametrize("value", [0, 7])
def test_preprocessing_keeps_a_blank_or_constant_volume(tmp_path, value):
    """Nothing above the body threshold: the whole volume is kept (no empty crop), values finite."""
    path = tmp_path / "blank.nii.gz"
    nib.save(nib.Nifti1Image(np.full((20, 16, 8), value, np.int16), np.eye(4)), str(path))
    image = _small_volume_preprocessing()({"image": str(path)})["image"]
    assert min(image.shape[1:]) > 0 and torch.isfinite(image).all()


@pytest.mark.parametrize("configs", [[INFERENCE], [INFERENCE, INFERENCE.parent / "evaluate.json"]])
def test_every_written_segmentation_is_post_processed(configs):
    """inference.json (bundle run, MONAI Label, Deploy) and evaluate.json keep one component per organ
    with the bundle's organ layout, after the argmax."""
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    names = [t["_target_"] for t in parser["postprocessing"]["transforms"]]
    keep = names.index("grata_monai.postprocess.KeepOrganComponentsd")
    assert (
        names[keep - 1] == "AsDiscreted"
        and parser["postprocessing"]["transforms"][keep - 1]["argmax"]
    )
    parser["bundle_root"] = str(BUNDLE)
    transform = parser.get_parsed_content("postprocessing").transforms[keep]
    assert transform.layout is not None and transform.layout.organs == (1, 2, 3, 4)
