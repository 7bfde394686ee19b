"""The statistics candidates of every volume: what each choice of normalization statistics writes.

For each volume and model, the network is adapted as the bundle does (one GraTa step, or none), its
BatchNorm statistics are settled on the whole volume, and the sliding-window prediction is made for
each blend ``alpha`` of the volume's own statistics with the source's (0: source, 1: own), and for
the mean of the probabilities of a few blends. Each candidate is scored raw, with each organ's
largest component, and with the layout-aware post-processing (:mod:`grata_monai.postprocess`), and
carries the label-free signals a statistics rule may use (removed fraction, entropy, organ volumes).
The study reads this table to compare rules in both directions (CT model on MR, MR model on CT).
"""

from __future__ import annotations

import json
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SlidingWindowInferer

from grata_monai import defaults
from grata_monai.audit import VolumeReport
from grata_monai.bench import paths
from grata_monai.bench.common import (
    device_name,
    git_revision,
    load_bundle,
    names,
    pick_device,
    prepare,
)
from grata_monai.domain import histogram_distance
from grata_monai.inferer import GraTaInferer
from grata_monai.norms import (
    batch_norm_layers,
    batch_norm_statistics,
    blend_batch_norm_statistics,
    load_batch_norm_statistics,
    settle_batch_norm_statistics,
)
from grata_monai.postprocess import OrganLayout, keep_organ_components
from grata_monai.sampling import windows

__all__ = ["ALPHAS", "ENSEMBLE", "run_candidates", "score_candidate", "volume_candidates"]

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight of the volume's own statistics
ENSEMBLE = (0.0, 0.5, 1.0)  # blends whose probabilities are averaged into the "ensemble" candidate


def _dice(pred: np.ndarray, label: np.ndarray, organs: int) -> list[float]:
    out = []
    for c in range(1, organs + 1):
        p, t = pred == c, label == c
        denom = p.sum() + t.sum()
        out.append(float(2 * (p & t).sum() / denom) if t.any() else float("nan"))
    return out


def score_candidate(args: tuple) -> dict:
    """Dice (raw, largest component, layout) and signals of one candidate's probabilities (uint8)."""
    probs, label, affine, layout, voxel_ml = args
    organs = probs.shape[0] - 1
    pred = probs.argmax(0).astype(np.uint8)
    p = probs.astype(np.float32) / 255.0
    p = p / np.maximum(p.sum(0, keepdims=True), 1e-6)
    entropy = -(p * np.log(np.clip(p, 1e-6, 1))).sum(0)
    fg = pred > 0
    lcc, lcc_s = keep_organ_components(torch.as_tensor(pred)[None], affine, None)
    lay, lay_s = keep_organ_components(torch.as_tensor(pred)[None], affine, layout)
    lay = lay[0].numpy()
    return {
        "dice": {
            "raw": _dice(pred, label, organs),
            "lcc": _dice(lcc[0].numpy(), label, organs),
            "layout": _dice(lay, label, organs),
        },
        "removed_fraction": {"lcc": lcc_s["removed_fraction"], "layout": lay_s["removed_fraction"]},
        "layout_changed": lay_s["layout_changed"],
        "entropy_fg": float(entropy[fg].mean()) if fg.any() else 0.0,
        "volume_ml": [float((lay == c).sum() * voxel_ml) for c in range(1, organs + 1)],
        "fg_ml": float(fg.sum() * voxel_ml),
    }


def _stat_shift(network: torch.nn.Module, source: torch.nn.Module) -> float:
    """Mean over BatchNorm layers of |own mean - source mean| / source std (a domain-shift signal)."""
    shifts = [
        float(
            (
                (m.running_mean - s.running_mean.to(m.running_mean)).abs()
                / (s.running_var.to(m.running_var) + 1e-5).sqrt()
            ).mean()
        )
        for m, s in zip(batch_norm_layers(network), batch_norm_layers(source))
    ]
    return float(np.mean(shifts))


@torch.no_grad()
def _probabilities(network, sliding, image) -> np.ndarray:
    return (
        (torch.softmax(sliding(image, network).float(), 1)[0] * 255)
        .round()
        .to(torch.uint8)
        .cpu()
        .numpy()
    )


