"""The bundle's own run (``grata-monai segment``) in one process and split over several, on one device.

Usage: python docs/benchmarks/segment_processes.py DATASET_DIR OUT.json [COPIES] [PROCESSES]

DATASET_DIR's volumes are copied COPIES times (default 3) into a scratch folder; PROCESSES (default
"1,2,1,2") are the runs' process counts, in order, so that the settings alternate. Each run is the
command a user types, timed from start to end (process start, model loading, every volume's
adaptation and writing). A one-volume run with one process gives the fixed cost; volumes per second
without it are (volumes - 1) / (seconds - fixed seconds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from grata_monai.bench.common import device_name, git_revision
from grata_monai.bundle.io import list_volumes


def timed_segment(folder: Path, out: Path, processes: int) -> tuple[float, list[str]]:
    """Seconds of ``grata-monai segment folder --output_dir out --processes N``, and the last lines
    it printed (progress and summaries); fails on an error."""
    command = [sys.executable, "-m", "grata_monai.cli", "segment", str(folder)]
    command += ["--output_dir", str(out), "--processes", str(processes)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return seconds, (done.stdout + done.stderr).splitlines()[-12:]


def main(dataset_dir: str, out: str, copies: int = 3, processes: str = "1,2,1,2") -> None:
    volumes = [Path(v["image"]) for v in list_volumes(dataset_dir)]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        many, one = Path(tmp, "many"), Path(tmp, "one")
        many.mkdir()
        one.mkdir()
        for c in range(copies):
            for v in volumes:
                shutil.copy(v, many / f"c{c}_{v.name}")
        shutil.copy(volumes[0], one / volumes[0].name)
        fixed = timed_segment(one, Path(tmp, "out_one"), 1)[0]
        count = len(volumes) * copies
        for i, p in enumerate(int(p) for p in processes.split(",")):
            seconds, lines = timed_segment(many, Path(tmp, f"out_{i}"), p)
            runs.append(
                {
                    "processes": p,
                    "volumes": count,
                    "seconds": seconds,
                    "volumes_per_s": count / seconds,
                    "volumes_per_s_without_start": (count - 1) / (seconds - fixed),
                    "last_lines": lines,
                }
            )
            print(json.dumps(runs[-1]), flush=True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "command": "grata-monai segment FOLDER --output_dir OUT --processes N",
        "dataset_dir": dataset_dir,
        "volumes": [v.name for v in volumes],
        "copies": copies,
        "one_volume_seconds": fixed,
        "runs": runs,
    }
    Path(out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0], args[1], int(args[2]) if len(args) > 2 else 3, *args[3:4])
