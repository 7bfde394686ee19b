"""GraTaInferer: the GraTa update (:func:`~grata_monai.alignment.grata_step`) on the shared machinery of
:class:`~grata_monai.adaptive.AdaptiveInferer` (private network copy, patches, guard, statistics,
sliding-window inference and the audit report)."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import numpy as np
import torch

from grata_monai import defaults
from grata_monai.adaptive import AdaptiveInferer, Episode
from grata_monai.alignment import StepRecord, grata_step
from grata_monai.distributed import average_across_ranks
from grata_monai.guard import DivergenceGuard
from grata_monai.losses import ConsistencyLoss, EntropyLoss

__all__ = ["GraTaInferer"]

T = TypeVar("T")


@dataclass(frozen=True)
class _Presettable:
    """A default that a preset may replace; it reads as its value in ``help()``."""

    value: Any

    def __repr__(self) -> str:
        return repr(self.value)


def _presettable(value: T) -> T:
    return cast(T, _Presettable(value))


def _apply_preset(preset: str | None, **settings: Any) -> dict[str, Any]:
    """``settings`` with each default replaced by the preset's value, or by the plain default.

    Raises:
        ValueError: an unknown preset, or a setting that the preset fixes was passed too.
    """
    recipe = {}
    if preset is not None:
        if preset not in defaults.PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; choose from {sorted(defaults.PRESETS)}.")
        recipe = defaults.PRESETS[preset]
        fixed = sorted(k for k in recipe if not isinstance(settings[k], _Presettable))
        if fixed:
            raise ValueError(f"preset {preset!r} fixes {fixed}: drop them, or the preset.")
    return {
        k: recipe.get(k, v.value) if isinstance(v, _Presettable) else v for k, v in settings.items()
    }


class GraTaInferer(AdaptiveInferer):
    """GraTa: adapt norm-layer affine parameters by gradient alignment, then sliding-window inference.

    Args (besides :class:`~grata_monai.adaptive.AdaptiveInferer`'s, same defaults):
        preset: a named recipe from ``defaults.PRESETS`` (``"paper"``: the paper's protocol); it fixes
            its settings, so passing one of them too is an error.
        perturb_scale: scale of the perturbation theta - scale * g_a (1.0 in the paper).
        weak_transforms: weak views averaged into the pseudo-label (from ``views.WEAK_VIEWS``).
        strong: the strong view of the consistency loss (``losses.STRONG_VIEWS``).
        strong_prob: probability of each strong intensity augmentation.
        temperature: sharpening of the soft pseudo-label (1: none).
        batch_views: predict the weak views of the pseudo-label in one batch (faster on GPUs).
        align: ablation switch; False takes the pseudo gradient at theta (no perturbation).
        dynamic_lr: ablation switch; False steps with the fixed ``lr0``.
        sync_ranks: continual adaptation shared by all ranks of the default process group: the
            aux and pseudo gradients are averaged across ranks before the cosine and the step
            (every rank must make the same number of steps).
    """

    method = "grata"

    def __init__(
        self,
        roi_size: Sequence[int] | int = defaults.ROI_SIZE,
        sw_batch_size: int = defaults.SW_BATCH_SIZE,
        overlap: Sequence[float] | float = defaults.OVERLAP,
        *,
        preset: str | None = None,
        steps: int = _presettable(defaults.STEPS),
        patches_per_step: int = defaults.PATCHES_PER_STEP,
        lr0: float = _presettable(defaults.LR0),
        optimizer: str = _presettable("adam"),
        episodic: bool = _presettable(defaults.EPISODIC),
        amp: bool = defaults.AMP,
        seed: int = defaults.SEED,
        sigmoid: bool = False,
        foreground_threshold: float = 0.1,
        norm_stats: str = _presettable("volume"),
        statistics_candidates: Sequence[float] = defaults.STATISTICS_CANDIDATES,
        reference_histogram: Sequence[float] | None = None,
        patch_size: Sequence[int] | None = None,
        settle_windows: int | None = None,
        blend_range: Sequence[float] = defaults.BLEND_RANGE,
        adapt_params: str = _presettable("norm"),
        guard: bool | DivergenceGuard = _presettable(True),
        cuda_graphs: bool = defaults.CUDA_GRAPHS,
        channels_last: bool = defaults.CHANNELS_LAST,
        pair_patches: bool = False,
        perturb_scale: float = _presettable(defaults.PERTURB_SCALE),
        weak_transforms: Sequence[str] = _presettable(defaults.WEAK_TRANSFORMS),
        strong: str = _presettable("paper"),
        strong_prob: float = 0.5,
        temperature: float = _presettable(1.0),
        batch_views: bool = defaults.BATCH_VIEWS,
        align: bool = _presettable(True),
        dynamic_lr: bool = _presettable(True),
        sync_ranks: bool = False,
        mode: str = "constant",
        sigma_scale: Sequence[float] | float = 0.125,
        padding_mode: str = "constant",
        cval: float = 0.0,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
        progress: bool = False,
        cache_roi_weight_map: bool = False,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        buffer_dim: int = -1,
        with_coord: bool = False,
    ) -> None:
        s = _apply_preset(
            preset,
            steps=steps,
            lr0=lr0,
            optimizer=optimizer,
            episodic=episodic,
            norm_stats=norm_stats,
            adapt_params=adapt_params,
            guard=guard,
            perturb_scale=perturb_scale,
            weak_transforms=weak_transforms,
            strong=strong,
            temperature=temperature,
            align=align,
            dynamic_lr=dynamic_lr,
        )
        super().__init__(
            roi_size,
            sw_batch_size,
            overlap,
            steps=s["steps"],
            patches_per_step=patches_per_step,
            lr0=s["lr0"],
            optimizer=s["optimizer"],
            episodic=s["episodic"],
            amp=amp,
            seed=seed,
            sigmoid=sigmoid,
            foreground_threshold=foreground_threshold,
            norm_stats=s["norm_stats"],
            statistics_candidates=statistics_candidates,
            reference_histogram=reference_histogram,
            patch_size=patch_size,
            settle_windows=settle_windows,
            blend_range=blend_range,
            adapt_params=s["adapt_params"],
            guard=s["guard"],
            cuda_graphs=cuda_graphs,
            channels_last=channels_last,
            pair_patches=pair_patches,
            mode=mode,
            sigma_scale=sigma_scale,
            padding_mode=padding_mode,
            cval=cval,
            sw_device=sw_device,
            device=device,
            progress=progress,
            cache_roi_weight_map=cache_roi_weight_map,
            cpu_thresh=cpu_thresh,
            buffer_steps=buffer_steps,
            buffer_dim=buffer_dim,
            with_coord=with_coord,
        )
        if sync_ranks and self.episodic:
            raise ValueError("sync_ranks shares one continually adapted state: set episodic=False.")
        self.preset = preset
        self.perturb_scale, self.weak_transforms = s["perturb_scale"], tuple(s["weak_transforms"])
        self.strong = s["strong"]
        self.strong_prob, self.temperature, self.batch_views = (
            strong_prob,
            s["temperature"],
            batch_views,
        )
        self.align, self.dynamic_lr, self.sync_ranks = s["align"], s["dynamic_lr"], sync_ranks
        self._consistency(
            np.random.RandomState(0)
        )  # fail early on unknown views or a bad temperature

    def _consistency(self, rng: np.random.RandomState) -> ConsistencyLoss:
        loss = ConsistencyLoss(
            self.weak_transforms,
            self.sigmoid,
            None,
            self.strong_prob,
            self.batch_views,
            self.temperature,
            self.strong,
        )
        loss.set_random_state(rng)
        return loss

    def settings(self) -> dict:
        own = (
            "perturb_scale",
            "weak_transforms",
            "strong",
            "strong_prob",
            "temperature",
            "batch_views",
            "align",
        )
        own += ("dynamic_lr", "sync_ranks")
        return {**super().settings(), "preset": self.preset, **{k: getattr(self, k) for k in own}}

    def adapt_step(self, episode: Episode, x: torch.Tensor) -> StepRecord:
        """One GraTa update (:func:`~grata_monai.alignment.grata_step`) on the patch batch ``x``."""
        losses = episode.state.get("losses")
        if losses is None:
            losses = episode.state["losses"] = (
                EntropyLoss(self.sigmoid),
                self._consistency(episode.rng),
            )
        aux, consistency = losses
        # The strong view is drawn first, so its random draws come before the passes' in the rng.
        pseudo = functools.partial(consistency, strong_view=consistency.strong(x))
        return grata_step(
            episode.passes,
            episode.params,
            episode.optimizer,
            x,
            aux,
            pseudo,
            lr0=self.lr0,
            perturb_scale=self.perturb_scale,
            align=self.align,
            dynamic=self.dynamic_lr,
            reduce=average_across_ranks if self.sync_ranks else None,
        )
