"""Anatomical post-processing: one connected component per organ, chosen by size and layout.

A segmentation network leaves scattered false positives far from the organs (in the pelvis, the
thorax), most of all on a shifted domain. Keeping each organ's largest connected component removes
them, but fails when a false blob is larger than the organ: the blob wins and the organ is lost.
:func:`keep_organ_components` keeps exactly one component per organ that is present (so an organ is
never deleted) and chooses it jointly for all organs: the largest candidates are scored by their
size and by how well the organs' relative positions (centroid offsets in world millimetres) match an
:class:`OrganLayout` learnt from the source's training labels. Without a layout it is MONAI's
``KeepLargestConnectedComponent`` per organ. Components are labelled with scikit-image on the CPU.

:class:`KeepOrganComponentsd` is the MONAI transform the bundle's ``postprocessing`` names.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import optional_import

__all__ = [
    "KeepOrganComponentsd",
    "OrganLayout",
    "components",
    "fit_layout",
    "keep_organ_components",
]

measure, _ = optional_import("skimage.measure")

MAX_COMBINATIONS = (
    4096  # joint choices scored per volume (candidates per organ shrink with more organs)
)


@dataclass(frozen=True)
class OrganLayout:
    """Where organs lie relative to each other: per ordered pair ``(a, b)`` of label values, the mean
    and standard deviation of ``centroid(b) - centroid(a)`` in world millimetres (RAS).

    Attributes:
        organs: label values covered.
        mean: ``{"a,b": [dx, dy, dz]}`` for ``a < b``.
        std: same keys, per-axis standard deviations (at least ``min_std_mm`` when fitted).
    """

    organs: tuple[int, ...]
    mean: Mapping[str, Sequence[float]]
    std: Mapping[str, Sequence[float]]

    @classmethod
    def from_dict(cls, data: Mapping) -> OrganLayout:
        """From the JSON form (``to_dict``), as stored in a bundle config."""
        try:
            return cls(tuple(int(o) for o in data["organs"]), dict(data["mean"]), dict(data["std"]))
        except (KeyError, TypeError) as e:
            raise ValueError(
                f"organ layout needs 'organs', 'mean' and 'std' (grata-monai reference): {e}"
            ) from e

    def to_dict(self) -> dict:
        return {"organs": list(self.organs), "mean": dict(self.mean), "std": dict(self.std)}

    def log_likelihood(self, centroids: Mapping[int, np.ndarray]) -> float:
        """Gaussian log-likelihood (up to a constant) of the pairwise offsets of ``centroids``."""
        total = 0.0
        for a, b in itertools.combinations(sorted(centroids), 2):
            key = f"{a},{b}"
            if key in self.mean:
                z = (centroids[b] - centroids[a] - np.asarray(self.mean[key])) / np.asarray(
                    self.std[key]
                )
                total -= 0.5 * float(z @ z)
        return total


def _centroids_mm(
    label: np.ndarray, affine: np.ndarray, organs: Sequence[int]
) -> dict[int, np.ndarray]:
    out = {}
    for organ in organs:
        idx = np.argwhere(label == organ)
        if len(idx):
            out[organ] = affine[:3, :3] @ idx.mean(0) + affine[:3, 3]
    return out


def fit_layout(
    labels: Sequence[tuple[np.ndarray, np.ndarray]], organs: Sequence[int], min_std_mm: float = 15.0
) -> OrganLayout:
    """Learn an :class:`OrganLayout` from labelled volumes.

    Args:
        labels: ``(label map (H, W, D), affine (4, 4) voxel-to-world RAS)`` pairs, e.g. the source's
            training labels after the bundle's preprocessing.
        organs: label values to cover.
        min_std_mm: floor of every standard deviation: patients and breathing differ more than a few
            training volumes show.

    With fewer than two organs in any volume the layout holds no pair, and the post-processing keeps
    each organ's largest component.
    """
    offsets: dict[str, list[np.ndarray]] = {}
    for label, affine in labels:
        c = _centroids_mm(np.asarray(label), np.asarray(affine, dtype=np.float64), organs)
        for a, b in itertools.combinations(sorted(c), 2):
            offsets.setdefault(f"{a},{b}", []).append(c[b] - c[a])
    mean = {k: [round(float(v), 2) for v in np.mean(o, 0)] for k, o in offsets.items()}
    std = {
        k: [round(max(float(v), min_std_mm), 2) for v in np.std(o, 0)] for k, o in offsets.items()
    }
    return OrganLayout(tuple(sorted(int(o) for o in organs)), mean, std)


def _label_components(label: np.ndarray) -> np.ndarray:
    """Connected regions of equal non-zero value (full connectivity) of a label map, in one pass."""
    return measure.label(label, background=0, connectivity=label.ndim)


@dataclass(frozen=True)
class Component:
    """One connected component of an organ."""

    index: int  # its value in the component image
    organ: int
    size: int
    centroid_mm: np.ndarray


def components(label: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """Label the connected components of every organ of ``label`` (*spatial) at once; return the
    component image and the components, with sizes and world centroids."""
    image = _label_components(np.asarray(label))
    fg = np.flatnonzero(image)  # organ voxels only: a few percent of the volume
    ids = image.ravel()[fg]
    sizes = np.bincount(ids)
    coords = np.unravel_index(fg, image.shape)
    means = (
        np.stack([np.bincount(ids, weights=c, minlength=len(sizes)) for c in coords], 1)
        / np.maximum(sizes, 1)[:, None]
    )
    organs = np.zeros(len(sizes), dtype=np.int64)
    organs[ids] = np.asarray(label).ravel()[fg]
    world = means @ affine[:3, :3].T + affine[:3, 3]
    return image, [
        Component(i, int(organs[i]), int(sizes[i]), world[i]) for i in range(1, len(sizes))
    ]


def keep_organ_components(
    label: torch.Tensor,
    affine: np.ndarray | torch.Tensor | None = None,
    layout: OrganLayout | None = None,
    organs: Sequence[int] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Keep one connected component per organ present in ``label``; the rest becomes background.

    Without a layout this is MONAI's ``KeepLargestConnectedComponent(independent=True)`` for every
    organ, with one labelling pass for all organs instead of one per organ.

    Args:
        label: channel-first integer label map (1, *spatial), 0 background.
        affine: voxel-to-world matrix (RAS mm); default the label's own (MetaTensor), else identity.
        layout: the organs' relative positions; None keeps each organ's largest component.
        organs: label values to process (default: every non-zero value present).

    Returns:
        The cleaned label map (same shape, dtype and type) and a summary: the fraction of organ
        voxels removed, and the organs whose kept component is not their largest (``layout_changed``).
    """
    if affine is None:
        affine = label.affine if isinstance(label, MetaTensor) else np.eye(4)
    affine = np.asarray(
        affine.cpu() if isinstance(affine, torch.Tensor) else affine, dtype=np.float64
    )
    data = label[0]
    image, comps = components(data.cpu().numpy(), affine)
    wanted = set(organs) if organs else {c.organ for c in comps}
    by_organ: dict[int, list[Component]] = {}
    for c in sorted(comps, key=lambda c: -c.size):
        if c.organ in wanted:
            by_organ.setdefault(c.organ, []).append(c)
    chosen = {o: cs[0] for o, cs in by_organ.items()}
    if layout is not None and len(by_organ) > 1:
        chosen = _choose_by_layout(by_organ, layout)
    keep = np.zeros(len(comps) + 1, dtype=bool)
    keep[[c.index for c in comps if c.organ not in wanted]] = True
    keep[[c.index for c in chosen.values()]] = True
    keep[0] = True
    drop = torch.as_tensor(~keep[image], device=label.device)
    organ_voxels = sum(c.size for cs in by_organ.values() for c in cs)
    removed = organ_voxels - sum(c.size for c in chosen.values())
    summary = {
        "removed_fraction": removed / organ_voxels if organ_voxels else 0.0,
        "layout_changed": sorted(o for o, c in chosen.items() if c is not by_organ[o][0]),
    }
    return label.masked_fill(drop[None], 0), summary


