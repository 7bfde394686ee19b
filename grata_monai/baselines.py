"""Baseline test-time adaptation methods on the same machinery as GraTa.

Each is an :class:`~grata_monai.adaptive.AdaptiveInferer`: same private network copy, norm-layer
handling, patch sampling, per-volume statistics and sliding-window inference; only the
adaptation step differs. Source-only inference is MONAI's plain ``SlidingWindowInferer``.
"""

from __future__ import annotations

from typing import Any

import torch

from grata_monai.adaptive import AdaptiveInferer, Episode
from grata_monai.alignment import StepRecord
from grata_monai.losses import entropy, probabilities, probability_entropy
from grata_monai.views import StrongAugmentation

__all__ = ["NormStatsInferer", "TentInferer", "MemoInferer"]


class NormStatsInferer(AdaptiveInferer):
    """Norm-statistics adaptation: no gradient step, only per-volume normalization statistics.

    Args: those of :class:`~grata_monai.adaptive.AdaptiveInferer`, with ``steps`` fixed to 0.

    Raises:
        ValueError: when given ``steps`` other than 0 (use :class:`TentInferer` or
            ``GraTaInferer`` to take gradient steps).
    """

    method = "norm_stats"

    def __init__(self, *args: Any, steps: int = 0, **kwargs: Any) -> None:
        if steps != 0:
            raise ValueError(
                f"NormStatsInferer takes no gradient steps, got steps={steps}: leave steps out, or use "
                "TentInferer / GraTaInferer to adapt weights."
            )
        super().__init__(*args, steps=0, **kwargs)

    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord:
        """Never called: this method takes no steps (``steps`` is 0)."""
        raise RuntimeError("NormStatsInferer takes no gradient steps.")


class TentInferer(AdaptiveInferer):
    """TENT (Wang et al., ICLR 2021): minimise the prediction entropy over the norm affine parameters."""

    method = "tent"

    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord:
        return self.descend(episode, entropy(episode.passes(x), self.sigmoid))


class MemoInferer(AdaptiveInferer):
    """MEMO (Zhang et al., NeurIPS 2022): minimise the entropy of the prediction averaged over
    ``n_aug`` strong augmentations of the patches (adapting the norm affine parameters).

    Args: ``n_aug`` and those of :class:`~grata_monai.adaptive.AdaptiveInferer`.
    """

    method = "memo"

    def __init__(self, *args: Any, n_aug: int = 4, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if n_aug < 1:
            raise ValueError(f"n_aug must be >= 1, got {n_aug}.")
        self.n_aug = n_aug

    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord:
        augment = episode.state.get("augment")
        if augment is None:
            augment = episode.state["augment"] = StrongAugmentation()
            augment.set_random_state(episode.rng)
        views = torch.cat([augment(x) for _ in range(self.n_aug)])
        probs = probabilities(episode.passes(views).float(), self.sigmoid)
        marginal = probs.reshape(self.n_aug, *x.shape[:1], *probs.shape[1:]).mean(dim=0)
        return self.descend(episode, probability_entropy(marginal))
