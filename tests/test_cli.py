"""The grata-monai command line: every command's --help exits 0 in plain text; segment runs the bundle."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grata_monai.cli import COMMANDS, main, plain
from tests.conftest import BUNDLE_DIR

CLI = [sys.executable, "-m", "grata_monai.cli"]


def test_plain_renders_restructured_text():
    assert (
        plain("see :func:`~grata_monai.bundle.wrap.wrap` and ``--steps``") == "see wrap and --steps"
    )
    assert plain(":mod:`grata_monai.bench.methods`") == "grata_monai.bench.methods"


def help_of(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as stop:
        main([*args, "--help"])
    assert stop.value.code == 0
    captured = capsys.readouterr()
    return captured.out + captured.err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_help_exits_0_in_plain_text(command, capsys):
    text = help_of(capsys, command)
    assert f"grata-monai {command}" in text and "``" not in text and ":func:" not in text
    if command == "wrap":
        assert "--steps" in text


def test_help_through_the_console_script_exits_0():
    r = subprocess.run(
        [*CLI, "wrap", "--help"], capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    assert r.returncode == 0 and "--steps" in r.stdout + r.stderr


def test_top_level_help_lists_the_commands(capsys):
    text = help_of(capsys)
    assert all(c in text for c in COMMANDS)


def test_segment_refuses_a_missing_input_or_a_non_nifti_file(tmp_path):
    r = subprocess.run(
        [*CLI, "segment", str(tmp_path / "nope.nii.gz"), "--bundle_dir", str(BUNDLE_DIR)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "does not exist" in r.stderr
    (tmp_path / "notes.txt").write_text("x")
    r = subprocess.run(
        [*CLI, "segment", str(tmp_path / "notes.txt"), "--bundle_dir", str(BUNDLE_DIR)],
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0 and "not a NIfTI file" in r.stderr


def test_segment_one_file_of_the_sample(tmp_path):
    """The main job on the bundle's shipped sample, one file, small settings (CPU)."""
    image = BUNDLE_DIR / "sample" / "mr_01_image.nii.gz"
    if not (BUNDLE_DIR / "models" / "model.pt").is_file():
        pytest.skip(f"{BUNDLE_DIR}/models/model.pt not present")
    out = tmp_path / "out"
    r = subprocess.run(
        [
            *CLI,
            "segment",
            str(image),
            "--bundle_dir",
            str(BUNDLE_DIR),
            "--output_dir",
            str(out),
            "--inferer#steps",
            "1",
            "--inferer#patches_per_step",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "mr_01_image_seg.nii.gz",
        "mr_01_image_seg_report.json",
    ]
    report = json.loads((out / "mr_01_image_seg_report.json").read_text())
    assert len(report["steps"]) == 1 and report["settings"]["patches_per_step"] == 1


def test_boolean_options_are_read_strictly():
    """fire passes `--flag false` as the string 'false': the commands read it as False, and refuse a
    value that is no boolean."""
    from grata_monai.bundle.io import BadSetting
    from grata_monai.cli import command

    def job(device_preprocessing: bool = False, name: str = "x") -> tuple:
        return device_preprocessing, name

    run = command(job)
    assert run(device_preprocessing="false", name="false") == (False, "false")
    assert run(device_preprocessing="true") == (True, "x")
    assert run(device_preprocessing=False) == (False, "x")
    with pytest.raises(BadSetting, match="device_preprocessing"):
        run(device_preprocessing="flase")
