"""Benchmark report: tables, worse-volume listing and the figure from a results dict."""

from __future__ import annotations

import json

from grata_monai.bench.report import method_table, rebase_links, worse_volumes, write_report


def results():
    def entry(dice_rows, seconds):
        rows = [
            {
                "volume": f"v{i}",
                "dice": d,
                "adapt_s": 0.0,
                "infer_s": seconds,
                "end_to_end_s": seconds + 1,
                "peak_gpu_mib": None,
            }
            for i, d in enumerate(dice_rows)
        ]
        mean = [sum(c) / len(c) for c in zip(*dice_rows)]
        summary = {
            "dice_per_class": mean,
            "dice_mean": sum(mean) / len(mean),
            "adapt_s": 0.0,
            "infer_s": seconds,
            "end_to_end_s": seconds + 1,
            "peak_gpu_mib": None,
        }
        return {"summary": summary, "volumes": rows}

    return {
        "device": "CPU",
        "git_revision": "abc",
        "settings": {},
        "data": {"key": "mr_test", "volumes": ["v0", "v1"]},
        "methods": {
            "source": entry([[0.5] * 4, [0.6] * 4], 1.0),
            "grata": entry([[0.7] * 4, [0.55] * 4], 2.0),
        },
    }


def test_method_table_ratios_and_dice():
    table = method_table(results())
    assert (
        "| grata | **62.5** | 62.5 | 62.5 | 62.5 | 62.5 | 0 | 2000 | 2.00 | 1.50 | — | 0 |" in table
    )


def test_worse_volumes_lists_only_drops_beyond_tolerance():
    worse = worse_volumes(results())
    assert worse["grata"] == ["v1 (-5.0)"]
    assert worse["source"] == []


def test_write_report_makes_markdown_and_figure(tmp_path):
    (tmp_path / "results_mr.json").write_text(json.dumps(results()))
    text = write_report(tmp_path, tmp_path / "benchmarks.md")
    assert "grata" in text and (tmp_path / "results_mr.png").stat().st_size > 1000
    assert "v1 (-5.0)" in text


def test_volumes_table_flags_implausible_organs():
    from grata_monai.bench.report import volumes_table

    table = volumes_table(
        {"volumes": {"ct": {"grata": {"organ_ml": [1500, 150, 40, 200], "seconds": 1.0}}}}
    )
    assert "| ct | grata | 1500 | 150 | 40 ⚠ | 200 | 1.0 |" in table


def test_rebase_links_keeps_notes_links_working_from_the_report(tmp_path):
    text = (
        "see [training.md](training.md), [web](https://x.org/a.md), [here](#h), [up](../README.md)"
    )
    assert rebase_links(text, tmp_path / "docs" / "benchmarks", tmp_path / "docs") == (
        "see [training.md](benchmarks/training.md), [web](https://x.org/a.md), [here](#h), [up](README.md)"
    )
