"""``grata-monai wrap``: GraTa added to a model-zoo-shaped bundle by a config overlay.

The bundle is built here in the zoo's layout and style (``spleen_ct_segmentation``: UNet with
``norm="batch"``, ``SlidingWindowInferer``, ``Invertd`` + ``SaveImaged``, ``SupervisedEvaluator``,
weights loaded by a ``CheckpointLoader`` handler, ``bundle_root`` "." overridden on the command
line) with random weights. The end-to-end tests run ``python -m monai.bundle run`` on one real MR
volume.
"""

from __future__ import annotations

import copy
import hashlib
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
from monai.bundle import ConfigParser
from monai.handlers import CheckpointLoader, StatsHandler

from grata_monai import GraTaInferer, defaults
from grata_monai.bundle.handlers import AuditReportHandler
from grata_monai.bundle.wrap import STRICT_INITIALIZE, WrapError, wrap
from tests.conftest import BUNDLE_DIR, ROOT, abdomen_dir

MR_VOLUME = "mr/mr_01_image.nii.gz"
UNET = {
    "_target_": "UNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",
}


def zoo_config(
    network_def: dict = UNET, inferer: dict | None = None, pixdim=(4.0, 4.0, 8.0)
) -> dict:
    """An ``inference.json`` in the style of the model zoo's spleen bundle."""
    keys = "@image_key"
    return {
        "imports": ["$import glob", "$import numpy", "$import os"],
        "bundle_root": ".",
        "image_key": "image",
        "output_dir": "$@bundle_root + '/eval'",
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.uint8",
        "output_postfix": "trans",
        "separate_folder": True,
        "dataset_dir": "/workspace/data",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": keys},
                {"_target_": "EnsureChannelFirstd", "keys": keys},
                {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
                {"_target_": "Spacingd", "keys": keys, "pixdim": list(pixdim), "mode": "bilinear"},
                {
                    "_target_": "ScaleIntensityRangePercentilesd",
                    "keys": keys,
                    "lower": 0.5,
                    "upper": 99.5,
                    "b_min": 0.0,
                    "b_max": 1.0,
                    "clip": True,
                },
                {"_target_": "EnsureTyped", "keys": keys},
            ],
        },
        "dataset": {
            "_target_": "Dataset",
            "data": "$[{'image': i} for i in @datalist]",
            "transform": "@preprocessing",
        },
        "dataloader": {
            "_target_": "DataLoader",
            "dataset": "@dataset",
            "batch_size": 1,
            "shuffle": False,
            "num_workers": 0,
        },
        "inferer": inferer
        or {
            "_target_": "SlidingWindowInferer",
            "roi_size": [32, 32, 16],
            "sw_batch_size": 2,
            "overlap": 0.25,
            "mode": "gaussian",
        },
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {
                    "_target_": "Invertd",
                    "keys": "pred",
                    "transform": "@preprocessing",
                    "orig_keys": keys,
                    "nearest_interp": False,
                    "to_tensor": True,
                },
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {
                    "_target_": "SaveImaged",
                    "keys": "pred",
                    "output_dir": "@output_dir",
                    "output_ext": "@output_ext",
                    "output_dtype": "@output_dtype",
                    "output_postfix": "@output_postfix",
                    "separate_folder": "@separate_folder",
                },
            ],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
                "map_location": "@device",
            },
            {"_target_": "StatsHandler", "iteration_log": False},
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
            "amp": True,
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def zoo_metadata(spatial_shape=(32, 32, 16), out_channels: int = 2) -> dict:
    channel = {
        "type": "image",
        "format": "magnitude",
        "modality": "MR",
        "num_channels": 1,
        "spatial_shape": list(spatial_shape),
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": True,
        "channel_def": {"0": "image"},
    }
    pred = {
        **channel,
        "format": "segmentation",
        "num_channels": out_channels,
        "channel_def": {
            str(i): "background" if i == 0 else f"organ {i}" for i in range(out_channels)
        },
    }
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "test bundle"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.13.0",
        "numpy_version": "2",
        "required_packages_version": {},
        "task": "segmentation",
        "description": "a zoo-shaped test bundle",
        "authors": "tests",
        "copyright": "tests",
        "network_data_format": {"inputs": {"image": channel}, "outputs": {"pred": pred}},
    }


