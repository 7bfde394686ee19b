"""grata_monai.bench.throughput: the command on a tiny bundle, in one process and in several."""

from __future__ import annotations

import json

import pytest

from grata_monai.bench.pipeline import STAGES
from grata_monai.bench.throughput import _together, run_throughput, write_markdown
from grata_monai.defaults import loader_workers
from tests.conftest import ROOT


def test_loader_workers_sized_to_the_machine():
    assert loader_workers(2) == 1
    assert loader_workers(16) == 8
    assert loader_workers(128) == 8
    assert loader_workers(1) == 1


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
        assert all(p["volumes"] == 2 for p in m["passes"])
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


def test_run_throughput_in_several_instances(tiny_bundle, tmp_path):
    """Two processes, one volume each, twice per pass: four volumes per pass, counted together."""
    root, data = tiny_bundle
    results = run_throughput(
        str(data), str(root), str(tmp_path), name="tp", repeats=1, device="cpu", num_workers=0,
        writers=1, write_in="processes", instances=2, cycles=2,
    )  # fmt: skip
    assert results["settings"]["instances"] == 2 and results["settings"]["cycles"] == 2
    for method in ("plain", "grata"):
        (one,) = results["methods"][method]["passes"]
        assert one["volumes"] == 4 and one["volumes_per_s"] == pytest.approx(4 / one["seconds"])
        assert one["stages_s"]["write"] > 0
    assert "in each of 2 processes" in (tmp_path / "tp.md").read_text()


def test_passes_of_instances_count_together():
    a = {"start": 10.0, "end": 12.0, "volumes": 3, "peak_memory_mib": 100.0,
         "stages_s": dict.fromkeys(STAGES, 1.0)}  # fmt: skip
    b = {"start": 10.5, "end": 14.0, "volumes": 1, "peak_memory_mib": 50.0,
         "stages_s": dict.fromkeys(STAGES, 5.0)}  # fmt: skip
    both = _together([a, b])
    assert both["seconds"] == 4.0 and both["volumes"] == 4 and both["volumes_per_s"] == 1.0
    assert both["stages_s"]["infer"] == 2.0 and both["peak_memory_mib"] == 150.0


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
        {"instances": 0},
        {"cycles": 0},
        {"instances": 3},
        {"settings": {"settle_window": 4}, "instances": 2},  # raised in the instances
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
