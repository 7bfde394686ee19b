"""Dev Dice of the bundle's inferer with its GPU settings and with CPU candidates, on the CPU.

Each variant is the bundle's own ``inferer`` (``inference.json``: the statistics rule
``norm_stats="entropy"``) with a few settings replaced; Dice (before post-processing) and seconds per
volume come from ``grata_monai.bench.benchmark.evaluate``.

    python docs/benchmarks/cpu_preset.py DATA_DIR BUNDLE_DIR OUT.json [DEVICE] [VARIANTS]

DEVICE is ``cpu`` (default) or ``cuda``; VARIANTS a comma-separated subset of ``VARIANTS`` (default all).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from grata_monai import defaults
from grata_monai.bench.benchmark import evaluate, summarize
from grata_monai.bench.common import device_name, git_revision, load_bundle, prepare

CPU = {
    "patches_per_step": 1,
    "patch_size": (64, 64, 32),
    "weak_transforms": ("flip1",),
    "guard": True,
}  # every CPU variant's adaptation (the CPU default's)
VARIANTS = {
    "cpu_4_windows": {**CPU, "settle_windows": 4, "statistics_candidates": (0.0, 0.5, 1.0)},
    "cpu_2_windows": {**CPU, "settle_windows": 2, "statistics_candidates": (0.0, 0.5, 1.0)},
    "cpu_4_windows_candidates_0_1": {
        **CPU,
        "settle_windows": 4,
        "statistics_candidates": (0.0, 1.0),
    },
    "cpu_4_windows_no_guard": {
        **CPU,
        "guard": False,
        "settle_windows": 4,
        "statistics_candidates": (0.0, 0.5, 1.0),
    },
    "cpu_2_windows_candidates_0_1": defaults.DEVICE_SETTINGS["cpu"],  # the bundle's CPU default
    "gpu": defaults.DEVICE_SETTINGS["cuda"],
}


def main(
    data_dir: str,
    bundle_dir: str,
    out: str,
    device: str = "cpu",
    variants: str = ",".join(VARIANTS),
) -> None:
    key = "mr_test"
    device = torch.device(device)
    unknown = set(variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}; choose from {sorted(VARIANTS)}.")
    network, preprocessing, _ = load_bundle(bundle_dir, device)
    volumes = prepare(data_dir, key, preprocessing)
    results = {
        "device": device_name(device),
        "git_revision": git_revision(),
        "key": key,
        "variants": {},
    }
    if Path(out).is_file():  # variants measured before (another call, the same device) are kept
        results["variants"] = json.loads(Path(out).read_text())["variants"]
    for name in variants.split(","):
        settings = VARIANTS[name]
        parser = ConfigParser()
        parser.read_config(str(Path(bundle_dir) / "configs" / "inference.json"))
        parser["bundle_root"] = bundle_dir
        for k, v in settings.items():
            parser[f"inferer#{k}"] = list(v) if isinstance(v, tuple) else v
        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
        rows = evaluate(parser.get_parsed_content("inferer"), network, volumes, device)
        results["variants"][name] = {
            "settings": settings,
            "summary": summarize(rows),
            "volumes": rows,
        }
        print(name, json.dumps(results["variants"][name]["summary"]), flush=True)
        Path(out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