def volume_candidates(
    source: torch.nn.Module,
    image: torch.Tensor,
    adapt: bool,
    device: torch.device,
    reference: list[float],
) -> tuple[dict[str, np.ndarray], dict]:
    """Probabilities (uint8, C x spatial) of every candidate for one preprocessed ``image`` (1, 1, *spatial),
    after one GraTa step (``adapt``) or none, and the volume's label-free signals."""
    inferer = GraTaInferer(norm_stats="volume", steps=defaults.STEPS if adapt else 0)
    sliding = SlidingWindowInferer(defaults.ROI_SIZE, defaults.SW_BATCH_SIZE, defaults.OVERLAP)
    volume = image[0]
    report = VolumeReport("grata", {})
    amp = device.type == "cuda"
    episode = inferer.configure(source, device)
    with torch.enable_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        episode = inferer.adapt(episode, volume, device, report)
    network = episode.network
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        settle_batch_norm_statistics(network, windows(volume, defaults.ROI_SIZE, device))
        own = batch_norm_statistics(network)
        signals = {
            "stat_shift": _stat_shift(network, source),
            "histogram_distance": histogram_distance(volume, reference),
            "guard": report.guard,
            "cosine": [s["cosine"] for s in report.steps],
        }
        probs = {}
        for alpha in ALPHAS:
            load_batch_norm_statistics(network, own)
            blend_batch_norm_statistics(network, source, alpha)
            network.eval()
            probs[f"{alpha:g}"] = _probabilities(network, sliding, image)
    mean = np.mean([probs[f"{a:g}"].astype(np.float32) for a in ENSEMBLE], 0)
    probs["ensemble"] = mean.round().astype(np.uint8)
    return probs, signals


def run_candidates(
    data_dir: str | None = None,
    bundle_dir: str | None = None,
    ckpt: str | None = None,
    splits: str | tuple = "mr_test,ct_val",
    reference: str | None = None,
    no_adapt_splits: str | tuple = "",
    out: str = "candidates.json",
    device: str | None = None,
    workers: int = 8,
    limit: int | None = None,
) -> dict:
    """Write the candidate table of ``ckpt`` (default the bundle's model) on ``splits``.

    Args:
        data_dir: folder with ``datalist.json`` (the abdomen set or its cache).
        bundle_dir: the bundle (network definition, preprocessing, reference histogram).
        ckpt: the model's weights (default ``models/model.pt`` of the bundle).
        splits: datalist keys to score.
        reference: JSON file of ``grata-monai reference`` for ``ckpt``'s training data (its histogram and
            organ layout); default the bundle's ``reference_histogram`` and ``organ_layout``.
        no_adapt_splits: splits also scored without the GraTa step (what the step adds).
        out: the JSON file to write.
        device: ``cuda`` / ``cpu``.
        workers: processes scoring candidates (post-processing and Dice run on the CPU).
        limit: only the first ``limit`` volumes of each split.
    """
    from monai.bundle import ConfigParser

    dev = pick_device(device)
    bundle = paths.bundle_dir(bundle_dir)
    network, preprocessing, _ = load_bundle(bundle, dev, ckpt)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    ref = json.loads(Path(reference).read_text()) if reference else parser.get()
    lay = OrganLayout.from_dict(ref["organ_layout"])
    data = paths.data_dir(data_dir)
    table = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "ckpt": str(ckpt or "bundle"),
        "command": " ".join(sys.argv),
        "alphas": list(ALPHAS),
        "ensemble": list(ENSEMBLE),
        "volumes": {},
    }
    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn")
    )  # no fork after CUDA/OpenMP
    for split in names(splits):
        for vol in prepare(data, split, preprocessing, limit):
            image, label = vol["image"].to(dev), vol["label"][0, 0].numpy().astype(np.uint8)
            affine = np.asarray(vol["image"].affine, dtype=np.float64)
            voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
            entry = {"split": split}
            for adapt in (True, False) if split in names(no_adapt_splits) else (True,):
                probs, signals = volume_candidates(
                    network, image, adapt, dev, ref["reference_histogram"]
                )
                keys = list(probs)
                scores = pool.map(
                    score_candidate, [(probs[k], label, affine, lay, voxel_ml) for k in keys]
                )
                entry["grata" if adapt else "no_step"] = {
                    "signals": signals,
                    "candidates": dict(zip(keys, scores)),
                }
            table["volumes"][vol["name"]] = entry
            Path(out).write_text(json.dumps(table, indent=1, default=float))  # after every volume
            print(
                vol["name"],
                {
                    k: round(100 * float(np.nanmean(c["dice"]["layout"])), 1)
                    for k, c in entry["grata"]["candidates"].items()
                },
                flush=True,
            )
    pool.shutdown()
    return table
