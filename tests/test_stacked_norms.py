"""Batched BatchNorm passes give what the loops of passes give."""

from __future__ import annotations

import copy

import torch

from grata_monai.norms import (
    batch_norm_statistics,
    load_batch_norm_statistics,
    settle_batch_norm_statistics,
)
from grata_monai.stacked_norms import can_stack, settle_per_window, stacked_statistics
from tests.conftest import tiny_unet


def _windows(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.rand(1, 1, 16, 16, 16, generator=g) * (i + 1) for i in range(n)]


def test_only_eager_batch_norm_networks_stack():
    assert can_stack(tiny_unet())
    assert not can_stack(torch.jit.script(tiny_unet()))
    assert not can_stack(tiny_unet(("instance", {"affine": True})))


def test_settling_windows_in_batches_equals_one_window_at_a_time():
    windows = _windows(5)
    looped, batched = tiny_unet(), tiny_unet()
    assert settle_batch_norm_statistics(looped, windows) == 5
    assert settle_per_window(batched, [torch.cat(windows[:3]), torch.cat(windows[3:])]) == 5
    for (m0, v0), (m1, v1) in zip(
        batch_norm_statistics(looped), batch_norm_statistics(batched), strict=True
    ):
        torch.testing.assert_close(m1, m0, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(v1, v0, rtol=1e-4, atol=1e-5)
    assert not any(m.training for m in batched.modules())
    assert "forward" not in vars(
        next(m for m in batched.modules() if "BatchNorm" in type(m).__name__)
    )


def test_no_windows_leave_the_statistics_unchanged():
    net = tiny_unet()
    before = batch_norm_statistics(net)
    assert settle_per_window(net, []) == 0
    for (m0, v0), (m1, v1) in zip(before, batch_norm_statistics(net)):
        assert torch.equal(m0, m1) and torch.equal(v0, v1)


def test_stacked_statistics_predict_as_each_set_loaded_in_turn():
    net = tiny_unet()
    source = batch_norm_statistics(net)
    settled = copy.deepcopy(net)
    settle_batch_norm_statistics(settled, _windows(3))
    own = batch_norm_statistics(settled)
    sets = [source, own, [(a.lerp(c, 0.5), b.lerp(d, 0.5)) for (a, b), (c, d) in zip(source, own)]]
    x = torch.cat(_windows(2))
    with torch.no_grad():
        with stacked_statistics(net, sets) as predict:
            stacked = predict(x)
        assert stacked.shape == (2, 3 * net(x).shape[1], *x.shape[2:])
        outputs = stacked.chunk(3, 1)
        for statistics, out in zip(sets, outputs, strict=True):
            load_batch_norm_statistics(net, statistics)
            torch.testing.assert_close(out, net(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outputs[0], outputs[1])
