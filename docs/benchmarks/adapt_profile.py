"""Where one volume's GPU time goes in the bundle's inferer: its phases, timed, and their kernel launches.

Usage: python docs/benchmarks/adapt_profile.py DATASET_DIR OUT.json [LIMIT] [SETTINGS]

SETTINGS: the bundle inferer's settings to replace, as JSON, e.g. '{"cuda_graphs": false}'.

Per volume (preprocessed as ``inference.json`` does, on the GPU): *copy* (the working copy of the
network), *adapt* (the guard's two checks and the GraTa step), *statistics* (the volume's statistics
and the statistics rule's candidate predictions in batched passes), *statistics_looped* (the same,
one pass per window and per candidate, as TorchScript networks run it) and, for comparison, MONAI's
plain ``SlidingWindowInferer``, and the bundle's ``KeepOrganComponentsd`` on its labels (on the
preprocessed grid; the labelling runs on the CPU). The two statistics passes' entropies, kept
weights and voxel label agreement go into ``statistics_rule``. Seconds are medians over the volumes
after one warm-up volume; the adaptation's parts come from a second run with a wait for the GPU
around each part (``adapt_parts_median_ms``). Kernel launches are counted by ``torch.profiler`` on
the first volume; each phase's top operators (self CPU time) go into ``OUT.txt``. The host's waits
for the GPU (``torch.cuda``'s sync debug mode) are listed per phase and source line, first volume
(``host_waits_first_volume``).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from monai.data import MetaTensor, list_data_collate
from monai.utils import convert_to_tensor
from torch.profiler import ProfilerActivity, profile

from grata_monai import adaptive
from grata_monai.audit import VolumeReport
from grata_monai.bench.common import device_name, git_revision
from grata_monai.bench.pipeline import Pipeline, bundle_volumes
from grata_monai.postprocess import KeepOrganComponentsd

PHASES = ("copy", "adapt", "statistics", "statistics_looped", "plain")


@contextlib.contextmanager
def _timed(parts: dict, dev: torch.device):
    """The adaptation's parts timed into ``parts`` (seconds summed): patch draws, guard checks, steps."""

    def timer(name, fn):
        def timed(*args, **kwargs):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            parts[name] = parts.get(name, 0.0) + time.perf_counter() - start
            return out

        return timed

    patches, signals = adaptive.body_patches, adaptive.signals
    adaptive.body_patches = lambda *a, **k: timer("draw", timer("index", patches)(*a, **k))
    adaptive.signals = timer("guard", signals)
    try:
        yield timer
    finally:
        adaptive.body_patches, adaptive.signals = patches, signals


