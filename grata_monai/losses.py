"""Self-supervised losses of GraTa: the auxiliary entropy loss and the pseudo consistency loss.

Each loss is a callable ``loss(network, x) -> scalar`` on a batch ``x`` shaped (B, C, *spatial);
the views they predict on are in :mod:`grata_monai.views`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from grata_monai.defaults import BATCH_VIEWS, WEAK_TRANSFORMS
from grata_monai.views import WEAK_VIEWS, augment_each, strong_augmentation, weak_transform

__all__ = ["EPS", "probabilities", "probability_entropy", "entropy", "EntropyLoss", "soft_pseudo_label", "ConsistencyLoss"]

EPS = 1e-6


def probabilities(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Class probabilities: softmax over channels, or per-channel sigmoid."""
    return torch.sigmoid(logits) if sigmoid else torch.softmax(logits, dim=1)


def probability_entropy(p: torch.Tensor) -> torch.Tensor:
    """Mean per-voxel entropy of probabilities ``p``, ``-sum_c p_c log(p_c + 1e-6)`` (channels summed)."""
    return -(p * torch.log(p + EPS)).sum(dim=1).mean()


def entropy(logits: torch.Tensor, sigmoid: bool = False) -> torch.Tensor:
    """Mean per-voxel prediction entropy of ``logits`` (see :func:`probability_entropy`)."""
    return probability_entropy(probabilities(logits.float(), sigmoid))


class EntropyLoss:
    """Auxiliary loss L_aux: mean prediction entropy of the network on ``x``."""

    def __init__(self, sigmoid: bool = False) -> None:
        self.sigmoid = sigmoid

    def __call__(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return entropy(network(x), self.sigmoid)


@torch.no_grad()
def soft_pseudo_label(
    network: nn.Module,
    x: torch.Tensor,
    weak: Sequence[str] = WEAK_TRANSFORMS,
    sigmoid: bool = False,
    batch_views: bool = BATCH_VIEWS,
) -> torch.Tensor:
    """Average the probabilities predicted for ``x`` and its weak variants, each mapped back.

    ``batch_views`` predicts all same-shaped views in one forward pass (faster on GPUs; norm layers
    in test-statistics mode then see the statistics of all views together).
    """
    views = [("identity", x)] + [(name, weak_transform(x, name)) for name in weak]
    groups: dict[tuple, list] = {}
    for name, view in views:
        groups.setdefault(tuple(view.shape) if batch_views else (name,), []).append((name, view))
    total = torch.zeros((), device=x.device)
    for group in groups.values():
        probs = probabilities(network(torch.cat([v for _, v in group])).float(), sigmoid).split(len(x))
        for (name, _), p in zip(group, probs):
            total = total + (p if name == "identity" else weak_transform(p, name, inverse=True))
    return total / len(views)


class ConsistencyLoss:
    """Pseudo loss L_pse: cross-entropy of the strongly augmented input against the soft pseudo-label.

    Args:
        weak: names of the weak views whose predictions are averaged (from ``views.WEAK_VIEWS``).
        sigmoid: multi-label sigmoid outputs (BCE) instead of softmax (CE).
        seed: seed of the strong augmentation's random state.
        prob: probability of each strong intensity transform.
        batch_views: predict the weak views in one batch (see ``soft_pseudo_label``).
    """

    def __init__(
        self,
        weak: Sequence[str] = WEAK_TRANSFORMS,
        sigmoid: bool = False,
        seed: int | None = 0,
        prob: float = 0.5,
        batch_views: bool = BATCH_VIEWS,
    ) -> None:
        unknown = set(weak) - set(WEAK_VIEWS)
        if unknown:
            raise ValueError(f"Unknown weak transforms {sorted(unknown)}; choose from {WEAK_VIEWS}.")
        self.weak, self.sigmoid, self.batch_views = tuple(weak), sigmoid, batch_views
        self.augment = strong_augmentation(prob)
        self.augment.set_random_state(seed=seed)

    def strong(self, x: torch.Tensor) -> torch.Tensor:
        """Strongly augment each image of the batch independently."""
        return augment_each(self.augment, x)

    def __call__(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        target = soft_pseudo_label(network, x, self.weak, self.sigmoid, self.batch_views)
        logits = network(self.strong(x)).float()
        if self.sigmoid:
            return F.binary_cross_entropy_with_logits(logits, target)
        return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

