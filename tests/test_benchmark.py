"""The benchmark and sweep commands end to end on CPU, one real volume, tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from grata_monai.benchmark import make_inferer, run_sweep
from grata_monai.inferer import GraTaInferer
from tests.conftest import abdomen_dir

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


def test_make_inferer_ablations():
    assert make_inferer("grata_no_align", (16, 16, 16)).align is False
    assert make_inferer("grata_fixed_lr", (16, 16, 16)).dynamic_lr is False
    grata = make_inferer("grata", (16, 16, 16), weak_transforms=("flip1",), perturb_scale=0.5, steps=2)
    assert isinstance(grata, GraTaInferer) and grata.weak_transforms == ("flip1",) and grata.perturb_scale == 0.5
    with pytest.raises(ValueError, match="Unknown method"):
        make_inferer("sar", (16, 16, 16))


@pytest.fixture
def data():
    if not (BUNDLE / "models" / "model.pt").is_file():
        pytest.skip("bundle/models/model.pt not present")
    return abdomen_dir()


def test_benchmark_command_end_to_end(data, tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "grata_monai.cli", "benchmark", "--data_dir", str(data), "--limit", "1",
           "--methods", "source,grata", "--steps", "1", "--patches_per_step", "1", "--out", str(out), "--device", "cpu"]
    subprocess.run(cmd, check=True, capture_output=True)
    results = json.loads(out.read_text())
    assert set(results["methods"]) == {"source", "grata"}
    for entry in results["methods"].values():
        (row,) = entry["volumes"]
        assert len(row["dice"]) == 4 and all(0.0 <= d <= 1.0 for d in row["dice"] if d == d)
        assert row["infer_s"] > 0
    assert results["methods"]["grata"]["volumes"][0]["adapt_s"] > 0
    assert results["data"]["volumes"] == ["mr_01_image"]


def test_sweep_picks_the_best_row(data, tmp_path):
    out = tmp_path / "sweep.json"
    base = {"steps": 1, "patches_per_step": 1, "lr0": 1e-3, "episodic": True, "perturb_scale": 1.0}
    result = run_sweep(str(data), dev_volumes=1, out=str(out), methods="grata", device="cpu", base=base,
                       axes={"lr0": (1e-2,)})
    assert len(result["rows"]) == 2
    assert result["best"]["grata"]["dice_mean"] == max(r["dice_mean"] for r in result["rows"])
    assert json.loads(out.read_text())["best"] == result["best"]