def make_bundle(
    root: Path,
    config: dict | None = None,
    metadata: dict | None = None,
    state_dict: dict | None = None,
) -> Path:
    """Write a zoo-layout bundle (LICENSE, configs/, models/model.pt) to ``root``; random weights by default."""
    config = config or zoo_config()
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "LICENSE").write_text("test\n")
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    (root / "configs" / "metadata.json").write_text(
        json.dumps(metadata or zoo_metadata(), indent=4)
    )
    if state_dict is None:
        torch.manual_seed(0)
        state_dict = (
            ConfigParser({"net": config["network_def"]}).get_parsed_content("net").state_dict()
        )
    torch.save(state_dict, root / "models" / "model.pt")
    return root


def digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def merged(bundle: Path, overlay: Path, *configs: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(
        [str(bundle / c) for c in configs or ("configs/inference.json",)] + [str(overlay)]
    )
    parser["bundle_root"] = str(bundle)
    return parser


def bundle_run(
    configs: list[Path], bundle: Path, cwd: Path, *args: str
) -> subprocess.CompletedProcess:
    files = "[" + ",".join(f"'{f}'" for f in configs) + "]"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--bundle_root",
        str(bundle),
        *args,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


# --- the overlay ---------------------------------------------------------------------------------


def test_overlay_keeps_the_bundles_sliding_window_and_handlers(tmp_path):
    bundle = make_bundle(tmp_path / "zoo")
    before = digest(bundle)
    result = wrap(bundle, steps=2)
    assert result.path == bundle / "configs" / "grata.json" and result.path.is_file()
    assert digest(bundle) == {**before, "configs/grata.json": digest(bundle)["configs/grata.json"]}
    assert (
        f"--config_file \"['{bundle}/configs/inference.json','{result.path}']\" --bundle_root {bundle}"
        in result.command
    )

    parser = merged(bundle, result.path)
    inferer = parser.get_parsed_content("inferer")
    assert (
        isinstance(inferer, GraTaInferer)
        and inferer.steps == 2
        and inferer.patches_per_step == defaults.PATCHES_PER_STEP
    )
    assert inferer.roi_size == (32, 32, 16) and inferer.sliding.sw_batch_size == 2
    assert inferer.sliding.overlap == 0.25 and inferer.sliding.mode == "gaussian"
    handlers = parser.get_parsed_content("evaluator#val_handlers")
    assert [type(h) for h in handlers] == [CheckpointLoader, StatsHandler, AuditReportHandler]
    audit = handlers[-1]
    assert (
        audit.output_dir == f"{bundle}/eval"
        and audit.postfix == "trans_report"
        and audit.separate_folder
    )
    assert parser.get_parsed_content("evaluator").inferer is inferer

    with pytest.raises(WrapError, match="already exists.*--overwrite"):
        wrap(bundle)
    assert wrap(bundle, overwrite=True, steps=3).overlay["inferer"]["steps"] == 3


@pytest.mark.parametrize(
    "val_handlers, appended",
    [
        (None, "evaluator#val_handlers"),
        ([{"_target_": "StatsHandler", "iteration_log": False}], "+evaluator#val_handlers"),
        ("$[h for h in @handlers]", "evaluator#val_handlers"),
    ],
)
def test_audit_handler_is_appended_however_the_handlers_are_written(
    tmp_path, val_handlers, appended
):
    config = zoo_config()
    if val_handlers is None:
        del config["evaluator"]["val_handlers"]
    else:
        config["evaluator"]["val_handlers"] = val_handlers
    bundle = make_bundle(tmp_path / "zoo", config)
    result = wrap(bundle)
    assert appended in result.overlay
    handlers = merged(bundle, result.path).get_parsed_content("evaluator#val_handlers")
    assert isinstance(handlers[-1], AuditReportHandler) and len(handlers) == 1 + len(
        []
        if val_handlers is None
        else val_handlers
        if isinstance(val_handlers, list)
        else config["handlers"]
    )


def test_overlay_follows_command_line_overrides_of_referenced_settings(tmp_path):
    config = zoo_config(
        inferer={"_target_": "SlidingWindowInferer", "roi_size": "@roi_size", "sw_batch_size": 1}
    )
    bundle = make_bundle(tmp_path / "zoo", {**config, "roi_size": [24, 24, 8]})
    result = wrap(bundle, out=tmp_path / "g.json")
    assert result.overlay["inferer"]["roi_size"] == "@roi_size"
    parser = merged(bundle, result.path)
    parser["roi_size"] = [16, 16, 16]
    assert parser.get_parsed_content("inferer").roi_size == (16, 16, 16)


def test_simple_inferer_takes_the_roi_from_metadata(tmp_path):
    bundle = make_bundle(
        tmp_path / "zoo",
        zoo_config(inferer={"_target_": "SimpleInferer"}),
        zoo_metadata(spatial_shape=(48, 48, 16)),
    )
    result = wrap(bundle)
    assert result.overlay["inferer"]["roi_size"] == [48, 48, 16]
    assert any("SimpleInferer" in n and "spatial_shape" in n for n in result.notes)
    assert wrap(bundle, overwrite=True, roi_size=[32, 32, 32]).overlay["inferer"]["roi_size"] == [
        32,
        32,
        32,
    ]


def test_simple_inferer_without_a_shape_asks_for_roi_size(tmp_path):
    meta = zoo_metadata(spatial_shape=("16*n", "16*n", "16*n"))
    bundle = make_bundle(tmp_path / "zoo", zoo_config(inferer={"_target_": "SimpleInferer"}), meta)
    with pytest.raises(WrapError, match="--roi_size"):
        wrap(bundle)
    assert not (bundle / "configs" / "grata.json").exists()


def test_own_audit_handler_is_not_added_twice(tmp_path):
    result = wrap(BUNDLE_DIR, out=tmp_path / "grata.json")
    assert (
        set(result.overlay) == {"inferer"} and result.overlay["inferer"]["roi_size"] == "@roi_size"
    )


def test_wrapped_bundle_refuses_a_mistyped_option_before_its_own_initialize(tmp_path):
    bundle = make_bundle(tmp_path / "zoo")
    own = ConfigParser.load_config_file(bundle / "configs" / "inference.json").get("initialize")
    result = wrap(bundle)
    assert result.overlay["initialize"] == [*STRICT_INITIALIZE, *([] if own is None else own)]
    r = bundle_run(
        [bundle / "configs" / "inference.json", result.path], bundle, tmp_path, "--dataset_dri", "x"
    )
    assert r.returncode == 1 and r.stderr.splitlines()[-1].startswith(
        "error: unknown option --dataset_dri: "
    )


# --- refusals: nothing written -------------------------------------------------------------------


@pytest.mark.parametrize(
    "case, match",
    [
        ("affine_false", r"no normalization layer with affine parameters.*norm='batch'"),
        ("no_inferer", r"no 'inferer' id"),
        (
            "foreign_inferer",
            r"inferer is a function; wrap takes settings from a SlidingWindowInferer",
        ),
        ("inline_evaluator_inferer", r"not '@inferer'.*evaluator#inferer"),
    ],
)
def test_refuses_with_the_fix_and_writes_nothing(tmp_path, case, match):
    config = zoo_config()
    if case == "affine_false":
        config["network_def"] = {**UNET, "norm": ["instance", {"affine": False}]}
    elif case == "no_inferer":
        del config["inferer"]
        config["evaluator"]["inferer"] = {"_target_": "SimpleInferer"}
    elif case == "foreign_inferer":
        config["inferer"] = "$lambda inputs, network: network(inputs)"
    else:
        config["evaluator"]["inferer"] = copy.deepcopy(config["inferer"])
    bundle = make_bundle(tmp_path / "zoo", config)
    before = digest(bundle)
    with pytest.raises(WrapError, match=match):
        wrap(bundle)
    assert digest(bundle) == before


def test_cli_refusal_exits_2_and_names_the_fix(tmp_path):
    config = zoo_config({**UNET, "norm": "instance"})  # MONAI's instance norm: affine=False
    bundle = make_bundle(tmp_path / "zoo", config)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-m", "grata_monai.cli", "wrap", str(bundle)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert r.returncode == 2 and "nothing written" in r.stderr and "affine" in r.stderr, r.stderr[
        -2000:
    ]
    assert not (bundle / "configs" / "grata.json").exists()


