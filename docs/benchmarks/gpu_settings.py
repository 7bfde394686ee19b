"""GPU time against Dice for variants of the bundle inferer's GPU settings, on dev volumes.

Usage: python docs/benchmarks/gpu_settings.py CACHE_DIR OUT.json [SPLITS [LIMIT [VARIANTS]]]

CACHE_DIR is a ``grata-monai cache`` of the abdomen set (whole, uncropped volumes); SPLITS defaults
to ``mr_test,ct_val``; LIMIT keeps the first volumes of each (a smoke test, on a CPU too);
VARIANTS names some of :data:`VARIANTS` (default all).

Each variant is the bundle's ``inferer`` (``configs/inference.json``) with some settings replaced,
or with cuDNN's benchmark mode switched on. Per volume, every variant
segments it in turn (the order rotates from volume to volume, so drift of the machine spreads over
all), timed from the call to the logits with a wait for the GPU on both sides; the label map then
gets the bundle's post-processing (``KeepOrganComponentsd`` with the bundle's organ layout) and is
scored per organ with MONAI's ``compute_dice``. ``plain`` is MONAI's ``SlidingWindowInferer`` with
the source weights, for reference. Each variant segments the first volume once, untimed, before
the timed runs (CUDA graph capture, cuDNN's choices).

The rule that picks a faster setting was fixed before the run: a variant qualifies when its mean
Dice on ``mr_test`` (the CT model on MR, the direction the adaptation is for) is at most 0.1 points
below the bundle's; the qualifying settings variant (not a switch: those compute the same) with
the lowest median GPU time there is the choice. ``ct_val`` is not used to choose; it is reported.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

from grata_monai import defaults
from grata_monai.audit import reports_of
from grata_monai.bench.common import device_name, git_revision, load_bundle, names, prepare, sync
from grata_monai.bench.pipeline import Pipeline
from grata_monai.postprocess import OrganLayout, keep_organ_components

VARIANTS: dict[str, dict] = {  # settings replaced in the bundle's inferer (0.3.6)
    "bundle": {},
    "before": {  # the bundle 0.3.4's GPU settings
        "patches_per_step": 4,
        "channels_last": False,
        "weak_transforms": ["flip1", "flip2"],
    },
    "contiguous": {"channels_last": False},
    "patches_4": {"patches_per_step": 4},
    "cudnn_benchmark": {},  # a global switch: torch.backends.cudnn.benchmark
    "weak_2": {"weak_transforms": ["flip1", "flip2"]},
    "settle_4": {"settle_windows": 4},
    "settle_2": {"settle_windows": 2},
    "plain": {},  # MONAI's SlidingWindowInferer with the source weights
}
MARGIN = 0.1  # Dice points on mr_test a faster variant may lose


@contextlib.contextmanager
def _switch(name: str) -> Iterator[None]:
    """The variant's global switch (cuDNN's benchmark mode) around its runs."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = name == "cudnn_benchmark"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _pipelines(bundle: Path, dev: torch.device, tmp: str, variants: tuple) -> dict[str, tuple]:
    """Per variant: its inferer and the network it runs."""
    out = {}
    for name in variants:
        pipe = Pipeline(bundle, dev, tmp, device_preprocessing=True, settings=VARIANTS[name])
        out[name] = (pipe.inferers["plain" if name == "plain" else "grata"], pipe.network)
    return out


def _segment(inferer, network, image: torch.Tensor, dev: torch.device) -> tuple:
    """Logits' label map, milliseconds and the report of one volume."""
    sync(dev)
    start = time.perf_counter()
    with torch.no_grad():
        logits = inferer(image, network)
    sync(dev)
    ms = 1000 * (time.perf_counter() - start)
    report = (reports_of(logits) or [{}])[0]
    return logits.argmax(1).to(torch.uint8).cpu(), ms, report


def _dice(pred: torch.Tensor, label: torch.Tensor, classes: int) -> list[float]:
    """Dice per organ of a label map against the label (both (1, *spatial))."""
    p, t = one_hot(pred[None].long(), classes), one_hot(label[None].long(), classes)
    return compute_dice(p, t, include_background=False)[0].tolist()