@contextlib.contextmanager
def _host_waits(waits: dict, name: str):
    """The host's waits for the GPU inside the block, counted by source line into ``waits[name]``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
    lines = (
        f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)
    )
    waits[name] = dict(Counter(lines))


@contextlib.contextmanager
def _looped():
    """The statistics rule as TorchScript networks run it: one pass per window and per candidate."""
    stack = adaptive.can_stack
    adaptive.can_stack = lambda network: False
    try:
        yield
    finally:
        adaptive.can_stack = stack


def phases(
    pipe: Pipeline,
    batch: torch.Tensor,
    counted: str | None = None,
    parts: bool = False,
    waits: bool = False,
) -> dict:
    """The inferer's phases on one volume, as ``AdaptiveInferer.infer_volume`` runs them; with
    ``counted``, that phase's kernel launches too (``"kernels"``); with ``parts``, the adaptation's
    parts, each timed between two waits for the GPU (which then slow the adaptation down); with
    ``waits``, each phase's waits for the GPU by source line (``"waits"``)."""
    inferer, dev, network = pipe.inferers["grata"], pipe.device, pipe.network
    volume = convert_to_tensor(batch[0], track_meta=False)
    report = VolumeReport(inferer.method, {})
    amp = inferer.amp and dev.type == "cuda"
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)
    times, clock = {}, time.perf_counter()
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    host_waits: dict = {}

    def phase(name: str):
        if waits:
            return _host_waits(host_waits, name)
        return prof if name == counted else contextlib.nullcontext()

    def lap(name: str) -> None:
        nonlocal clock
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        now = time.perf_counter()
        times[name], clock = now - clock, now

    with torch.no_grad():
        with phase("copy"):
            episode = inferer.episode_for(network, dev)
        lap("copy")
        split: dict = {}
        timing = _timed(split, dev) if parts else contextlib.nullcontext()
        with phase("adapt"), torch.enable_grad(), autocast, timing as timer:
            if parts:
                inferer.adapt_step = timer("step", inferer.adapt_step)
            try:
                episode = inferer.adapt(episode, volume, dev, report)
            finally:
                inferer.__dict__.pop("adapt_step", None)
        lap("adapt")
        times.update({f"adapt_{k}": v for k, v in split.items()})
        looped = VolumeReport(inferer.method, {})
        with phase("statistics"), autocast:
            batched = inferer.least_uncertain(episode, batch, volume, dev, report)
        lap("statistics")
        with phase("statistics_looped"), autocast, _looped():
            loop = inferer.least_uncertain(episode, batch, volume, dev, looped)
        lap("statistics_looped")
        times["rule"] = {
            "batched": report.statistics_entropy,
            "looped": looped.statistics_entropy,
            "weights": [report.volume_statistics_weight, looped.volume_statistics_weight],
            "label_agreement": float((batched.argmax(1) == loop.argmax(1)).float().mean()),
        }
        with phase("plain"), autocast:
            plain = pipe.inferers["plain"](batch, network)
        lap("plain")
        keep = next(t for t in pipe.postprocess.transforms if isinstance(t, KeepOrganComponentsd))
        label = MetaTensor(plain.argmax(1).to(torch.uint8), affine=batch.affine[0])
        lap("argmax")
        keep({"pred": label})
        lap("keep_organ_components")
    inferer.release(episode)  # as the inferer does: the next volume reuses this working copy
    if waits:
        times["waits"] = host_waits
    if counted is not None:
        times["kernels"] = sum(1 for e in prof.events() if e.device_type.name == "CUDA")
        times["table"] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20)
    return times


def main(dataset_dir: str, out: str, limit: int = 8, settings: dict | None = None) -> None:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(Path("bundle"), dev, tmp, device_preprocessing=True, settings=settings)
        items = bundle_volumes(Path("bundle"), Path(dataset_dir))[:limit]
        batches = []
        for item in items:
            data = pipe.preprocess(pipe.load(dict(item)))
            batches.append(list_data_collate([data])["image"].to(dev))
        phases(pipe, batches[0])  # warm-up
        counted = {p: phases(pipe, batches[0], p) for p in PHASES}
        waits = phases(pipe, batches[0], waits=True)["waits"] if dev.type == "cuda" else {}
        rows = [phases(pipe, b) for b in batches]
        split = [phases(pipe, b, parts=True) for b in batches]
    result = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "volumes": [Path(i["image"]).name for i in items],
        "shapes": [list(b.shape[2:]) for b in batches],
        "median_ms": {
            k: 1000 * statistics.median(r[k] for r in rows) for k in rows[0] if k != "rule"
        },
        "adapt_parts_median_ms": {
            k: 1000 * statistics.median(r[k] for r in split) for k in split[0] if k != "rule"
        },
        "statistics_rule": [r["rule"] for r in rows],
        "kernels_first_volume": {p: c["kernels"] for p, c in counted.items()},
        "host_waits_first_volume": waits,
        "settings": pipe.inferers["grata"].settings(),
    }
    Path(out).write_text(json.dumps(result, indent=1, default=str) + "\n")
    tables = "\n".join(f"## {p}\n{c['table']}" for p, c in counted.items())
    Path(out).with_suffix(".txt").write_text(tables)
    keys = ("median_ms", "adapt_parts_median_ms", "kernels_first_volume", "host_waits_first_volume")
    print(json.dumps({k: result[k] for k in keys}, indent=1))


if __name__ == "__main__":
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 8
    main(sys.argv[1], sys.argv[2], limit, json.loads(sys.argv[4]) if len(sys.argv) > 4 else None)
