"""Self-supervised losses of GraTa: the auxiliary entropy loss and the pseudo consistency loss.

Each loss is a callable ``loss(network, x) -> scalar`` on a batch ``x`` shaped (B, C, *spatial);
the views they predict on are in :mod:`grata_monai.views`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from grata_monai.augment import GPUAugment
from grata_monai.defaults import BATCH_VIEWS, WEAK_TRANSFORMS
from grata_monai.views import WEAK_VIEWS, StrongAugmentation, weak_transform

__all__ = [
    "EPS",
    "STRONG_VIEWS",
    "probabilities",
    "probability_entropy",
    "entropy",
    "EntropyLoss",
    "soft_pseudo_label",
    "sharpen",
    "invariant_augmentation",
    "InvariantStrongView",
    "ConsistencyLoss",
]

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
        probs = probabilities(network(torch.cat([v for _, v in group])).float(), sigmoid).split(
            len(x)
        )
        for (name, _), p in zip(group, probs):
            total = total + (p if name == "identity" else weak_transform(p, name, inverse=True))
    return total / len(views)


def sharpen(p: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sharpen class probabilities ``p`` (softmax over channels): ``p ** (1 / T)``, renormalized."""
    if temperature == 1.0:
        return p
    q = p.clamp_min(EPS) ** (1.0 / temperature)
    return q / q.sum(dim=1, keepdim=True)


def invariant_augmentation(prob: float = 0.5) -> GPUAugment:
    """The training-time intensity remaps without labels: GIN, gamma, bias field, blur, noise."""
    return GPUAugment(
        location_scale_prob=0.0,
        gin_prob=prob,
        gamma_prob=prob,
        invert_prob=0.0,
        bias_prob=prob,
        thick_slice_prob=0.0,
        blur_prob=prob,
        noise_prob=prob,
    )


class InvariantStrongView:
    """The intensity remaps the source model was trained to be invariant to (:func:`invariant_augmentation`),
    batched on the device with one seeded generator per device."""

    def __init__(self, prob: float = 0.5) -> None:
        self.augment = invariant_augmentation(prob)
        self._seed, self._generators = 0, {}

    def set_random_state(self, state: np.random.RandomState) -> None:
        """Seed the augmentation from ``state``."""
        self._seed, self._generators = int(state.randint(2**31)), {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device not in self._generators:
            g = torch.Generator(device=x.device).manual_seed(self._seed)
            self._generators[x.device] = (g, random.Random(self._seed))
        return self.augment(x, None, *self._generators[x.device]).to(x.dtype)


# The strong views of the consistency loss, by name (GraTaInferer's ``strong``).
STRONG_VIEWS = {"paper": StrongAugmentation, "invariant": InvariantStrongView}


class ConsistencyLoss:
    """Pseudo loss L_pse: cross-entropy of the strongly augmented input against the soft pseudo-label.

    Args:
        weak: names of the weak views whose predictions are averaged (from ``views.WEAK_VIEWS``).
        sigmoid: multi-label sigmoid outputs (BCE) instead of softmax (CE).
        seed: seed of the strong augmentation's random state.
        prob: probability of each strong intensity transform.
        batch_views: predict the weak views in one batch (see ``soft_pseudo_label``).
        temperature: sharpen the soft pseudo-label (softmax outputs): ``p ** (1 / T)``; 1 keeps it.
        strong: the strong view, one of ``STRONG_VIEWS``.
    """

    def __init__(
        self,
        weak: Sequence[str] = WEAK_TRANSFORMS,
        sigmoid: bool = False,
        seed: int | None = 0,
        prob: float = 0.5,
        batch_views: bool = BATCH_VIEWS,
        temperature: float = 1.0,
        strong: str = "paper",
    ) -> None:
        unknown = set(weak) - set(WEAK_VIEWS)
        if unknown:
            raise ValueError(
                f"Unknown weak transforms {sorted(unknown)}; choose from {WEAK_VIEWS}."
            )
        if strong not in STRONG_VIEWS:
            raise ValueError(f"Unknown strong view {strong!r}; choose from {tuple(STRONG_VIEWS)}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.weak, self.sigmoid, self.batch_views = tuple(weak), sigmoid, batch_views
        self.temperature = temperature
        self.strong = STRONG_VIEWS[strong](prob)
        self.set_random_state(np.random.RandomState(seed))

    def set_random_state(self, state: np.random.RandomState) -> None:
        """Draw the strong view's randomness from ``state``."""
        self.strong.set_random_state(state)

    def __call__(
        self, network: nn.Module, x: torch.Tensor, strong_view: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss of ``network`` on ``x``; ``strong_view``: ``self.strong(x)`` drawn beforehand."""
        target = soft_pseudo_label(network, x, self.weak, self.sigmoid, self.batch_views)
        logits = network(self.strong(x) if strong_view is None else strong_view).float()
        if self.sigmoid:
            return F.binary_cross_entropy_with_logits(logits, target)
        target = sharpen(target, self.temperature)
        return -(target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