# --- hosts that read one config ------------------------------------------------------------------


def test_copy_for_monai_label_reads_one_config(tmp_path):
    """--copy_to: the copy's configs/inference.json is the merged config, read the way MONAI Label's
    BundleInferTask reads it (one file, bundle_root set, network_def + model.pt, inferer)."""
    bundle = make_bundle(tmp_path / "zoo")
    before = digest(bundle)
    copy_dir = tmp_path / "label_app" / "model" / "zoo_grata"
    result = wrap(bundle, copy_to=copy_dir, steps=1)
    assert digest(bundle) == before and result.path == copy_dir / "configs" / "inference.json"
    label = ConfigParser()
    label.read_config(str(result.path))
    label.config.update({"bundle_root": str(copy_dir)})
    network = label.get_parsed_content("network_def", instantiate=True)
    network.load_state_dict(torch.load(copy_dir / "models" / "model.pt"), strict=False)
    inferer = label.get_parsed_content("inferer", instantiate=True)
    assert isinstance(inferer, GraTaInferer) and inferer.roi_size == (32, 32, 16)
    with torch.no_grad():
        out = inferer(torch.rand(1, 1, 40, 40, 20), network.eval())
    assert out.shape == (1, 2, 40, 40, 20)
    with pytest.raises(WrapError, match="new folder"):
        wrap(bundle, copy_to=copy_dir)


