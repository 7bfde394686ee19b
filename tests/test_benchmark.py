"""The benchmark and source commands end to end on CPU, one real volume, tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grata_monai import defaults
from grata_monai.bench import paths
from grata_monai.bench.benchmark import run_source
from tests.conftest import BUNDLE_DIR, abdomen_dir


def test_paths_come_from_arguments_or_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("GRATA_DATA_DIR", raising=False)
    monkeypatch.delenv("GRATA_BUNDLE_DIR", raising=False)
    with pytest.raises(FileNotFoundError, match="GRATA_DATA_DIR"):
        paths.data_dir(None)
    with pytest.raises(FileNotFoundError, match="GRATA_BUNDLE_DIR"):
        paths.bundle_dir(None)
    with pytest.raises(FileNotFoundError, match="no configs/"):
        paths.bundle_dir(tmp_path)
    (tmp_path / "abdomen").mkdir()
    (tmp_path / "configs").mkdir()
    monkeypatch.setenv("GRATA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("GRATA_BUNDLE_DIR", str(tmp_path))
    assert paths.data_dir(None) == tmp_path / "abdomen" and paths.bundle_dir(None) == tmp_path


@pytest.fixture
def data():
    if not (BUNDLE_DIR / "models" / "model.pt").is_file():
        pytest.skip(f"{BUNDLE_DIR}/models/model.pt not present")
    return abdomen_dir()


def test_benchmark_command_end_to_end(data, tmp_path):
    out = tmp_path / "results.json"
    cmd = [
        sys.executable,
        "-m",
        "grata_monai.cli",
        "benchmark",
        "--data_dir",
        str(data),
        "--limit",
        "1",
        "--methods",
        "source,grata",
        "--steps",
        "1",
        "--patches_per_step",
        "1",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--bundle_dir",
        str(BUNDLE_DIR),
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    results = json.loads(out.read_text())
    assert set(results["methods"]) == {"source", "grata"}
    for entry in results["methods"].values():
        (row,) = entry["volumes"]
        assert len(row["dice"]) == 4 and all(0.0 <= d <= 1.0 for d in row["dice"] if d == d)
        assert row["infer_s"] > 0
    assert results["methods"]["grata"]["volumes"][0]["adapt_s"] > 0
    assert results["data"]["volumes"] == ["mr_01_image"]


def test_source_command_running_and_per_volume_statistics(data, tmp_path):
    out = tmp_path / "source.json"
    result = run_source(
        splits="mr_test",
        data_dir=str(data),
        bundle_dir=str(BUNDLE_DIR),
        out=str(out),
        device="cpu",
        limit=1,
    )
    running, per_volume = (
        result["mr_test"]["running"]["summary"],
        result["mr_test"]["per_volume"]["summary"],
    )
    assert len(running["dice_per_class"]) == len(defaults.ORGANS)
    assert (
        running["dice_mean"] > 0.8 and per_volume["dice_mean"] > 0.8
    )  # the model segments MR either way
    assert per_volume["dice_per_class"] != running["dice_per_class"]  # the statistics differ
    assert json.loads(out.read_text())["mr_test"]["per_volume"]["summary"] == per_volume
