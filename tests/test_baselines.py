"""Baselines share the machinery: same output contract, and they differ only in the update."""

from __future__ import annotations

import pytest
import torch

from grata_monai import GraTaInferer, MemoInferer, NormStatsInferer, TentInferer, reports_of

ROI = (16, 16, 16)
SETTINGS = {"sw_batch_size": 2, "steps": 2, "patches_per_step": 2, "lr0": 1e-2}
STATS = {k: v for k, v in SETTINGS.items() if k != "steps"}


@pytest.mark.parametrize("cls", [NormStatsInferer, TentInferer, MemoInferer])
def test_baseline_contract(cls, unet, volume):
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    inferer = cls(ROI, **(STATS if cls is NormStatsInferer else SETTINGS))
    with torch.no_grad():
        out = inferer(volume, unet)
        again = inferer(volume, unet)
    assert out.shape == (1, 3, *volume.shape[2:]) and torch.isfinite(out).all()
    assert torch.equal(out, again)
    assert all(torch.equal(v, before[k]) for k, v in unet.state_dict().items())
    assert reports_of(out)[0]["method"] == cls.method


def test_norm_stats_is_grata_without_steps(unet, volume):
    with torch.no_grad():
        stats = NormStatsInferer(ROI, **STATS)(volume, unet)
        grata0 = GraTaInferer(ROI, **(SETTINGS | {"steps": 0}))(volume, unet)
    assert torch.equal(stats, grata0)


@pytest.mark.parametrize("cls", [TentInferer, MemoInferer])
def test_gradient_baselines_adapt(cls, unet, volume):
    with torch.no_grad():
        adapted = cls(ROI, **(SETTINGS | {"lr0": 0.1}))(volume, unet)
        stats = NormStatsInferer(ROI, **STATS)(volume, unet)
    assert not torch.allclose(adapted, stats)


def test_tent_lowers_entropy_on_the_patches(unet, volume):
    with torch.no_grad():
        out = TentInferer(ROI, **(SETTINGS | {"steps": 5, "lr0": 0.05}))(volume, unet)
    losses = [s["aux_loss"] for s in reports_of(out)[0]["steps"]]
    assert losses[-1] < losses[0]


def test_norm_stats_refuses_steps():
    with pytest.raises(ValueError, match="no gradient steps"):
        NormStatsInferer(ROI, steps=3)
    assert NormStatsInferer(ROI, steps=0).steps == 0
