"""Sharing one adapted state across ranks (torch.distributed): gradient averaging."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

__all__ = ["average_across_ranks", "any_across_ranks"]


def average_across_ranks(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """All-reduce the mean of ``tensors`` over the default process group (one flat buffer).

    Without an initialised process group (or with one rank) the tensors are returned unchanged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    return [chunk.view_as(t) for chunk, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def any_across_ranks(flag: bool, device: torch.device | str = "cpu") -> bool:
    """True when ``flag`` is true on any rank (e.g. the divergence guard fired somewhere)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