def main(
    cache_dir: str,
    out: str,
    splits: str = "mr_test,ct_val",
    limit: str | None = None,
    variants: str = ",".join(VARIANTS),
) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bundle = Path("bundle")
    _, preprocessing, _ = load_bundle(bundle, dev)
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    layout = OrganLayout.from_dict(config["organ_layout"])
    classes = len(defaults.ORGANS) + 1
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        pipelines = _pipelines(bundle, dev, tmp, names(variants))
        for split in names(splits):
            volumes = prepare(Path(cache_dir), split, preprocessing, int(limit) if limit else None)
            if not rows:
                for name, (inferer, network) in pipelines.items():  # warm-up, untimed
                    with _switch(name):
                        _segment(inferer, network, volumes[0]["image"].to(dev), dev)
            for i, vol in enumerate(volumes):
                image = vol["image"].to(dev)
                affine = np.asarray(vol["image"].affine, dtype=np.float64)
                first = i % len(pipelines)
                for name in list(pipelines)[first:] + list(pipelines)[:first]:
                    inferer, network = pipelines[name]
                    with _switch(name):
                        pred, ms, report = _segment(inferer, network, image, dev)
                    kept, _ = keep_organ_components(pred, affine, layout)
                    rows.setdefault(name, []).append(
                        {
                            "split": split,
                            "volume": vol["name"],
                            "shape": list(image.shape[2:]),
                            "ms": ms,
                            "dice": _dice(kept, vol["label"][0], classes),
                            "weight": report.get("volume_statistics_weight"),
                            "guard": report.get("guard"),
                        }
                    )
                print(split, vol["name"], {n: round(rows[n][-1]["ms"], 1) for n in pipelines})
    result = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "command": "python docs/benchmarks/gpu_settings.py " + " ".join(sys.argv[1:]),
        "variants": {name: VARIANTS[name] for name in names(variants)},
        "summary": summarize(rows, names(splits)),
        "volumes": rows,
    }
    result["choice"] = choose(result["summary"], result["variants"])
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    Path(out).with_suffix(".md").write_text(markdown(result))
    print(json.dumps({"summary": result["summary"], "choice": result["choice"]}, indent=1))


def summarize(rows: dict[str, list[dict]], splits: tuple[str, ...]) -> dict:
    """Per variant and split: mean Dice x100 (per organ and of the organs), median ms, weights kept."""
    out = {}
    for name, entries in rows.items():
        out[name] = {}
        for split in splits:
            part = [e for e in entries if e["split"] == split]
            organs = np.nanmean([e["dice"] for e in part], 0) * 100
            out[name][split] = {
                "dice": round(float(organs.mean()), 2),
                "organs": [round(float(d), 2) for d in organs],
                "median_ms": round(statistics.median(e["ms"] for e in part), 1),
                "weights": [e["weight"] for e in part],
                "guard_fired": sum(e["guard"] is not None for e in part),
            }
    return out


def choose(summary: dict, variants: dict, split: str = "mr_test") -> str:
    """The fastest settings variant on ``split`` within ``MARGIN`` Dice points of the bundle's there
    (the switches compute the same and are judged by their time alone)."""
    floor = summary["bundle"][split]["dice"] - MARGIN
    ok = [
        n for n in summary if (n == "bundle" or variants[n]) and summary[n][split]["dice"] >= floor
    ]
    return min(ok, key=lambda n: summary[n][split]["median_ms"])


def markdown(result: dict) -> str:
    """The summary as a table (generated from the JSON, so the two cannot drift)."""
    splits = list(next(iter(result["summary"].values())))
    head = " | ".join(f"{s} Dice | {s} ms" for s in splits)
    lines = [
        f"# GPU settings: time and Dice ({result['device']})",
        "",
        f"Revision `{result['git_revision']}`. `{result['command']}`. Dice x100 after the bundle's "
        "post-processing, mean of the four organs; ms: median per volume, adaptation and inference.",
        "",
        f"| variant | settings | {head} |",
        "|---|---|" + "---|---|" * len(splits),
    ]
    for name, per in result["summary"].items():
        cells = " | ".join(f"{per[s]['dice']:.2f} | {per[s]['median_ms']:.1f}" for s in splits)
        lines.append(f"| {name} | `{json.dumps(result['variants'][name])}` | {cells} |")
    lines += ["", f"Chosen by the rule fixed before the run: **{result['choice']}**.", ""]
    if result.get("note"):
        lines += [result["note"], ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(*sys.argv[1:])
