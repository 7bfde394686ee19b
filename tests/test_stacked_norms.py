"""Batched BatchNorm passes give what the loops of passes give, eagerly and replayed from CUDA graphs."""

from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch

from grata_monai.norms import (
    batch_norm_statistics,
    blended_statistics,
    load_batch_norm_statistics,
    settle_batch_norm_statistics,
)
from grata_monai.stacked_norms import StatisticsPasses, can_stack
from tests.conftest import tiny_unet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


def flat(statistics: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Sets of running statistics in ``StatisticsPasses.stacked``'s form: (K, channels of all
    layers) means and variances."""
    return tuple(
        torch.stack([torch.cat([pair[j] for pair in stats]) for stats in statistics])
        for j in (0, 1)
    )


def _windows(n: int, device: str = "cpu", seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(1, 1, 16, 16, 16, generator=g) * (i + 1)).to(device) for i in range(n)]


def _assert_same_statistics(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (m0, v0), (m1, v1) in zip(batch_norm_statistics(a), batch_norm_statistics(b), strict=True):
        torch.testing.assert_close(m1, m0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v1, v0, rtol=1e-4, atol=1e-5)


def test_only_eager_batch_norm_networks_stack():
    assert can_stack(tiny_unet())
    assert not can_stack(torch.jit.script(tiny_unet()))
    assert not can_stack(tiny_unet(("instance", {"affine": True})))


@pytest.mark.parametrize("device", DEVICES)
def test_settling_windows_in_batches_equals_one_window_at_a_time(device):
    """Batches of two shapes, three volumes: eager, captured, replayed (on CUDA); no volume's sums
    carry over to the next."""
    looped, batched = tiny_unet().to(device), tiny_unet().to(device)
    passes = StatisticsPasses(batched, graphs=True)
    for seed in (1, 2, 3):
        windows = _windows(5, device, seed)
        assert settle_batch_norm_statistics(looped, windows) == 5
        assert passes.settle([torch.cat(windows[:3]), torch.cat(windows[3:])]) == 5
        _assert_same_statistics(looped, batched)
    assert not any(m.training for m in batched.modules())
    assert "forward" not in vars(
        next(m for m in batched.modules() if "BatchNorm" in type(m).__name__)
    )
    assert len(passes.graphs) == (2 if device == "cuda" else 0)


def test_no_windows_leave_the_statistics_unchanged():
    net = tiny_unet()
    before = batch_norm_statistics(net)
    assert StatisticsPasses(net).settle([]) == 0
    for (m0, v0), (m1, v1) in zip(before, batch_norm_statistics(net)):
        assert torch.equal(m0, m1) and torch.equal(v0, v1)


def _statistics_sets(net: torch.nn.Module, seed: int) -> list:
    source = batch_norm_statistics(net)
    settled = copy.deepcopy(net)
    settle_batch_norm_statistics(settled, _windows(3, next(net.parameters()).device.type, seed))
    own = [(m.to(s[0]), v.to(s[1])) for (m, v), s in zip(batch_norm_statistics(settled), source)]
    return [source, own, [(a.lerp(c, 0.5), b.lerp(d, 0.5)) for (a, b), (c, d) in zip(source, own)]]


@pytest.mark.parametrize("count", [2, 3])
@pytest.mark.parametrize("device", DEVICES)
def test_stacked_statistics_predict_as_each_set_loaded_in_turn(device, count, monkeypatch):
    """Each set's prediction, side by side along the channels; new sets give their own predictions
    (a graph replays with the current values); a window count seen once runs eagerly. TF32
    convolutions are off: batches of other sizes may take other cuDNN kernels, whose TF32 rounding
    differs by more than the tolerance."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    net = tiny_unet().to(device).eval()
    passes = StatisticsPasses(net, graphs=True)
    source = batch_norm_statistics(net)
    with torch.no_grad():
        for seed, n in ((1, 2), (2, 2), (3, 2), (4, 1)):
            sets = _statistics_sets(net, seed)[:count]
            x = torch.cat(_windows(n, device, seed))
            with passes.stacked(*flat(sets)) as predict:
                stacked = predict(x)
            assert stacked.shape == (n, count * net(x).shape[1], *x.shape[2:])
            outputs = stacked.chunk(count, 1)
            for statistics, out in zip(sets, outputs, strict=True):
                load_batch_norm_statistics(net, statistics)
                torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
            load_batch_norm_statistics(net, source)
            assert not torch.allclose(outputs[0], outputs[1])
    assert len(passes.graphs) == (1 if device == "cuda" else 0)


def test_batch_norms_without_affine_maps_settle_and_predict_as_the_loops():
    """Layers without weight and bias normalize only, in both batched passes."""
    looped, batched = (tiny_unet(("batch", {"affine": False})) for _ in range(2))
    windows = _windows(3)
    settle_batch_norm_statistics(looped, windows)
    passes = StatisticsPasses(batched)
    passes.settle([torch.cat(windows)])
    _assert_same_statistics(looped, batched)
    sets = _statistics_sets(looped, 2)
    x = torch.cat(_windows(2, seed=4))
    with torch.no_grad(), passes.stacked(*flat(sets)) as predict:
        outputs = predict(x).chunk(3, 1)
    with torch.no_grad():
        for statistics, out in zip(sets, outputs, strict=True):
            load_batch_norm_statistics(looped, statistics)
            torch.testing.assert_close(out, looped(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_blends_are_the_blended_statistics_exactly(device):
    """Each weight's set, computed for all layers at once, has the values ``blended_statistics`` gives
    layer by layer; the layers keep their own statistics."""
    net, source = tiny_unet().to(device), tiny_unet().to(device)
    settle_batch_norm_statistics(net, _windows(3, device))
    settle_batch_norm_statistics(source, _windows(2, device, seed=5))
    own, theirs = batch_norm_statistics(net), batch_norm_statistics(source)
    weights = (0.0, 0.25, 0.5, 1.0)
    means, variances = StatisticsPasses(net).blends(theirs, weights)
    expected = flat([blended_statistics(theirs, own, w) for w in weights])
    assert torch.equal(means, expected[0]) and torch.equal(variances, expected[1])
    for (m0, v0), (m1, v1) in zip(own, batch_norm_statistics(net), strict=True):
        assert torch.equal(m0, m1) and torch.equal(v0, v1)


@cuda
def test_stacked_outputs_are_not_overwritten_by_later_replays():
    net = tiny_unet().to("cuda").eval()
    passes = StatisticsPasses(net, graphs=True)
    a, b = (torch.cat(_windows(2, "cuda", seed)) for seed in (1, 2))
    with torch.no_grad(), passes.stacked(*flat(_statistics_sets(net, 1))) as predict:
        predict(a)  # seen once: eager
        first = predict(b)  # captured and replayed
        kept = first.clone()
        predict(a)
    assert len(passes.graphs) == 1 and torch.equal(first, kept)


def test_a_cache_keyed_by_the_network_does_not_keep_it_alive():
    """The inferer keeps each working copy's passes by the copy: dropped copies free their graphs."""
    network = tiny_unet()
    cache = weakref.WeakKeyDictionary({network: StatisticsPasses(network, graphs=True)})
    del network
    gc.collect()
    assert len(cache) == 0
