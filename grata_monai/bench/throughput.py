"""Throughput: the bundle's own pipeline, plain and with GraTa, on the same volumes.

The pipeline is :class:`~grata_monai.bench.pipeline.Pipeline`: ``inference.json``'s transforms and
inferer, timed per stage, the outputs going to a temporary folder. Passes alternate plain and GraTa.
``instances`` processes each run the pipeline on their share of the volumes, on the same device, and
start each pass together (as a server runs several workers per GPU); their volumes are summed over
the pass's wall time. Results: ``<name>.json`` and ``<name>.md`` in ``out_dir``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import tempfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from threading import BrokenBarrierError
from typing import Any

import torch
from tqdm import tqdm

from grata_monai.bench import paths
from grata_monai.bench.common import device_name, git_revision
from grata_monai.bench.pipeline import STAGES, WRITE_IN, Pipeline, bundle_volumes, start_writers
from grata_monai.defaults import loader_workers

__all__ = ["run_throughput", "write_markdown"]

GRATA_KEYS = (
    "steps",
    "patches_per_step",
    "patch_size",
    "weak_transforms",
    "guard",
    "settle_windows",
    "norm_stats",
    "statistics_candidates",
    "amp",
    "cuda_graphs",
    "channels_last",
    "pair_patches",
)


@dataclass(frozen=True)
class _Plan:
    """What every instance runs (sent to spawned instances)."""

    bundle_dir: Path
    device: torch.device
    items: list[dict]
    device_preprocessing: bool
    settings: dict | None
    repeats: int
    cycles: int
    num_workers: int
    writers: int
    write_in: str
    streams: int


def _measure(
    plan: _Plan, rank: int, instances: int, progress: Callable[[], Any], sync: Callable[[], Any]
) -> dict:
    """One instance: its share of the volumes (every ``instances``-th), ``cycles`` times per pass;
    a warm-up, then the timed passes, each started by ``sync``. Returns the passes, the first
    volume's reports and the plain inferer's settings."""
    items = plan.items[rank::instances]
    with tempfile.TemporaryDirectory() as tmp:
        pipe = Pipeline(plan.bundle_dir, plan.device, tmp, plan.device_preprocessing, plan.settings)
        output = start_writers(pipe, plan.writers, plan.write_in)
        try:
            reports = {}
            for method in pipe.inferers:  # warm-up: allocator, cudnn autotuning, first-call imports
                data, times = pipe.loader(items[:1], 0).dataset[0]
                reports[method] = pipe.segment(method, data, times)
                # every inferring thread's working copy (and CUDA graphs) and every writer made now
                if plan.streams > 1 or output is not None:
                    warm = [items[i % len(items)] for i in range(max(plan.streams, plan.writers))]
                    pipe.run_pass(method, pipe.loader(warm, 0), None, output, plan.streams)
            loader = pipe.loader(items * plan.cycles, plan.num_workers)
            # its workers started now, not in the first timed pass; the next pass starts over
            next(iter(loader))
            passes: dict[str, list[dict]] = {m: [] for m in pipe.inferers}
            for _ in range(plan.repeats):
                for method, done in passes.items():
                    sync()
                    done.append(pipe.run_pass(method, loader, progress, output, plan.streams))
        finally:
            if output is not None:
                output.shutdown(cancel_futures=True)
    return {"passes": passes, "reports": reports, "sliding": pipe.sliding}


_SHARED: dict[str, Any] = {}  # an instance's barrier and progress queue (set by _start_instance)


def _start_instance(barrier: Any, progress: Any) -> None:
    _SHARED.update(barrier=barrier, progress=progress)


def _instance(plan: _Plan, rank: int, instances: int) -> dict:
    """:func:`_measure` in a spawned instance, its passes started with the others'."""
    return _measure(
        plan, rank, instances, lambda: _SHARED["progress"].put(1), _SHARED["barrier"].wait
    )


def _run_instances(plan: _Plan, instances: int, bar: tqdm) -> list[dict]:
    """``instances`` spawned processes running :func:`_measure`; their results, by rank."""
    spawn = multiprocessing.get_context("spawn")
    with spawn.Manager() as manager:
        barrier, progress = manager.Barrier(instances), manager.Queue()
        with ProcessPoolExecutor(instances, spawn, _start_instance, (barrier, progress)) as pool:
            running = [pool.submit(_instance, plan, r, instances) for r in range(instances)]
            while not all(f.done() for f in running):
                try:
                    progress.get(timeout=0.2)
                    bar.update()
                except queue.Empty:
                    if any(f.done() and f.exception() for f in running):
                        barrier.abort()  # the others would wait at the next pass forever
            wait(running)
            bar.update(progress.qsize())
    errors = [f.exception() for f in running if f.exception() is not None]
    if errors:  # the instance's own error, not the broken barrier it left the others
        raise next((e for e in errors if not isinstance(e, BrokenBarrierError)), errors[0])
    return [f.result() for f in running]


