"""Benchmark: every method on one labelled datalist, with one source model, in one process.

Volumes are preprocessed once with the bundle's own deterministic preprocessing, then each
method (source-only, norm statistics, TENT, MEMO, GraTa and its ablations) segments every
volume in order (continual methods see the stream in that order). Dice per organ is measured
with MONAI's ``DiceMetric`` on the preprocessed grid; time and peak GPU memory are measured
per volume, with a warm-up pass first. The same pieces give the study that chose the defaults
(:mod:`~grata_monai.bench.study`), the source model's own Dice (:func:`run_source`) and organ volumes on unlabelled data.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist
from monai.inferers import Inferer, SlidingWindowInferer
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot
from tqdm import tqdm

from grata_monai import defaults
from grata_monai.audit import reports_of
from grata_monai.baselines import MemoInferer, NormStatsInferer, TentInferer
from grata_monai.bench import paths
from grata_monai.bundle.io import list_volumes
from grata_monai.inferer import GraTaInferer

__all__ = [
    "METHODS",
    "load_bundle",
    "make_inferer",
    "prepare",
    "evaluate",
    "run_benchmark",
    "run_source",
    "run_volumes",
    "run_reference",
]

METHODS = ("source", "norm_stats", "tent", "memo", "grata", "grata_no_align", "grata_fixed_lr")

def _names(value: str | tuple) -> tuple:
    """A comma-separated string (as from the command line) or a sequence, as a tuple of names."""
    return tuple(v for v in value.split(",") if v) if isinstance(value, str) else tuple(value)


def load_bundle(
    bundle_dir: str | Path, device: torch.device, ckpt: str | Path | None = None
) -> tuple[torch.nn.Module, Any, dict]:
    """The bundle's network (with ``ckpt``, by default its ``models/model.pt``), labelled
    preprocessing (``validate#preprocessing`` of ``train.json``) and settings."""
    bundle_dir = Path(bundle_dir)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.json"))
    parser["bundle_root"] = str(bundle_dir)
    network = parser.get_parsed_content("network_def", instantiate=True)
    state = torch.load(ckpt or bundle_dir / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    preprocessing = parser.get_parsed_content("validate#preprocessing", instantiate=True)
    return network.to(device).eval(), preprocessing, {"roi_size": list(parser["roi_size"])}


def make_inferer(
    method: str,
    roi_size=defaults.ROI_SIZE,
    sw_batch_size: int = defaults.SW_BATCH_SIZE,
    overlap: float = defaults.OVERLAP,
    **adapt: Any,
) -> Inferer:
    """The inferer of ``method`` with shared sliding-window and adaptation settings (the settings a
    method does not have are dropped: GraTa's for the baselines, ``steps`` for norm statistics)."""
    if method == "source":
        return SlidingWindowInferer(roi_size=roi_size, sw_batch_size=sw_batch_size, overlap=overlap)
    weak = adapt.pop("weak_transforms", None)
    grata_only = {k: adapt.pop(k) for k in ("perturb_scale", "batch_views") if k in adapt}
    grata_only |= {"weak_transforms": weak} if weak else {}
    if method == "norm_stats":
        adapt.pop("steps", None)
    classes = {"norm_stats": NormStatsInferer, "tent": TentInferer, "memo": MemoInferer}
    if method in classes:
        return classes[method](roi_size, sw_batch_size, overlap, **adapt)
    ablations = {
        "grata": {},
        "grata_no_align": {"align": False, "dynamic_lr": False},
        "grata_fixed_lr": {"dynamic_lr": False},
    }
    if method not in ablations:
        raise ValueError(f"Unknown method {method!r}; choose from {METHODS}.")
    return GraTaInferer(roi_size, sw_batch_size, overlap, **adapt, **grata_only, **ablations[method])


def prepare(data_dir: str | Path, key: str, preprocessing, limit: int | None = None) -> list[dict]:
    """Load and preprocess the ``key`` split of ``data_dir/datalist.json`` (image, label, name, seconds)."""
    items = load_decathlon_datalist(str(Path(data_dir) / "datalist.json"), True, key, base_dir=str(data_dir))
    volumes = []
    for item in tqdm(items[:limit], desc=f"load {key}", leave=False):
        start = time.perf_counter()
        data = preprocessing(dict(item))
        volumes.append(
            {
                "name": Path(item["image"]).name.split(".")[0],
                "image": torch.as_tensor(data["image"])[None],
                "label": torch.as_tensor(data["label"])[None],
                "preprocess_s": time.perf_counter() - start,
            }
        )
    return volumes


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(inferer: Inferer, network: torch.nn.Module, volumes: list[dict], device: torch.device) -> list[dict]:
    """Segment each volume; return per-volume Dice per class, times and peak GPU memory."""
    num_classes = None
    rows = []
    for vol in tqdm(volumes, desc=getattr(inferer, "method", "source"), leave=False):
        image = vol["image"].to(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        with torch.no_grad():
            logits = inferer(image, network)
            pred = logits.argmax(1, keepdim=True)
        _sync(device)
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
                "peak_gpu_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
                "guard": report.get("guard"),
            }
        )
    return rows


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


def _git_revision() -> str:
    if os.environ.get("GRATA_GIT_REVISION"):  # set where the tree travels without .git (GPU host)
        return os.environ["GRATA_GIT_REVISION"]
    try:
        here = Path(__file__).parent  # the revision of this code, when it is a git checkout
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or 'cpu'})"


