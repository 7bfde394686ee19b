"""The divergence guard: its rule, and forced divergence giving the unadapted output back."""

from __future__ import annotations

import pytest
import torch

import grata_monai.adaptive
from grata_monai import GraTaInferer, NormStatsInferer, TentInferer, reports_of
from grata_monai.guard import DivergenceGuard, Signals, all_finite, measure, signals

ROI = (16, 16, 16)


@pytest.mark.parametrize(
    "after, finite, losses, reason",
    [
        (Signals(0.5, [0.7, 0.2, 0.1, 0.0]), True, [1.0], None),
        (
            Signals(0.5, [0.5, 0.3, 0.15, 0.004]),
            True,
            [1.0],
            None,
        ),  # background and tiny classes may vary
        (Signals(0.5, [0.7, 0.2, 0.1, 0.0]), True, [float("nan")], "non-finite"),
        (
            Signals(0.5, [0.7, 0.2, 0.1, 0.0]),
            False,
            [1.0],
            "non-finite",
        ),
        (Signals(0.7, [0.7, 0.2, 0.1, 0.0]), True, [1.0], "entropy"),
        (Signals(0.4, [0.75, 0.2, 0.04, 0.01]), True, [1.0], "class 2"),  # collapsed
        (Signals(0.4, [0.5, 0.45, 0.05, 0.0]), True, [1.0], "class 1"),  # exploded
        (Signals(0.4, [0.6, 0.2, 0.1, 0.1]), True, [1.0], "class 3"),  # appeared
    ],
)
def test_rule(after, finite, losses, reason):
    before = Signals(0.6, [0.7, 0.2, 0.1, 0.0])
    verdict = DivergenceGuard(0.1, 0.5, 0.005).check(before, after, finite, losses)
    assert verdict is None if reason is None else reason in verdict


def test_measure(unet, volume):
    measured = measure(unet, volume)
    assert 0 < measured.entropy < torch.log(torch.tensor(3.0)) + 1e-4
    assert len(measured.volumes) == 3 and sum(measured.volumes) == pytest.approx(1.0)
    assert Signals.of(signals(unet, volume).tolist()) == measured
    with torch.no_grad():
        labels = unet(volume).argmax(1).flatten()
    fractions = torch.bincount(labels, minlength=3) / labels.numel()
    assert measured.volumes == pytest.approx(fractions.tolist())


def test_all_finite():
    assert bool(all_finite([torch.ones(3), torch.zeros(2, 2)]))
    assert not bool(all_finite([torch.ones(3), torch.tensor([1.0, float("inf")])]))
    assert not bool(all_finite([torch.tensor([float("nan")])]))


@pytest.mark.parametrize("sigmoid", [False, True])
def test_inferer_measures_with_its_own_activation(unet, volume, monkeypatch, sigmoid):
    seen = []

    def spy(network, patches, sigmoid=False):
        seen.append(sigmoid)
        return signals(network, patches, sigmoid)

    monkeypatch.setattr(grata_monai.adaptive, "signals", spy)
    with torch.no_grad():
        TentInferer(ROI, sw_batch_size=2, steps=1, patches_per_step=2, sigmoid=sigmoid)(
            volume, unet
        )
    assert seen == [sigmoid, sigmoid]  # before and after adapting


def absurd(**kwargs):
    """An absurd fixed learning rate (GraTa's dynamic lr alone may already shrink the step to ~0)."""
    settings = {
        "steps": 3,
        "patches_per_step": 2,
        "lr0": 1e6,
        "optimizer": "sgd",
        "dynamic_lr": False,
    }
    return GraTaInferer(ROI, sw_batch_size=2, **settings, **kwargs)


def test_forced_divergence_falls_back_to_unadapted_output(unet, volume):
    with torch.no_grad():
        unadapted = NormStatsInferer(ROI, sw_batch_size=2, patches_per_step=2)(volume, unet)
        out = absurd()(volume, unet)
        unguarded = absurd(guard=False)(volume, unet)
    assert reports_of(out)[0]["guard"] is not None
    assert torch.equal(out, unadapted)
    assert not torch.allclose(
        unguarded, unadapted, equal_nan=True
    )  # without the guard the damage shows


def test_nan_step_falls_back(unet, volume):
    class NanTent(TentInferer):
        def adapt_step(self, episode, x):
            record = super().adapt_step(episode, x)
            with torch.no_grad():
                episode.params[0].fill_(float("nan"))
            return record

    with torch.no_grad():
        unadapted = NormStatsInferer(ROI, sw_batch_size=2, patches_per_step=2)(volume, unet)
        out = NanTent(ROI, sw_batch_size=2, steps=1, patches_per_step=2)(volume, unet)
    assert "non-finite" in reports_of(out)[0]["guard"]
    assert torch.isfinite(out).all() and torch.equal(out, unadapted)


def test_continual_guard_resets_to_source(unet, volume):
    inferer = absurd(episodic=False)
    with torch.no_grad():
        out = inferer(volume, unet)
    assert reports_of(out)[0]["guard"] is not None
    fresh = inferer._episode.network.state_dict()
    for name, value in unet.state_dict().items():
        if "running" not in name and "num_batches" not in name:
            assert torch.equal(fresh[name], value), name
