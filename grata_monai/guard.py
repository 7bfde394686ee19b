"""Divergence guard: decide from self-supervised signals whether an adaptation made things worse.

The rule, on held-out patches of the volume (sampled before adapting, never trained on), with
the norm layers using those patches' statistics both times:

- any non-finite loss or adapted parameter -> diverged;
- mean prediction entropy rose by more than ``entropy_tolerance`` (relative) -> worse;
- the predicted volume of a class (voxel fraction; the background excluded, as is a class the
  unadapted network gives under ``min_fraction`` of the voxels) shrank below ``volume_ratio``
  times, or grew beyond ``1 / volume_ratio`` times, what the unadapted network predicts ->
  collapsed / exploded; a class absent before that takes over ``min_fraction`` appears.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from grata_monai.distributed import any_across_ranks
from grata_monai.losses import entropy

__all__ = ["Signals", "signals", "measure", "all_finite", "DivergenceGuard"]


@dataclass
class Signals:
    """Self-supervised signals of a network on fixed patches."""

    entropy: float
    volumes: list[float]  # fraction of the voxels predicted as each class (background first)

    @classmethod
    def of(cls, values: Sequence[float]) -> Signals:
        """The signals from the values of :func:`signals`, read to the host."""
        return cls(values[0], list(values[1:]))


@torch.no_grad()
def signals(network: nn.Module, patches: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """:func:`measure`'s signals as one tensor on the device, the entropy first: read them later,
    with the volume's other values (``audit.to_host``), so measuring never waits for the device."""
    logits = network(patches).float()
    if sigmoid:
        volumes = (logits > 0).float().mean(dim=(0, *range(2, logits.ndim)))
    else:
        labels = logits.argmax(1).flatten()  # counted by scatter_add_: bincount reads its max
        counts = torch.zeros(logits.shape[1], dtype=torch.long, device=logits.device)
        volumes = counts.scatter_add_(0, labels, torch.ones_like(labels)) / labels.numel()
    return torch.cat([entropy(logits, sigmoid).reshape(1), volumes])


def measure(network: nn.Module, patches: torch.Tensor, sigmoid: bool = False) -> Signals:
    """Entropy and predicted per-class voxel fractions of ``network`` on ``patches``."""
    return Signals.of(signals(network, patches, sigmoid).tolist())


def all_finite(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Whether every value of ``params`` is finite, as a tensor on their device (no wait for it)."""
    return torch.isfinite(torch.cat([p.detach().flatten() for p in params])).all()


@dataclass
class DivergenceGuard:
    """The rule above. ``check`` returns the reason the guard fires, or None; ``decide`` adds the
    vote of the ranks that share one adapted state."""

    entropy_tolerance: float = 0.1
    volume_ratio: float = 0.5
    min_fraction: float = 0.005

    def check(
        self, before: Signals, after: Signals, finite: bool, losses: Sequence[float]
    ) -> str | None:
        """The reason the guard fires, or None. ``finite``: every adapted parameter is finite
        (:func:`all_finite`); ``losses``: the adaptation's losses."""
        if not finite or not all(math.isfinite(v) for v in losses):
            return "non-finite loss or parameter during adaptation"
        if not math.isfinite(after.entropy):
            return "non-finite prediction after adaptation"
        if after.entropy > before.entropy * (1 + self.entropy_tolerance):
            return (
                f"entropy on held-out patches rose from {before.entropy:.4f} to {after.entropy:.4f}"
            )
        for c, (v0, v1) in enumerate(zip(before.volumes, after.volumes)):
            if c == 0 and len(before.volumes) > 1:
                continue
            grown = v0 < self.min_fraction <= v1
            if grown or (
                v0 >= self.min_fraction
                and not self.volume_ratio * v0 <= v1 <= v0 / self.volume_ratio
            ):
                return (
                    f"predicted volume of class {c} changed from {v0:.4f} to {v1:.4f} of the voxels"
                )
        return None

    def decide(
        self,
        before: Signals,
        after: Signals,
        finite: bool,
        losses: Sequence[float],
        sync_ranks: bool = False,
        device: torch.device | str = "cpu",
    ) -> str | None:
        """:meth:`check`, and with ``sync_ranks`` fire on every rank when it fires on any (ranks that
        share a continually adapted state must roll back together)."""
        reason = self.check(before, after, finite, losses)
        if sync_ranks and any_across_ranks(reason is not None, device):
            reason = reason or "the guard fired on another rank sharing this adapted state"
        return reason
