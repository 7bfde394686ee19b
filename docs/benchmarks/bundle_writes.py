"""The bundle's own run (``inference.json``'s evaluator) writing inline against in background threads.

Usage: python docs/benchmarks/bundle_writes.py DATASET_DIR OUT.json [REPEATS] [THREADS]

One process, one evaluator per setting (``write_threads`` 0 and THREADS, default 2), each run once
untimed (CUDA graphs, cudnn, first imports), then the timed runs alternate the settings REPEATS
times (default 3). Each run segments every volume of DATASET_DIR, adapting, and writes the
segmentations and reports to a temporary folder; its seconds run from the evaluator's start to the
last file written. The loader is the bundle's own.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from grata_monai.bench.common import device_name, git_revision


def evaluator(dataset_dir: str, output_dir: str, threads: int):
    """The bundle's evaluator for ``dataset_dir``, writing to ``output_dir`` with ``threads``."""
    parser = ConfigParser()
    parser.read_config("bundle/configs/inference.json")
    parser.update(
        {
            "bundle_root": "bundle",
            "dataset_dir": dataset_dir,
            "output_dir": output_dir,
            "write_threads": threads,
            "overwrite": True,
        }
    )
    parser.get_parsed_content("initialize")
    return parser.get_parsed_content("evaluator")


def main(dataset_dir: str, out: str, repeats: int = 3, threads: int = 2) -> None:
    settings = (0, threads)
    seconds: dict[int, list[float]] = {t: [] for t in settings}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {t: evaluator(dataset_dir, os.path.join(tmp, str(t)), t) for t in settings}
        for run in runs.values():
            run.run()  # warm-up
        volumes = len(runs[0].data_loader.dataset)
        for _ in range(repeats):
            for t, run in runs.items():
                start = time.perf_counter()
                run.run()  # returns once its last write is done (BackgroundWrites at COMPLETED)
                seconds[t].append(time.perf_counter() - start)
                print(t, seconds[t][-1], flush=True)
    per_s = {str(t): volumes * len(s) / sum(s) for t, s in seconds.items()}
    result = {
        "device": device_name(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        "git_revision": git_revision(),
        "cpu_count": os.cpu_count(),
        "dataset_dir": dataset_dir,
        "volumes": volumes,
        "seconds": {str(t): s for t, s in seconds.items()},
        "volumes_per_s": per_s,
        "background_over_inline": per_s[str(threads)] / per_s["0"],
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *(int(a) for a in sys.argv[3:5]))
