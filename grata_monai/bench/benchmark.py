"""Benchmark: every method on one labelled datalist, with one source model, in one process.

Volumes are preprocessed once with the bundle's own deterministic preprocessing, then each
method (source-only, norm statistics, TENT, MEMO, GraTa and its ablations) segments every
volume in order (continual methods see the stream in that order). Dice per organ is measured
with MONAI's ``DiceMetric`` on the preprocessed grid; time and peak GPU memory are measured
per volume, with a warm-up pass first. The same pieces give the study that chose the defaults
(:mod:`~grata_monai.bench.study`), the source model's own Dice (:func:`run_source`) and organ volumes on
unlabelled data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from tqdm import tqdm

from grata_monai import defaults
from grata_monai.audit import reports_of
from grata_monai.bench import paths
from grata_monai.bench.common import (
    bundle_config,
    device_name,
    git_revision,
    load_bundle,
    names,
    out_path,
    pick_device,
    prepare,
    sync,
    write_json,
)
from grata_monai.bench.methods import METHODS, make_inferer
from grata_monai.bundle.io import list_volumes

__all__ = [
    "BENCHMARK_SETTINGS",
    "evaluate",
    "summarize",
    "run_benchmark",
    "run_source",
    "run_volumes",
    "run_reference",
]


def evaluate(
    inferer: Inferer, network: torch.nn.Module, volumes: list[dict], device: torch.device
) -> list[dict]:
    """Segment each volume; return per-volume Dice per class, times and peak GPU memory."""
    num_classes = None
    rows = []
    for vol in tqdm(volumes, desc=getattr(inferer, "method", "source"), leave=False):
        image = vol["image"].to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            logits = inferer(image, network)
            pred = logits.argmax(1, keepdim=True)
        sync(device)
        seconds = time.perf_counter() - start
        num_classes = logits.shape[1]
        label = vol["label"].to(device).long()
        dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)(
            one_hot(pred, num_classes), one_hot(label, num_classes)
        )[0]
        report = (reports_of(logits) or [{}])[0]
        rows.append(
            {
                "volume": vol["name"],
                "dice": [float(d) for d in dice.cpu()],
                "adapt_s": report.get("adapt_seconds", 0.0),
                "infer_s": seconds,
                "end_to_end_s": seconds + vol["preprocess_s"],
                "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20
                if device.type == "cuda"
                else None,
                "guard": report.get("guard"),
            }
        )
    return rows


# What every method of a benchmark shares unless the settings say otherwise: the bundle's (grata_monai.defaults).
BENCHMARK_SETTINGS: dict[str, Any] = {
    "sw_batch_size": defaults.SW_BATCH_SIZE,
    "overlap": defaults.OVERLAP,
    "steps": defaults.STEPS,
    "patches_per_step": defaults.PATCHES_PER_STEP,
    "lr0": defaults.LR0,
    "episodic": defaults.EPISODIC,
    "amp": defaults.AMP,
    "seed": defaults.SEED,
    "perturb_scale": defaults.PERTURB_SCALE,
    "weak_transforms": defaults.WEAK_TRANSFORMS,
    "batch_views": defaults.BATCH_VIEWS,
}


def summarize(rows: list[dict]) -> dict:
    """Mean Dice per class (NaN-aware), mean over classes, and mean times."""
    per_class = torch.tensor([r["dice"] for r in rows])
    class_mean = torch.nanmean(per_class, dim=0)
    return {
        "dice_per_class": [float(d) for d in class_mean],
        "dice_mean": float(torch.nanmean(class_mean)),
        "adapt_s": sum(r["adapt_s"] for r in rows) / len(rows),
        "infer_s": sum(r["infer_s"] for r in rows) / len(rows),
        "end_to_end_s": sum(r["end_to_end_s"] for r in rows) / len(rows),
        "peak_gpu_mib": max((r["peak_gpu_mib"] or 0.0) for r in rows) or None,
        "guard_fired": sum(r["guard"] is not None for r in rows),
    }


def run_benchmark(
    data_dir: str | None = None,
    key: str = "mr_test",
    bundle_dir: str | None = None,
    out: str | None = None,
    methods: str | tuple = tuple(METHODS),
    limit: int | None = None,
    device: str | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict:
    """Run ``methods`` on the ``key`` split of ``data_dir`` and write a results JSON to ``out``.

    Args:
        data_dir: folder holding ``datalist.json`` (the abdomen set, or its compact cache); default
            ``$GRATA_DATA_DIR/abdomen``.
        key: the datalist split to run on.
        bundle_dir: the bundle whose network, weights and preprocessing are used; default
            ``$GRATA_BUNDLE_DIR``.
        out: the results file (overwritten: it is this command's own output).
        methods: comma-separated or tuple of names from ``METHODS``.
        limit: only the first ``limit`` volumes.
        device: ``"cuda"``/``"cpu"``; CUDA when available by default.
        settings: settings shared by the methods, each taking those it has (:mod:`grata_monai.bench.methods`),
            over ``BENCHMARK_SETTINGS`` and the bundle's ``roi_size``; ``weak_transforms`` may be comma-separated.

    Raises:
        ValueError: an unknown method, or a setting that no method takes (before any data is loaded).
    """
    out = out_path(out)
    data_dir = paths.data_dir(data_dir)
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    network, preprocessing, bundle = load_bundle(paths.bundle_dir(bundle_dir), dev)
    settings = {**bundle, **BENCHMARK_SETTINGS, **(settings or {})}
    settings["weak_transforms"] = names(settings["weak_transforms"])
    inferers = {method: make_inferer(method, settings) for method in names(methods)}
    volumes = prepare(data_dir, key, preprocessing, limit)
    results = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "data": {"data_dir": str(data_dir), "key": key, "volumes": [v["name"] for v in volumes]},
        "settings": settings,
        "methods": {},
    }
    for method, inferer in tqdm(inferers.items(), desc="methods"):
        evaluate(inferer, network, volumes[:1], dev)  # warm-up (cudnn autotuning, allocator)
        if hasattr(inferer, "reset"):
            inferer.reset()
        rows = evaluate(inferer, network, volumes, dev)
        recorded = inferer.settings() if hasattr(inferer, "settings") else {"method": "source"}
        results["methods"][method] = {
            "summary": summarize(rows),
            "settings": recorded,
            "volumes": rows,
        }
    write_json(out, results)
    return results


def run_source(
    ckpt: str | None = None,
    splits: str | tuple = ("ct_val", "mr_test"),
    data_dir: str | None = None,
    bundle_dir: str | None = None,
    out: str | None = None,
    device: str | None = None,
    sw_batch_size: int = defaults.SW_BATCH_SIZE,
    amp: bool = defaults.AMP,
    limit: int | None = None,
) -> dict:
    """Source-only Dice of a checkpoint on datalist ``splits``: with its running (training)
    statistics, and with per-volume normalization statistics (no gradient step).

    Args:
        ckpt: the checkpoint (``model.pt``, e.g. a fresh training run's); default the bundle's.
        splits: comma-separated or tuple of datalist keys.
        data_dir, bundle_dir, out, device, limit: as in :func:`run_benchmark`.
        sw_batch_size: sliding-window batch.
        amp: bfloat16 autocast of the per-volume statistics on CUDA.
    """
    out = out_path(out)
    data_dir = paths.data_dir(data_dir)
    dev = pick_device(device)
    network, preprocessing, bundle = load_bundle(paths.bundle_dir(bundle_dir), dev, ckpt)
    running = make_inferer(
        "source", {"roi_size": bundle["roi_size"], "sw_batch_size": sw_batch_size}
    )
    per_volume = make_inferer(
        "norm_stats", {"roi_size": bundle["roi_size"], "sw_batch_size": sw_batch_size, "amp": amp}
    )
    results: dict = {
        "ckpt": str(ckpt or "bundle"),
        "device": device_name(dev),
        "git_revision": git_revision(),
    }
    for split in names(splits):
        volumes = prepare(data_dir, split, preprocessing, limit)
        rows = {
            "running": evaluate(running, network, volumes, dev),
            "per_volume": evaluate(per_volume, network, volumes, dev),
        }
        results[split] = {mode: {"summary": summarize(r), "volumes": r} for mode, r in rows.items()}
        print(
            f"\n{split} ({len(volumes)} volumes)\n| statistics | mean | "
            + " | ".join(defaults.ORGANS)
            + " |"
        )
        for mode, entry in results[split].items():
            s = entry["summary"]
            print(
                f"| {mode} | {100 * s['dice_mean']:.1f} | "
                + " | ".join(f"{100 * d:.1f}" for d in s["dice_per_class"])
                + " |"
            )
    write_json(out, results)
    return results


def run_volumes(
    dataset_dir: str | None = None,
    bundle_dir: str | None = None,
    out: str | None = None,
    methods: str | tuple = (*METHODS, "bundle"),
    device: str | None = None,
    amp: bool = defaults.AMP,
) -> dict:
    """Unlabelled data (e.g. a new center's DICOM series): predicted organ volumes (mL) per method.

    Volumes come from ``dataset_dir`` as the bundle finds them (NIfTI files or DICOM series) and are
    preprocessed with the bundle's inference preprocessing; a plausible segmentation has organ
    volumes in the adult range (liver ~1-2.5 L, each kidney ~0.1-0.25 L, spleen ~0.1-0.4 L).
    ``dataset_dir`` defaults to ``$GRATA_DATA_DIR/ircad01/PATIENT_DICOM``. The method ``bundle`` is
    the bundle's own ``inferer`` as its ``inference.json`` builds it (the shipped default).
    """
    out = out_path(out)
    dataset_dir = paths.data_dir(dataset_dir, "ircad01/PATIENT_DICOM")
    bundle_dir = paths.bundle_dir(bundle_dir)
    dev = pick_device(device)
    methods = names(methods)
    network, _, bundle = load_bundle(bundle_dir, dev)
    parser = bundle_config(bundle_dir)
    preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
    labels = parser.get_parsed_content("num_classes")
    result = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "dataset_dir": str(dataset_dir),
        "volumes": {},
    }
    for item in list_volumes(dataset_dir):
        image = preprocessing(dict(item))["image"]
        voxel_ml = float(torch.prod(torch.as_tensor(image.pixdim[:3]))) / 1000.0
        rows = {}
        for method in tqdm(methods, desc=Path(item["image"]).name):
            bundled = method == "bundle"
            settings = {"roi_size": bundle["roi_size"], "amp": amp}
            inferer = (
                parser.get_parsed_content("inferer") if bundled else make_inferer(method, settings)
            )
            start = time.perf_counter()
            with torch.no_grad():
                logits = inferer(torch.as_tensor(image)[None].to(dev), network)
                pred = logits.argmax(1)
            counts = torch.bincount(pred.flatten(), minlength=labels).cpu()
            rows[method] = {
                "organ_ml": [float(c) * voxel_ml for c in counts[1:]],
                "seconds": time.perf_counter() - start,
            }
            report = (reports_of(logits) or [{}])[0]
            rows[method]["volume_statistics_weight"] = report.get("volume_statistics_weight")
            rows[method]["domain_distance"] = report.get("domain_distance")
        result["volumes"][Path(item["image"]).name] = rows
    write_json(out, result)
    return result


def run_reference(
    data_dir: str | None = None,
    key: str = "ct_train",
    bundle_dir: str | None = None,
    out: str | None = None,
) -> dict:
    """What the bundle's inference needs to know of its source training data, after the bundle's
    preprocessing: the intensity histogram (``grata_monai.domain``, for ``norm_stats="auto"``) and the
    organ layout (``grata_monai.postprocess``, for the post-processing). Written to ``out`` (JSON) and
    printed, to paste into the bundle's ``inference.json`` as ``reference_histogram`` and ``organ_layout``."""
    from grata_monai.domain import reference_histogram
    from grata_monai.postprocess import fit_layout

    _, preprocessing, _ = load_bundle(paths.bundle_dir(bundle_dir), torch.device("cpu"))
    volumes = prepare(paths.data_dir(data_dir), key, preprocessing)
    organs = sorted({int(v) for vol in volumes for v in torch.unique(vol["label"]).tolist()} - {0})
    labels = [(vol["label"][0, 0].numpy(), np.asarray(vol["label"].affine)) for vol in volumes]
    reference = {
        "reference_histogram": reference_histogram([v["image"] for v in volumes]),
        "organ_layout": fit_layout(labels, organs).to_dict(),
    }
    if out:
        write_json(Path(out), {"key": key, "volumes": [v["name"] for v in volumes], **reference})
    print(json.dumps(reference))
    return reference
