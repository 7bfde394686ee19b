"""Strict overrides of grata_monai.bundle.overrides: every bundle config refuses an option it does not know."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from grata_monai.bundle.console import RunStopped
from grata_monai.bundle.overrides import (
    RUNNER_ARGS,
    check,
    check_config_files,
    check_overrides,
    command_line,
    run_arguments,
)
from tests.conftest import BUNDLE_DIR, ROOT

CONFIGS = BUNDLE_DIR / "configs"
MAIN = "/env/lib/python3.11/site-packages/monai/bundle/__main__.py"
LAYERS = {
    "inference": ["inference.json"],
    "evaluate": ["inference.json", "evaluate.json"],
    "train": ["train.json"],
    "multi_gpu_train": ["train.json", "multi_gpu_train.json"],
    "multi_gpu_evaluate": ["inference.json", "evaluate.json", "multi_gpu_evaluate.json"],
}


def _args(layer: str, **overrides: object) -> dict:
    return {
        "config_file": [str(CONFIGS / f) for f in LAYERS[layer]],
        "bundle_root": str(BUNDLE_DIR),
        **overrides,
    }


def test_runner_arguments_are_monai_run_signature():
    assert {
        "config_file",
        "meta_file",
        "logging_file",
        "init_id",
        "run_id",
        "final_id",
        "args_file",
        "tracking",
        "workflow_type",
    } <= RUNNER_ARGS
    assert "dataset_dir" not in RUNNER_ARGS


def test_command_line_reads_fire_style_arguments():
    argv = [
        MAIN,
        "run",
        "--config_file",
        "['a.json', 'b.json']",
        "--steps=2",
        "--dataset-dir",
        "/d",
        "--flag",
    ]
    assert command_line(argv) == {
        "config_file": ["a.json", "b.json"],
        "steps": 2,
        "dataset_dir": "/d",
        "flag": True,
    }
    assert (
        command_line(["pytest", "run", "--x", "1"]) is None
    )  # not a bundle run: MONAI Label, Deploy, tests
    assert command_line([MAIN, "ckpt_export", "--x", "1"]) is None
    assert run_arguments(["training", "--a", "--b", "x"]) == {
        "a": True,
        "b": "x",
    }  # a positional run_id is no key


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_every_config_refuses_a_mistyped_key_and_names_the_nearest(layer):
    check_overrides(
        _args(layer, dataset_dir="/data", device="cpu", logging_file="x.conf", run_id="run")
    )
    with pytest.raises(
        ValueError, match=r"^unknown option --datset_dir: .*did you mean --dataset_dir\?$"
    ) as error:
        check_overrides(_args(layer, datset_dir="/data"))
    assert isinstance(error.value, RunStopped)  # a bundle run ends with the message alone


@pytest.mark.parametrize(
    ("key", "nearest"),
    [
        ("inferer#stpes", "inferer#steps"),
        ("infrer#steps", "inferer#steps"),
        ("adpt", "adapt"),
        ("inferer::stpes", "inferer#steps"),
        ("+imprts", "imports"),
    ],
)
def test_nested_ids_are_checked(key, nearest):
    with pytest.raises(ValueError, match=f"--{nearest}\\?$"):
        check_overrides(_args("inference", **{key: 1}))


def test_known_nested_ids_and_component_arguments_pass():
    check_overrides(
        _args(
            "inference",
            **{
                "inferer#steps": 2,
                "inferer::lr0": 1e-3,
                "adapt": False,
                "preprocessing#transforms#1#reader": "NibabelReader",
                "dataloader#pin_memory": True,
                "network_def#act": "relu",
                "_meta_#version": "x",
                "+exclude": ["*.txt"],
            },
        )
    )
    with pytest.raises(ValueError, match="--network_def#act"):
        check_overrides(_args("inference", **{"network_def#actt": "relu"}))


def test_args_file_keys_are_checked(tmp_path):
    args_file = tmp_path / "args.json"
    args_file.write_text(f'{{"config_file": "{CONFIGS / "inference.json"}", "output_dri": "/o"}}')
    with pytest.raises(ValueError, match="--output_dri.*--output_dir"):
        check_overrides({"args_file": str(args_file)})


def test_check_reads_only_a_bundle_run_command_line():
    check(["pytest", "-q", "--datset_dir", "x"])
    with pytest.raises(ValueError, match="--datset_dir"):
        check([MAIN, "run", "--config_file", str(CONFIGS / "inference.json"), "--datset_dir", "x"])


def test_missing_config_file_names_the_nearest(tmp_path):
    check_config_files([str(CONFIGS / "inference.json")])
    with pytest.raises(
        FileNotFoundError, match=r"'.*inferenc\.json' not found: did you mean '.*inference\.json'\?"
    ):
        check_config_files(str(CONFIGS / "inferenc.json"))
    with pytest.raises(FileNotFoundError, match="bundle/configs/inference.json"):
        check_config_files([str(tmp_path / "nowhere" / "x.json")])


@pytest.mark.parametrize(
    ("layer", "option"),
    [("inference", "--datset_dir"), ("inference", "--inferer#stpes"), ("evaluate", "--adpt")],
)
def test_bundle_run_with_a_mistyped_option_stops_in_one_line(tmp_path, layer, option):
    files = "[" + ",".join(f"'{CONFIGS / f}'" for f in LAYERS[layer]) + "]"
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        files,
        "--bundle_root",
        str(BUNDLE_DIR),
        "--output_dir",
        str(tmp_path / "out"),
        option,
        "1",
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.splitlines()[-1].startswith(f"error: unknown option {option}: "), r.stderr[
        -3000:
    ]
    assert not (tmp_path / "out").exists()  # stopped before any work
