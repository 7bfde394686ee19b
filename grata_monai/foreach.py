"""Multi-tensor helpers: one kernel launch for many small tensors, where a loop launches one each."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["clones", "copy_"]


def clones(tensors: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Detached copies of ``tensors`` (None stays None), made by multi-tensor kernels: a tensor's
    ``clone`` launches a copy of its own, and the adapted parameters are many small tensors.
    Multiplying by one copies every value exactly, NaN and the sign of zero included."""
    present = [t.detach() for t in tensors if t is not None]
    copies = iter(torch._foreach_mul(present, 1.0) if present else [])
    return [None if t is None else next(copies) for t in tensors]


def copy_(targets: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy each of ``values`` into its target. Pairs of one dtype and one memory layout go by
    multi-tensor kernels (a single pair that differs would send every pair one by one); the rest,
    e.g. channels-last weights from contiguous ones, one by one."""
    groups: dict[object, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for target, value in zip(targets, values, strict=True):
        alike = target.dtype == value.dtype and target.stride() == value.stride()
        groups.setdefault(target.dtype if alike else None, []).append((target, value))
    for pairs in groups.values():
        torch._foreach_copy_([t for t, _ in pairs], [v for _, v in pairs])
