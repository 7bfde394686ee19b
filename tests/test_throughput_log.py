"""grata_monai.bench.throughput_log: the committed runs' table is their JSON files'."""

from __future__ import annotations

import json

import pytest

from grata_monai.bench.throughput import write_markdown
from grata_monai.bench.throughput_log import RESULTS_GLOB, write_throughput_log
from tests.conftest import ROOT

BENCHMARKS = ROOT / "docs" / "benchmarks"
RUNS = sorted(BENCHMARKS.glob(RESULTS_GLOB))


def test_the_committed_log_is_generated_from_the_runs(tmp_path):
    page = write_throughput_log(str(BENCHMARKS), str(tmp_path / "throughput.md"))
    assert (BENCHMARKS / "throughput.md").read_text() == page


@pytest.mark.parametrize("results", RUNS, ids=lambda p: p.stem)
def test_each_run_page_is_its_json(results):
    assert results.with_suffix(".md").read_text() == write_markdown(json.loads(results.read_text()))


def test_a_row_per_run_grouped_by_device(tmp_path):
    run = json.loads((BENCHMARKS / "throughput_h100_turns.json").read_text())
    (tmp_path / "throughput_b.json").write_text(json.dumps(run))
    run["settings"] = {**run["settings"], "overrides": {"settle_windows": 4}, "streams": 2}
    run["device"] = "NVIDIA H200"
    (tmp_path / "throughput_a.json").write_text(json.dumps(run))
    page = write_throughput_log(str(tmp_path))
    assert page == (tmp_path / "throughput.md").read_text()
    h100, h200 = page.index("## NVIDIA H100"), page.index("## NVIDIA H200")
    row_a, row_b = page.index("[throughput_a](throughput_a.md)"), page.index("[throughput_b]")
    assert h100 < row_b < h200 < row_a  # each row under its device
    assert "| 2 × 3 | 4 | 3 processes | 3 × 3 | 0/0.5/1 | — | 21.17 | 17.56 | 1.21× |" in page
    assert '| 2 × 2 | 4 | 3 processes | 3 × 3 | 0/0.5/1 | `{"settle_windows": 4}` |' in page


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no throughput_"):
        write_throughput_log(str(tmp_path))
