"""The bundle's inferer with and without CUDA graphs on the same volumes: do they segment alike?

Usage: python docs/benchmarks/graphs_agreement.py DATASET_DIR OUT.json

Per volume (preprocessed as ``inference.json`` does, on the GPU), the voxel agreement of the two
label maps, and each run's GraTa cosine, kept statistics weight, guard verdict and adaptation
seconds (the first volume of each run includes capturing the graphs).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from monai.data import list_data_collate

from grata_monai.audit import reports_of
from grata_monai.bench.common import device_name, git_revision
from grata_monai.bench.pipeline import Pipeline, bundle_volumes


def main(dataset_dir: str, out: str) -> None:
    dev = torch.device("cuda")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        pipes = {
            g: Pipeline(Path("bundle"), dev, tmp, True, {"cuda_graphs": g}) for g in (False, True)
        }
        for item in bundle_volumes(Path("bundle"), Path(dataset_dir)):
            data = pipes[False].preprocess(pipes[False].load(dict(item)))
            batch = list_data_collate([data])["image"].to(dev)
            runs = {}
            for graphs, pipe in pipes.items():
                with torch.no_grad():
                    pred = pipe.inferers["grata"](batch, pipe.network)
                runs[graphs] = (pred.argmax(1), reports_of(pred)[0])
            (eager, e), (graphed, g) = runs[False], runs[True]
            rows.append(
                {
                    "volume": Path(item["image"]).name,
                    "label_agreement": float((eager == graphed).float().mean()),
                    "cosine": [e["steps"][0]["cosine"], g["steps"][0]["cosine"]],
                    "weight": [e["volume_statistics_weight"], g["volume_statistics_weight"]],
                    "guard": [e["guard"], g["guard"]],
                    "adapt_s": [e["adapt_seconds"], g["adapt_seconds"]],
                }
            )
            print(json.dumps(rows[-1]))
    result = {"device": device_name(dev), "git_revision": git_revision(), "volumes": rows}
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
