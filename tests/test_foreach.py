"""Multi-tensor copies equal per-tensor clones, bit for bit, and are new tensors."""

from __future__ import annotations

import torch

from grata_monai.foreach import clones, copy_


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int16 if t.element_size() == 2 else torch.int32)


def test_clones_copy_every_value_exactly_into_new_tensors():
    a = torch.tensor([1.5, float("nan"), -0.0, float("inf")], requires_grad=True)
    b = torch.randn(3, 2).to(torch.bfloat16)
    out = clones([a, None, b])
    assert out[1] is None and not out[0].requires_grad
    for copy, original in ((out[0], a), (out[2], b)):
        assert copy.dtype == original.dtype and copy.data_ptr() != original.data_ptr()
        assert torch.equal(_bits(copy), _bits(original))
    assert clones([]) == [] and clones([None]) == [None]


def test_copy_fills_targets_of_any_layout_and_dtype():
    g = torch.Generator().manual_seed(0)
    values = [torch.randn(2, 3, 2, 2, 2, generator=g), torch.randn(4, generator=g), torch.tensor(7)]
    targets = [
        torch.empty(2, 3, 2, 2, 2).to(memory_format=torch.channels_last_3d),
        torch.empty(4),
        torch.tensor(0),
    ]
    copy_(targets, values)
    assert all(torch.equal(t, v) for t, v in zip(targets, values))
    assert targets[0].is_contiguous(memory_format=torch.channels_last_3d)
