"""CPU cost of the bundle's post-processing per volume (grata_monai.postprocess), written to a JSON file.

Usage: python docs/benchmarks/postprocess_cost.py SEGMENTATION.nii.gz OUT.json
SEGMENTATION is a label map the bundle wrote (e.g. ``make run``'s ``bundle/eval/mr_01_image_seg.nii.gz``);
the script also times synthetic 4-organ maps with scattered false-positive specks: the issue's
150x150x50 and a clinical 512x512x300 CT grid. Each timing is the median of 5 runs, with MONAI's
per-organ ``KeepLargestConnectedComponent`` beside it.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import nibabel as nib
import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import KeepLargestConnectedComponent

from grata_monai.postprocess import OrganLayout, keep_organ_components


def synthetic(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, np.uint8)
    x, y, z = shape
    label[x // 10 : x // 2, y // 4 : 3 * y // 4, z // 4 : 3 * z // 4] = 1
    label[x // 5 : x // 3, 3 * y // 4 : 9 * y // 10, z // 5 : z // 2] = 2
    label[2 * x // 3 : 4 * x // 5, 3 * y // 4 : 9 * y // 10, z // 5 : z // 2] = 3
    label[4 * x // 5 : 19 * x // 20, y // 3 : 2 * y // 3, z // 3 : 2 * z // 3] = 4
    specks = rng.random(shape) > 0.999
    label[specks] = rng.integers(1, 5, specks.sum())
    return label


def median_seconds(fn, *args, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(segmentation: str, out: str) -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    parser = ConfigParser()
    parser.read_config("bundle/configs/inference.json")
    layout = OrganLayout.from_dict(parser.get("organ_layout"))
    image = nib.load(segmentation)
    cases = {
        f"{os.path.basename(segmentation)} {image.shape}": (
            np.asarray(image.dataobj, np.uint8),
            image.affine,
        )
    }
    for shape, spacing in (((150, 150, 50), (2.0, 2.0, 4.0)), ((512, 512, 300), (0.8, 0.8, 1.5))):
        cases[f"synthetic {shape}"] = (synthetic(shape), np.diag([*spacing, 1.0]))
    rows = {}
    for name, (label, affine) in cases.items():
        t = torch.as_tensor(label)[None]
        monai = KeepLargestConnectedComponent(
            [1, 2, 3, 4], is_onehot=False, independent=True, connectivity=3
        )
        rows[name] = {
            "layout_s": median_seconds(keep_organ_components, t, affine, layout),
            "largest_component_s": median_seconds(keep_organ_components, t, affine, None),
            "monai_keep_largest_s": median_seconds(monai, t.clone()),
        }
        print(name, {k: round(v, 3) for k, v in rows[name].items()}, flush=True)
    result = {
        "device": f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "cases": rows,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