def _choose_by_layout(
    by_organ: Mapping[int, list[Component]], layout: OrganLayout
) -> dict[int, Component]:
    """One of each organ's largest components, maximizing the sum of their log sizes plus the
    layout's log-likelihood of their centroids (every combination of at most ``MAX_COMBINATIONS``)."""
    organs = sorted(by_organ)
    per_organ = max(1, int(MAX_COMBINATIONS ** (1.0 / len(organs))))
    best, best_score = None, -math.inf
    for choice in itertools.product(*(by_organ[o][:per_organ] for o in organs)):
        score = sum(math.log(c.size) for c in choice)
        score += layout.log_likelihood({c.organ: c.centroid_mm for c in choice})
        if score > best_score:
            best, best_score = choice, score
    return {c.organ: c for c in best}


class KeepOrganComponentsd(MapTransform):
    """Dictionary transform: :func:`keep_organ_components` on discrete label maps (after ``argmax``).

    Args:
        keys: label-map keys (channel-first, one channel, integer classes).
        layout: an :class:`OrganLayout` or its JSON dict (``grata-monai reference``); None keeps each
            organ's largest component (MONAI's ``KeepLargestConnectedComponent``).
        organs: label values to process (default: all present).
        summary_key: where the per-volume summary goes in the data dict (None: nowhere).
        allow_missing_keys: as MONAI's ``MapTransform``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        layout: OrganLayout | Mapping | None = None,
        organs: Sequence[int] | None = None,
        summary_key: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.layout = (
            layout
            if isinstance(layout, OrganLayout) or layout is None
            else OrganLayout.from_dict(layout)
        )
        self.organs = tuple(organs) if organs else None
        self.summary_key = summary_key

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], summary = keep_organ_components(d[key], layout=self.layout, organs=self.organs)
            if self.summary_key:
                d[self.summary_key] = summary
        return d