def _together(passes: list[dict]) -> dict:
    """The instances' same pass as one: volumes over the wall time from the first start to the last
    end; stage seconds averaged over all volumes; peak memory summed (the instances run at once)."""
    volumes = sum(p["volumes"] for p in passes)
    seconds = max(p["end"] for p in passes) - min(p["start"] for p in passes)
    return {
        "seconds": seconds,
        "volumes": volumes,
        "volumes_per_s": volumes / seconds,
        "stages_s": {
            s: sum(p["stages_s"][s] * p["volumes"] for p in passes) / volumes for s in STAGES
        },
        "peak_memory_mib": sum(p["peak_memory_mib"] for p in passes),
    }


def run_throughput(
    dataset_dir: str | None = None,
    bundle_dir: str | None = None,
    out_dir: str = "docs/benchmarks",
    name: str = "throughput",
    repeats: int = 3,
    device: str | None = None,
    num_workers: int | None = None,
    device_preprocessing: bool = False,
    writers: int = 0,
    write_in: str = "threads",
    streams: int = 1,
    instances: int = 1,
    cycles: int = 1,
    settings: dict | None = None,
    limit: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Plain and GraTa through the bundle's pipeline on the same volumes; write ``<name>.json/.md``.

    Each instance first segments its first volume once per method (warm-up, not counted); then the
    passes alternate plain, GraTa, ``repeats`` times. Stage times are means per volume; loading (and
    CPU preprocessing) overlap compute in the workers, so ``wait`` is what the loop waited for them.

    Args:
        dataset_dir: a folder of volumes (NIfTI files, DICOM series); default ``$GRATA_DATA_DIR/abdomen/mr``.
        bundle_dir: the bundle (``configs/inference.json``, ``models/model.pt``); default ``$GRATA_BUNDLE_DIR``.
        out_dir: where ``<name>.json`` and ``<name>.md`` go.
        name: the results' file name, without extension.
        repeats: passes per method.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available.
        num_workers: loader processes per instance; default :func:`loader_workers` (0 loads in the
            inferring process).
        device_preprocessing: preprocess after ``LoadImaged`` on ``device`` in the inferring thread.
        writers: per instance, threads that post-process and write the outputs while the inferring
            threads infer the next volumes; 0 does both in the inferring thread, after each volume.
        write_in: ``"threads"``, or ``"processes"``: the writers are processes that get each volume's
            label map (post-processed up to the last ``AsDiscreted`` in the inferring thread).
        streams: per instance, threads that infer volumes at once, each in its own CUDA stream.
        instances: processes that run the pipeline at once on the same device, each on its share of
            the volumes (1: this process).
        cycles: times each pass goes over the volumes (longer passes: the loader's start and the last
            writes weigh less).
        settings: the bundle inferer's settings to replace, e.g. ``{"settle_windows": 4}``.
        limit: only the first ``limit`` volumes.
        overwrite: replace existing result files.

    Raises:
        ValueError: a bad option; FileExistsError: results exist and ``overwrite`` is off.
    """
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {device}: CUDA is not available on this machine; use --device cpu."
        )
    if (
        repeats < 1
        or (limit is not None and limit < 1)
        or (num_workers is not None and num_workers < 0)
        or writers < 0
        or streams < 1
        or instances < 1
        or cycles < 1
    ):
        raise ValueError(
            "need --repeats, --limit, --streams, --instances and --cycles >= 1, "
            "--num_workers and --writers >= 0."
        )
    if write_in not in WRITE_IN or (write_in == "processes" and not writers):
        raise ValueError(
            f"--write_in {write_in!r}: need 'threads' or 'processes' (with --writers >= 1)."
        )
    if settings is not None and not isinstance(settings, dict):
        raise ValueError(f"--settings must be a dict of inferer settings, got {settings!r}.")
    outputs = [Path(out_dir) / f"{name}.{ext}" for ext in ("json", "md")]
    existing = [str(p) for p in outputs if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{', '.join(existing)} exist: pass --overwrite true or another --name."
        )
    workers = loader_workers() if num_workers is None else num_workers
    dataset = paths.data_dir(dataset_dir, "abdomen/mr")
    bundle = paths.bundle_dir(bundle_dir)
    items = bundle_volumes(bundle, dataset)[:limit]
    if len(items) < instances:
        raise ValueError(f"{len(items)} volumes in {dataset}: need at least one per instance.")
    plan = _Plan(
        bundle, dev, items, bool(device_preprocessing), settings, repeats, cycles, workers,
        writers, write_in, streams,
    )  # fmt: skip
    load_before = os.getloadavg()
    with tqdm(total=repeats * 2 * len(items) * cycles, unit="vol", desc="throughput") as bar:
        if instances == 1:
            runs = [_measure(plan, 0, 1, bar.update, lambda: None)]
        else:
            runs = _run_instances(plan, instances, bar)
    passes = {
        m: [_together(list(same)) for same in zip(*(r["passes"][m] for r in runs))]
        for m in runs[0]["passes"]
    }
    results = {
        "device": device_name(dev),
        "git_revision": git_revision(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": {"before": list(load_before), "after": list(os.getloadavg())},
        "settings": {
            "dataset_dir": str(dataset),
            "volumes": [Path(i["image"]).name for i in items],
            "repeats": repeats,
            "num_workers": workers,
            "device_preprocessing": bool(device_preprocessing),
            "writers": writers,
            "write_in": write_in,
            "streams": streams,
            "instances": instances,
            "cycles": cycles,
            "overrides": settings or {},
            "plain": {"method": "SlidingWindowInferer", **runs[0]["sliding"]},
            "grata": runs[0]["reports"]["grata"].get("settings", {}),
        },
        "methods": {m: {**_mean_pass(p), "passes": p} for m, p in passes.items()},
    }
    plain, grata = (results["methods"][m]["volumes_per_s"] for m in ("plain", "grata"))
    results["grata_over_plain"] = plain / grata  # time per volume, GraTa over plain
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    outputs[0].write_text(json.dumps(results, indent=1) + "\n")
    outputs[1].write_text(write_markdown(results))
    print(outputs[1].read_text())
    return results


def _mean_pass(passes: list[dict]) -> dict:
    """Means over passes: volumes/s (volumes over total seconds), stage seconds, and the peak memory."""
    n = len(passes)
    return {
        "volumes_per_s": n / sum(1 / p["volumes_per_s"] for p in passes),
        "stages_s": {s: sum(p["stages_s"][s] for p in passes) / n for s in STAGES},
        "peak_memory_mib": max(p["peak_memory_mib"] for p in passes),
    }


def _count(n: int, noun: str, plural: str = "") -> str:
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _writing(writers: int, write_in: str) -> str:
    if not writers:
        return "post-processing and writing in the inferring thread"
    if write_in == "processes":
        return (
            "post-processing up to the label map in the inferring thread, the rest and the writing "
            f"in {_count(writers, 'process', 'processes')}"
        )
    return f"post-processing and writing in {_count(writers, 'thread')}"


def _inferring(streams: int, instances: int, cycles: int) -> str:
    text = (
        "one volume inferred at a time"
        if streams == 1
        else f"{streams} volumes inferred at once, each in its own thread and CUDA stream"
    )
    if instances > 1:
        text += (
            f", in each of {instances} processes on the same device, each on its share of the "
            "volumes (loader workers and writers are per process; peak memory is their sum)"
        )
    if cycles > 1:
        text += f"; each pass goes {cycles} times over the volumes"
    return text


def write_markdown(results: dict) -> str:
    """The results as a short markdown page: the setting, one table row per method, the ratio."""
    memory = "peak RSS" if results["device"].startswith("CPU") else "peak GPU memory"
    s = results["settings"]
    writing = _writing(s.get("writers", 0), s.get("write_in", "threads"))
    inferring = _inferring(s.get("streams", 1), s.get("instances", 1), s.get("cycles", 1))
    lines = [
        f"# Throughput: {results['device']}",
        "",
        (
            f"Revision `{results['git_revision']}`; {_count(len(s['volumes']), 'volume')} from "
            f"`{s['dataset_dir']}`, "
            f"{s['repeats']} passes per method; {s['num_workers']} loader workers, preprocessing on "
            f"{'the device' if s['device_preprocessing'] else 'the CPU workers'}; "
            f"{writing}; {inferring}; "
            f"{results['cpu_count']} cores, "
            f"{results['torch_threads']} torch threads, load average {results['load_average']['before'][0]:.1f} "
            f"before and {results['load_average']['after'][0]:.1f} after. Seconds are means per volume; "
            "load and CPU preprocessing overlap compute, `wait` is the loop's stall for them; "
            f"post-processing and writing in {s.get('write_in', 'threads')} overlap it too."
        ),
        "",
        (
            f"Plain: `SlidingWindowInferer` {json.dumps(s['plain'])}. GraTa: the bundle's `inferer` "
            f"{json.dumps({k: s['grata'][k] for k in GRATA_KEYS if k in s['grata']})}."
        ),
        "",
        f"| method | volumes/s | {' | '.join(STAGES)} | {memory} (MiB) |",
        "|---|---|" + "---|" * len(STAGES) + "---|",
    ]
    for method, m in results["methods"].items():
        stages = " | ".join(f"{m['stages_s'][st]:.3f}" for st in STAGES)
        lines.append(
            f"| {method} | {m['volumes_per_s']:.3f} | {stages} | {m['peak_memory_mib']:.0f} |"
        )
    lines += [
        "",
        f"GraTa/plain time per volume: **{results['grata_over_plain']:.2f}x** (same run).",
        "",
    ]
    if results.get("note"):  # what the run's files cannot say (e.g. the machine's history)
        lines += [results["note"], ""]
    return "\n".join(lines)
