"""Is a volume from the source domain? Its intensity histogram against the source training data's.

The bundle scales every volume to [0, 1] by its own percentiles, so a scanner or modality shows in
the shape of the body's intensity histogram (voxels above ``floor``, ``bins`` bins): the L1 distance
to the mean histogram of the source training volumes (``reference``) is 0.17-0.43 for CT from the
training center and 0.31-0.78 for the CHAOS MR volumes (docs/reliability.md). The per-volume
normalization statistics that help on a new domain cost Dice in-domain, so the inferers blend the
source's running statistics and the volume's with :func:`volume_weight` of that distance.

That rule only fits a model whose training data the histogram describes. The bundle's rule
(``norm_stats="entropy"``) needs no source data: it predicts the volume with a few blends of the two
sets of statistics and keeps the one whose organs the network segments most confidently, the lowest
:func:`foreground_entropy` (chosen on the CT model's dev volumes, held out on an MR-trained model's CT
volumes: docs/benchmarks/study.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from grata_monai import defaults

__all__ = [
    "foreground_entropies",
    "foreground_entropy",
    "histogram_distance",
    "intensity_histogram",
    "reference_histogram",
    "volume_weight",
]


def intensity_histogram(
    volume: torch.Tensor, bins: int = defaults.HISTOGRAM_BINS, floor: float = defaults.BODY_FLOOR
) -> torch.Tensor:
    """Normalized histogram of the voxels of ``volume`` (any shape, intensities in [0, 1]) above ``floor``."""
    x = volume.detach().float().flatten()
    x = x[x > floor]
    if x.numel() == 0:
        return torch.full((bins,), 1.0 / bins)
    h = torch.histc(x, bins, 0.0, 1.0).cpu()  # counted on the volume's device: 32 numbers come back
    return h / h.sum()


def histogram_distance(volume: torch.Tensor, reference: Sequence[float]) -> float:
    """L1 distance between ``volume``'s intensity histogram and ``reference`` (0 to 2)."""
    ref = torch.as_tensor(reference, dtype=torch.float32)
    return float((intensity_histogram(volume, len(ref)) - ref).abs().sum())


def volume_weight(distance: float, blend_range: Sequence[float] = defaults.BLEND_RANGE) -> float:
    """Weight of the volume's own statistics: 0 up to ``blend_range[0]``, 1 from ``blend_range[1]``."""
    low, high = blend_range
    return min(max((distance - low) / (high - low), 0.0), 1.0)


def reference_histogram(
    volumes: Sequence[torch.Tensor], bins: int = defaults.HISTOGRAM_BINS
) -> list[float]:
    """The mean intensity histogram of the (preprocessed) source training ``volumes``."""
    if not volumes:
        raise ValueError(
            "need at least one source training volume to build the reference histogram."
        )
    mean = torch.stack([intensity_histogram(v, bins) for v in volumes]).mean(0)
    return [round(float(v), 6) for v in mean]


def foreground_entropy(logits: torch.Tensor, sigmoid: bool = False) -> float:
    """Mean prediction entropy over the voxels predicted as foreground.

    Args:
        logits: network output (1, C, *spatial).
        sigmoid: multi-label outputs (foreground: any channel above 0.5) instead of softmax classes
            (foreground: argmax not 0).
    """
    return foreground_entropies([logits], sigmoid)[0]


def foreground_entropies(outputs: Sequence[torch.Tensor], sigmoid: bool = False) -> list[float]:
    """:func:`foreground_entropy` of each of ``outputs``, read from the device at once."""
    sums = torch.stack([_entropy_sums(logits, sigmoid) for logits in outputs]).tolist()
    return [total / count if count > 0 else float("inf") for count, total in sums]


def _entropy_sums(logits: torch.Tensor, sigmoid: bool) -> torch.Tensor:
    """The foreground voxels' count and their summed entropy, in float64 on ``logits``' device."""
    x = logits.detach().float()
    if sigmoid:
        p = torch.sigmoid(x)
        entropy = -(p * p.clamp_min(1e-6).log() + (1 - p) * (1 - p).clamp_min(1e-6).log()).sum(1)
        foreground = (p > 0.5).any(1)
    else:
        p = torch.softmax(x, 1)
        entropy = -(p * p.clamp_min(1e-6).log()).sum(1)
        foreground = p.argmax(1) > 0
    return torch.stack([foreground.sum().double(), (entropy * foreground).sum().double()])