def run_benchmark(
    data_dir: str | None = None,
    key: str = "mr_test",
    bundle_dir: str | None = None,
    out: str | None = None,
    methods: str | tuple = METHODS,
    limit: int | None = None,
    device: str | None = None,
    sw_batch_size: int = defaults.SW_BATCH_SIZE,
    overlap: float = defaults.OVERLAP,
    steps: int = defaults.STEPS,
    patches_per_step: int = defaults.PATCHES_PER_STEP,
    lr0: float = defaults.LR0,
    episodic: bool = defaults.EPISODIC,
    perturb_scale: float = defaults.PERTURB_SCALE,
    weak_transforms: str | tuple = defaults.WEAK_TRANSFORMS,
    amp: bool = defaults.AMP,
    batch_views: bool = defaults.BATCH_VIEWS,
    seed: int = defaults.SEED,
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
        sw_batch_size, overlap: sliding-window settings of every method.
        steps, patches_per_step, lr0, episodic, perturb_scale, weak_transforms, amp, batch_views, seed:
            adaptation settings shared by the adaptive methods (defaults: ``grata_monai.defaults``).
    """
    out = _out(out)
    data_dir = paths.data_dir(data_dir)
    dev = _device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    methods = _names(methods)
    weak_transforms = _names(weak_transforms)
    network, preprocessing, bundle = load_bundle(paths.bundle_dir(bundle_dir), dev)
    volumes = prepare(data_dir, key, preprocessing, limit)
    adapt = {"steps": steps, "patches_per_step": patches_per_step, "lr0": lr0, "episodic": episodic, "amp": amp}
    adapt |= {"seed": seed, "perturb_scale": perturb_scale, "weak_transforms": weak_transforms, "batch_views": batch_views}
    results = {
        "device": device_name(dev),
        "git_revision": _git_revision(),
        "data": {"data_dir": str(data_dir), "key": key, "volumes": [v["name"] for v in volumes]},
        "settings": {"sw_batch_size": sw_batch_size, "overlap": overlap, **bundle, **adapt},
        "methods": {},
    }
    for method in tqdm(methods, desc="methods"):
        inferer = make_inferer(method, bundle["roi_size"], sw_batch_size, overlap, **adapt)
        evaluate(inferer, network, volumes[:1], dev)  # warm-up (cudnn autotuning, allocator)
        if hasattr(inferer, "reset"):
            inferer.reset()
        rows = evaluate(inferer, network, volumes, dev)
        settings = inferer.settings() if hasattr(inferer, "settings") else {"method": "source"}
        results["methods"][method] = {"summary": summarize(rows), "settings": settings, "volumes": rows}
    _write(out, results)
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
    out = _out(out)
    data_dir = paths.data_dir(data_dir)
    dev = _device(device)
    network, preprocessing, bundle = load_bundle(paths.bundle_dir(bundle_dir), dev, ckpt)
    running = make_inferer("source", bundle["roi_size"], sw_batch_size)
    per_volume = make_inferer("norm_stats", bundle["roi_size"], sw_batch_size, amp=amp)
    results: dict = {"ckpt": str(ckpt or "bundle"), "device": device_name(dev), "git_revision": _git_revision()}
    for split in _names(splits):
        volumes = prepare(data_dir, split, preprocessing, limit)
        rows = {"running": evaluate(running, network, volumes, dev), "per_volume": evaluate(per_volume, network, volumes, dev)}
        results[split] = {mode: {"summary": summarize(r), "volumes": r} for mode, r in rows.items()}
        print(f"\n{split} ({len(volumes)} volumes)\n| statistics | mean | " + " | ".join(defaults.ORGANS) + " |")
        for mode, entry in results[split].items():
            s = entry["summary"]
            print(f"| {mode} | {100 * s['dice_mean']:.1f} | " + " | ".join(f"{100 * d:.1f}" for d in s["dice_per_class"]) + " |")
    _write(out, results)
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
    out = _out(out)
    dataset_dir = paths.data_dir(dataset_dir, "ircad01/PATIENT_DICOM")
    bundle_dir = paths.bundle_dir(bundle_dir)
    dev = _device(device)
    methods = _names(methods)
    network, _, bundle = load_bundle(bundle_dir, dev)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    preprocessing = parser.get_parsed_content("preprocessing", instantiate=True)
    labels = parser.get_parsed_content("num_classes")
    result = {"device": device_name(dev), "git_revision": _git_revision(), "dataset_dir": str(dataset_dir), "volumes": {}}
    for item in list_volumes(dataset_dir):
        image = preprocessing(dict(item))["image"]
        voxel_ml = float(torch.prod(torch.as_tensor(image.pixdim[:3]))) / 1000.0
        rows = {}
        for method in tqdm(methods, desc=Path(item["image"]).name):
            bundled = method == "bundle"
            inferer = parser.get_parsed_content("inferer") if bundled else make_inferer(method, bundle["roi_size"], amp=amp)
            start = time.perf_counter()
            with torch.no_grad():
                logits = inferer(torch.as_tensor(image)[None].to(dev), network)
                pred = logits.argmax(1)
            counts = torch.bincount(pred.flatten(), minlength=labels).cpu()
            rows[method] = {"organ_ml": [float(c) * voxel_ml for c in counts[1:]], "seconds": time.perf_counter() - start}
            report = (reports_of(logits) or [{}])[0]
            rows[method]["volume_statistics_weight"] = report.get("volume_statistics_weight")
            rows[method]["domain_distance"] = report.get("domain_distance")
        result["volumes"][Path(item["image"]).name] = rows
    _write(out, result)
    return result


def _device(device: str | None) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _out(out: str | None) -> Path:
    if not out:
        raise ValueError("pass --out <file.json>: where to write this command's results.")
    return Path(out)


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


def run_reference(data_dir: str | None = None, key: str = "ct_train", bundle_dir: str | None = None, out: str | None = None) -> dict:
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
        _write(Path(out), {"key": key, "volumes": [v["name"] for v in volumes], **reference})
    print(json.dumps(reference))
    return reference
