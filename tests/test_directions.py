"""grata_monai.bench.directions: rules and summaries from candidate tables (synthetic tables)."""

from __future__ import annotations

import json

import pytest

from grata_monai.bench.directions import (
    PREDICTIONS,
    RULES,
    choose_rule,
    rule_dice,
    summarize_set,
    write_directions,
)


def _candidate(dice: float, entropy: float, removed: float = 0.0) -> dict:
    d = [dice / 100] * 4
    return {
        "dice": {"raw": d, "lcc": d, "layout": d},
        "entropy_fg": entropy,
        "removed_fraction": {"lcc": removed, "layout": removed},
    }


def _entry(split: str, dice: dict, entropy: dict) -> dict:
    cands = {a: _candidate(dice[a], entropy[a]) for a in ("0", "0.25", "0.5", "0.75", "1")}
    cands["ensemble"] = _candidate(dice["0.5"], 1.0)
    return {"split": split, "grata": {"signals": {"histogram_distance": 0.2}, "candidates": cands}}


DICE_CT = {"0": 93.0, "0.25": 92.0, "0.5": 91.0, "0.75": 90.0, "1": 89.0}
DICE_MR = {"0": 80.0, "0.25": 82.0, "0.5": 84.0, "0.75": 86.0, "1": 88.0}
LOW_AT_SOURCE = {"0": 0.1, "0.25": 0.2, "0.5": 0.3, "0.75": 0.4, "1": 0.5}
LOW_AT_OWN = {k: 0.6 - v for k, v in LOW_AT_SOURCE.items()}


def test_entropy_rule_takes_the_least_uncertain_candidate():
    entry = _entry("ct_val", DICE_CT, LOW_AT_SOURCE)["grata"]
    assert rule_dice(entry, "entropy of 0/0.5/1 (bundle 0.3.8)", "layout") == pytest.approx(93.0)
    assert rule_dice(entry, "entropy of 0/1 (bundle)", "layout") == pytest.approx(93.0)
    assert rule_dice(entry, "own", "layout") == pytest.approx(89.0)
    assert RULES["histogram (auto)"](entry) == "0"  # distance 0.2: below the blend range


def test_summary_reports_best_and_worst_volume():
    vols = {
        "a": _entry("mr_test", DICE_MR, LOW_AT_SOURCE),
        "b": _entry("mr_test", DICE_MR, LOW_AT_OWN),
    }
    s = summarize_set(vols)
    assert s["mean"]["entropy of 0/1 (bundle)"]["layout"] == pytest.approx(84.0)  # 80 and 88
    assert s["mean"]["per-volume best of source/half/own"]["layout"] == pytest.approx(88.0)
    worst = s["worst_vs_better_of_source_own"]["entropy of 0/1 (bundle)"]
    assert worst == {"delta": pytest.approx(-8.0), "volume": "a", "below_1": 1}


def test_choice_ignores_the_calibrated_histogram_rule():
    sets = {
        "ct": summarize_set({"a": _entry("ct_val", DICE_CT, LOW_AT_SOURCE)}),
        "mr": summarize_set({"b": _entry("mr_test", DICE_MR, LOW_AT_OWN)}),
    }
    # 93 and 88, the best mean (source: 86.5, own: 88.5), for the three entropy rules: the one
    # with the fewest predictions
    assert choose_rule(sets, ("ct", "mr")) == "entropy of 0/1 (bundle)"


def test_a_tie_goes_to_the_rule_with_the_fewest_predictions():
    low_at_half = {"0": 0.3, "0.25": 0.2, "0.5": 0.1, "0.75": 0.2, "1": 0.3}
    best_at_half = {"0": 80.0, "0.25": 82.0, "0.5": 95.0, "0.75": 82.0, "1": 80.0}
    sets = {"ct": summarize_set({"a": _entry("ct_val", best_at_half, low_at_half)})}
    # half, the three-blend and the five-blend rules all reach 95: half needs one prediction
    assert choose_rule(sets, ("ct",)) == "half"
    assert sets["ct"]["mean"]["entropy of 0/0.5/1 (bundle 0.3.8)"]["layout"] == pytest.approx(95.0)
    assert sets["ct"]["mean"]["entropy of 0/1 (bundle)"]["layout"] == pytest.approx(80.0)


def test_every_rule_counts_its_predictions():
    assert set(PREDICTIONS) == set(RULES)


def test_write_directions_from_tables(tmp_path):
    ct = {
        "device": "cpu",
        "git_revision": "x",
        "command": "c",
        "volumes": {
            "ct_24_image": _entry("ct_val", DICE_CT, LOW_AT_SOURCE),
            "mr_01_image": _entry("mr_test", DICE_MR, LOW_AT_OWN),
        },
    }
    mr = {
        "device": "cpu",
        "git_revision": "x",
        "command": "c",
        "volumes": {
            "ct_24_image": _entry("ct_val", DICE_MR, LOW_AT_OWN),
            "ct_01_image": _entry("ct_train", DICE_MR, LOW_AT_SOURCE),
        },
    }
    (tmp_path / "ct.json").write_text(json.dumps(ct))
    (tmp_path / "mr.json").write_text(json.dumps(mr))
    result = write_directions(str(tmp_path / "ct.json"), str(tmp_path / "mr.json"), str(tmp_path))
    assert result["chosen_on_ct_model"] == "entropy of 0/1 (bundle)"
    assert set(result["sets"]) == {
        "CT model: dev MR (mr_test)",
        "CT model: ct_val",
        "MR model 0: ct_val",
        "MR model 0: 24 other CT",
    }
    assert "held out" in (tmp_path / "directions.md").read_text()
