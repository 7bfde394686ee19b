"""grata-monai study end to end on real volumes (CPU, one volume per split, a tiny variant table)."""

from __future__ import annotations

import json

import pytest

from grata_monai.bench import study
from tests.conftest import BUNDLE_DIR, abdomen_dir


@pytest.fixture
def tiny_tables(monkeypatch):
    monkeypatch.setattr(
        study,
        "BASELINES",
        {
            "source": ("source", {}),
            "norm_stats": ("norm_stats", {}),
            "tent_1x1e-3": ("tent", {"steps": 1, "patches_per_step": 1}),
            "memo_1x1e-3": ("memo", {"steps": 1, "patches_per_step": 1, "n_aug": 1}),
        },
    )
    monkeypatch.setattr(
        study,
        "VARIANTS",
        {
            "grata_1x1e-3": ("grata", {"patches_per_step": 1}),
            "grata_auto": ("grata", {"patches_per_step": 1, "norm_stats": "auto"}),
        },
    )


def test_study_writes_tables_results_and_chooses_a_grata_variant(tmp_path, tiny_tables):
    data = abdomen_dir()
    result = study.run_study(str(data), str(BUNDLE_DIR), str(tmp_path), limit=1, device="cpu")
    assert result["chosen"] in ("grata_1x1e-3", "grata_auto")
    for name in ("study.json", "study.md", "study.png", "results.json", "results_ct.json"):
        assert (tmp_path / name).stat().st_size > 0
    rows = json.loads((tmp_path / "study.json").read_text())["rows"]
    assert f"{result['chosen']}_no_align" in rows and f"{result['chosen']}_fixed_lr" in rows
    assert rows["grata_auto"]["settings"]["norm_stats"] == "auto"
    assert rows["grata_1x1e-3"]["settings"]["steps"] == 1
    for split in ("mr_test", "ct_val"):
        assert len(rows["source"][split]["volumes"]) == 1
        assert 0.0 <= rows["norm_stats"][split]["summary"]["dice_mean"] <= 1.0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["methods"]) >= {
        "source",
        "norm_stats",
        "tent",
        "memo",
        "grata",
        "grata_no_align",
    }
    assert "| grata_auto |" in (tmp_path / "study.md").read_text()


def test_choose_applies_the_rules():
    def row(mr, ct, per_volume):
        vols = [{"dice": [v / 100] * 4} for v in per_volume]
        return {
            "mr_test": {"summary": {"dice_mean": mr / 100}, "volumes": vols},
            "ct_val": {"summary": {"dice_mean": ct / 100}},
        }

    rows = {
        "source": row(80, 90, [80, 80]),
        "norm_stats": row(85, 88, [85, 85]),
        "grata_a": row(90, 88, [95, 85]),  # best MR but loses 2 on CT
        "grata_b": row(87, 89.8, [88, 86]),  # eligible
        "grata_c": row(89, 90, [93, 83]),  # one volume 2 below norm_stats
    }
    original = study.VARIANTS
    study.VARIANTS = {n: ("grata", {}) for n in ("grata_a", "grata_b", "grata_c")}
    try:
        assert study.choose(rows) == ("grata_b", True)
        rows.pop("grata_b")
        assert study.choose(rows) == ("grata_a", False)
    finally:
        study.VARIANTS = original
