"""The benchmark's method registry: each method takes its own settings, fixes its ablations, refuses the rest."""

from __future__ import annotations

import pytest
from monai.inferers import SlidingWindowInferer

from grata_monai import GraTaInferer, MemoInferer, NormStatsInferer, TentInferer, defaults
from grata_monai.bench.methods import METHODS, make_inferer

ROI = {"roi_size": (16, 16, 16)}


def test_make_inferer_ablations():
    assert make_inferer("grata_no_align", ROI).align is False
    assert make_inferer("grata_fixed_lr", ROI).dynamic_lr is False
    grata = make_inferer(
        "grata", ROI | {"weak_transforms": ("flip1",), "perturb_scale": 0.5, "steps": 2}
    )
    assert (
        isinstance(grata, GraTaInferer)
        and grata.weak_transforms == ("flip1",)
        and grata.perturb_scale == 0.5
    )
    assert (
        make_inferer("norm_stats", ROI | {"steps": 5}).steps == 0
    )  # norm statistics take no steps
    with pytest.raises(ValueError, match="Unknown method"):
        make_inferer("sar", ROI)


def test_each_method_takes_the_shared_settings_it_has():
    shared = ROI | {
        "steps": 2,
        "lr0": 1e-2,
        "perturb_scale": 0.5,
        "batch_views": False,
        "amp": False,
        "n_aug": 2,
    }
    built = {name: make_inferer(name, shared) for name in METHODS}
    assert (
        type(built["source"]) is SlidingWindowInferer
        and built["source"].sw_batch_size == defaults.SW_BATCH_SIZE
    )
    assert isinstance(built["norm_stats"], NormStatsInferer) and not built["norm_stats"].amp
    assert isinstance(built["tent"], TentInferer) and built["tent"].steps == 2
    assert isinstance(built["memo"], MemoInferer) and built["memo"].n_aug == 2
    assert built["grata"].perturb_scale == 0.5 and built["grata"].batch_views is False


def test_unknown_or_fixed_settings_are_errors():
    with pytest.raises(ValueError, match="Unknown settings \\['stpes'\\]"):
        make_inferer("grata", ROI | {"stpes": 2})
    with pytest.raises(ValueError, match="grata_fixed_lr: this method fixes \\['dynamic_lr'\\]"):
        make_inferer("grata_fixed_lr", ROI | {"dynamic_lr": True})