# --- end to end on real MR -----------------------------------------------------------------------


def _one_volume(tmp_path: Path) -> Path:
    src = abdomen_dir() / MR_VOLUME
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(src, data / src.name)
    return data


@pytest.mark.realdata
def test_wrapped_zoo_bundle_runs_and_equals_plain_without_adaptation(tmp_path):
    data = _one_volume(tmp_path)
    bundle = make_bundle(tmp_path / "zoo")
    before = digest(bundle)
    inference = bundle / "configs" / "inference.json"
    outputs = {}
    for name, settings in (
        ("plain", None),
        ("identity", {"steps": 0, "norm_stats": "source"}),
        ("grata", {"steps": 1, "patches_per_step": 2}),
    ):
        configs = [inference]
        if settings is not None:
            configs.append(wrap(bundle, out=tmp_path / f"{name}.json", **settings).path)
        r = bundle_run(
            configs,
            bundle,
            tmp_path,
            "--dataset_dir",
            str(data),
            "--output_dir",
            str(tmp_path / name),
        )
        assert r.returncode == 0, r.stderr[-3000:]
        folder = tmp_path / name / "mr_01_image"  # SaveImaged(separate_folder=True)
        seg = nib.load(str(folder / "mr_01_image_trans.nii.gz"))
        assert seg.shape == nib.load(str(data / "mr_01_image.nii.gz")).shape
        outputs[name] = np.asarray(seg.dataobj)
        report = folder / "mr_01_image_trans_report.json"
        assert report.is_file() == (settings is not None), sorted(p.name for p in folder.iterdir())
        if settings is not None:
            report = json.loads(report.read_text())
            assert report["method"] == "grata" and len(report["steps"]) == settings["steps"]
    assert digest(bundle) == before
    assert len(np.unique(outputs["plain"])) == 2  # a non-trivial segmentation to compare
    np.testing.assert_array_equal(outputs["identity"], outputs["plain"])
    assert (outputs["grata"] != outputs["plain"]).any()


@pytest.mark.realdata
def test_our_bundle_wrapped_equals_its_grata_run(tmp_path):
    data = _one_volume(tmp_path)
    inference = BUNDLE_DIR / "configs" / "inference.json"
    # our bundle takes its CPU settings from the device (the tests run on a CPU): the overlay gets them too
    cpu = {**defaults.for_device("cpu"), "steps": 2, "patches_per_step": 2}
    overlay = wrap(
        BUNDLE_DIR, out=tmp_path / "grata.json", **cpu
    ).path  # statistics rule: the default
    segs = {}
    for name, configs, args in (
        ("own", [inference], ["--inferer#steps", "2", "--inferer#patches_per_step", "2"]),
        ("wrapped", [inference, overlay], []),
    ):
        out = tmp_path / name
        r = bundle_run(
            configs,
            BUNDLE_DIR,
            tmp_path,
            "--dataset_dir",
            str(data),
            "--output_dir",
            str(out),
            *args,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        segs[name] = np.asarray(nib.load(str(out / "mr_01_image_seg.nii.gz")).dataobj)
        report = json.loads((out / "mr_01_image_seg_report.json").read_text())
        segs[name + "_steps"] = [{k: v for k, v in s.items()} for s in report["steps"]]
        segs[name + "_settings"] = report["settings"]
    np.testing.assert_array_equal(segs["wrapped"], segs["own"])
    assert (
        segs["wrapped_steps"] == segs["own_steps"]
        and segs["wrapped_settings"] == segs["own_settings"]
    )
