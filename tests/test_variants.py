"""The adaptation options the study measures: preset, statistics rule, parameter scopes, views."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grata_monai import GraTaInferer, NormStatsInferer, defaults
from grata_monai.audit import reports_of
from grata_monai.domain import intensity_histogram
from grata_monai.losses import ConsistencyLoss, sharpen
from grata_monai.norms import collect_params, configure_model, head_params
from tests.conftest import tiny_unet

ROI = (16, 16, 8)


def test_paper_preset_is_the_papers_recipe():
    s = GraTaInferer(ROI, preset="paper").settings()
    assert (
        s["preset"] == "paper" and s["steps"] == 1 and s["lr0"] == 1e-4 and s["optimizer"] == "adam"
    )
    assert s["episodic"] is False and s["guard"] is False and s["adapt_params"] == "norm"
    assert (
        s["weak_transforms"] == ("flip0", "flip1", "rot90", "rot180", "rot270")
        and s["strong"] == "paper"
    )
    assert (
        s["perturb_scale"] == 1.0 and s["align"] and s["dynamic_lr"] and s["norm_stats"] == "volume"
    )


def test_a_preset_refuses_settings_it_fixes():
    with pytest.raises(ValueError, match="fixes"):
        GraTaInferer(ROI, preset="paper", lr0=1e-3)
    with pytest.raises(ValueError, match="Unknown preset"):
        GraTaInferer(ROI, preset="mine")
    with pytest.raises(
        ValueError, match="fixes \\['episodic'\\]"
    ):  # even when it equals the library default
        GraTaInferer(ROI, preset="paper", episodic=defaults.EPISODIC)
    assert (
        GraTaInferer(ROI, preset="paper", patches_per_step=2).patches_per_step == 2
    )  # not fixed by the preset


def test_auto_statistics_need_a_reference():
    with pytest.raises(ValueError, match="reference_histogram"):
        NormStatsInferer(ROI, norm_stats="auto")


@pytest.mark.parametrize("far", [False, True])
def test_auto_statistics_follow_the_domain_distance(volume, far):
    """A volume like the reference keeps the source statistics; a far one gets its own."""
    net = tiny_unet()
    own = intensity_histogram(volume).tolist()
    reference = own[::-1] if far else own
    auto = NormStatsInferer(ROI, norm_stats="auto", reference_histogram=reference, amp=False)
    expected = NormStatsInferer(ROI, norm_stats="volume" if far else "source", amp=False)
    with torch.no_grad():
        out, want = auto(volume, net), expected(volume, net)
    assert torch.allclose(out, want, atol=1e-6)
    report = reports_of(out)[0]
    assert report["volume_statistics_weight"] == (1.0 if far else 0.0)
    assert (report["domain_distance"] > defaults.BLEND_RANGE[1]) == far


def test_parameter_scopes():
    net = tiny_unet()
    norm = configure_model(net, "norm")
    assert len(norm) == len(collect_params(net)[0])
    head = configure_model(tiny_unet(), "norm+head")
    assert len(head) > len(norm)
    every = configure_model(tiny_unet(), "all")
    assert len(every) == len(list(tiny_unet().parameters()))
    adapted = {id(p) for p in norm}
    assert head_params(net) and all(
        not p.requires_grad for p in head_params(net) if id(p) not in adapted
    )
    with pytest.raises(ValueError, match="Unknown parameter scope"):
        configure_model(tiny_unet(), "decoder")


def test_sharpen_keeps_the_argmax_and_sums_to_one():
    p = torch.softmax(torch.randn(2, 4, 5, 5, 5), dim=1)
    q = sharpen(p, 0.5)
    assert torch.allclose(q.sum(1), torch.ones(2, 5, 5, 5), atol=1e-5)
    assert torch.equal(q.argmax(1), p.argmax(1)) and (q.amax(1) >= p.amax(1) - 1e-6).all()
    assert sharpen(p, 1.0) is p


def test_invariant_strong_view_is_seeded_and_in_range():
    x = torch.rand(2, 1, 16, 16, 8)
    a, b = (
        ConsistencyLoss(strong="invariant", prob=1.0),
        ConsistencyLoss(strong="invariant", prob=1.0),
    )
    a.set_random_state(np.random.RandomState(3))
    b.set_random_state(np.random.RandomState(3))
    va, vb = a.strong(x), b.strong(x)
    assert torch.equal(va, vb) and va.shape == x.shape and va.min() >= 0 and va.max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="strong view"):
        ConsistencyLoss(strong="heavy")
    with pytest.raises(ValueError, match="temperature"):
        ConsistencyLoss(temperature=0)


def test_grata_runs_with_every_option(volume):
    net = tiny_unet()
    inferer = GraTaInferer(
        ROI,
        steps=2,
        patches_per_step=2,
        strong="invariant",
        temperature=0.5,
        adapt_params="norm+head",
        amp=False,
    )
    with torch.no_grad():
        out = inferer(volume, net)
    assert out.shape == (1, 3, *volume.shape[2:]) and torch.isfinite(out).all()
    assert len(reports_of(out)[0]["steps"]) == 2
