"""Throughput: the bundle's own pipeline, plain and with GraTa, on the same volumes in one process.

Per volume, as ``inference.json`` runs it: its ``preprocessing`` (split after ``LoadImaged`` into
*load* and *preprocess*), the inferer, and its ``postprocessing`` (split before ``SaveImaged`` into
*post-process* and *write*, the outputs going to a temporary folder). Plain is MONAI's
``SlidingWindowInferer`` with the bundle inferer's sliding-window settings and the source statistics;
GraTa is the bundle's ``inferer`` as its config builds it. Loading runs in persistent ``DataLoader``
workers, overlapped with compute; with ``device_preprocessing`` the rest of the preprocessing runs on
the target device in the inferring thread. ``streams`` threads infer volumes at once, each in its own
CUDA stream; with ``writers`` the post-processing and writing of each volume run in that many other
threads, so the inferring threads go on to the next volume. With ``write_in="processes"`` the
post-processing up to the label map (the last ``AsDiscreted``: activation, inversion, argmax) runs in
the inferring thread, on the device, and the rest (the connected components, the writing) runs in
``writers`` processes, out of this process's GIL. Results: ``<name>.json`` and ``<name>.md`` in
``out_dir``.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import list_data_collate
from monai.engines.utils import engine_apply_transform
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import (
    AsDiscreted,
    Compose,
    Decollated,
    EnsureTyped,
    LoadImaged,
    SaveImaged,
)
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from grata_monai.audit import reports_of
from grata_monai.bench import paths
from grata_monai.bench.common import device_name, git_revision
from grata_monai.defaults import loader_workers

__all__ = [
    "STAGES",
    "WRITE_IN",
    "run_throughput",
    "split_at_labels",
    "split_pipeline",
    "write_markdown",
]

WRITE_IN = ("threads", "processes")
STAGES = ("load", "preprocess", "wait", "adapt", "infer", "postprocess", "write")
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
)
SLIDING_KEYS = (
    "roi_size",
    "sw_batch_size",
    "overlap",
    "mode",
    "sigma_scale",
    "padding_mode",
    "cval",
)


def split_pipeline(
    preprocessing: Compose, postprocessing: Compose, device: torch.device | None = None
) -> tuple[Compose, Compose, Compose, Compose]:
    """The bundle's transforms as four stages: load (up to ``LoadImaged``), preprocess, post-process
    and write (from ``SaveImaged``). The same transform objects run, so ``Invertd`` still inverts them.

    Args:
        preprocessing, postprocessing: the bundle's ``Compose`` objects.
        device: when given, the preprocess stage starts by moving the image there (``EnsureTyped``).

    Raises:
        ValueError: no ``LoadImaged`` in ``preprocessing`` or no ``SaveImaged`` in ``postprocessing``.
    """
    pre, post = list(preprocessing.transforms), list(postprocessing.transforms)
    load_end = next((i + 1 for i, t in enumerate(pre) if isinstance(t, LoadImaged)), None)
    write_start = next((i for i, t in enumerate(post) if isinstance(t, SaveImaged)), None)
    if load_end is None or write_start is None:
        raise ValueError(
            "the bundle's preprocessing needs a LoadImaged and its postprocessing a SaveImaged."
        )
    rest = pre[load_end:]
    if device is not None:
        rest = [EnsureTyped(keys=pre[load_end - 1].keys, device=device, track_meta=True), *rest]
    return (
        Compose(pre[:load_end]),
        Compose(rest),
        Compose(post[:write_start]),
        Compose(post[write_start:]),
    )


def split_at_labels(postprocess: Compose) -> tuple[Compose, Compose]:
    """``postprocess`` as the part up to its label map (through the last ``AsDiscreted``), which runs
    wherever the prediction is, and the rest. Without ``AsDiscreted`` the first part is empty."""
    transforms = list(postprocess.transforms)
    end = max((i + 1 for i, t in enumerate(transforms) if isinstance(t, AsDiscreted)), default=0)
    return Compose(transforms[:end]), Compose(transforms[end:])


_HOST: dict[str, Compose] = {}  # a writer process's transforms (set by _start_host)


def _start_host(postprocess: Compose, write: Compose) -> None:
    torch.set_num_threads(
        1
    )  # the writers share the cores with the loader and the inferring process
    _HOST.update(postprocess=postprocess, write=write)


def _finish_on_host(outputs: list[dict]) -> dict[str, float]:
    """In a writer process: the host part of the post-processing and the writing of one volume's
    outputs; returns both stages' seconds."""
    clock = time.perf_counter()
    outputs = [_HOST["postprocess"](o) for o in outputs]
    done = time.perf_counter()
    for o in outputs:
        _HOST["write"](o)
    return {"postprocess": done - clock, "write": time.perf_counter() - done}


class _Loading(Dataset):
    """Items through ``load`` (then ``preprocess`` when given), with the seconds each took."""

    def __init__(self, items: list[dict], load: Callable, preprocess: Callable | None) -> None:
        self.items, self.load, self.preprocess = items, load, preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[dict, dict]:
        start = time.perf_counter()
        data = self.load(dict(self.items[index]))
        loaded = time.perf_counter()
        if self.preprocess is not None:
            data = self.preprocess(data)
        return data, {"load": loaded - start, "preprocess": time.perf_counter() - loaded}


def _as_is(sample: Any) -> Any:
    return sample


def _sync(device: torch.device) -> None:
    """Wait for this thread's CUDA stream (the work of other threads' streams runs on)."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def _own_stream(device: torch.device) -> contextlib.AbstractContextManager:
    """A new CUDA stream for this thread's work on ``device`` (nothing on a CPU)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: "5" resets the process's peak RSS (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_mib(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA, else the main process's peak RSS (since the last reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        line = next(
            s for s in Path("/proc/self/status").read_text().splitlines() if s.startswith("VmHWM:")
        )
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        )  # never reset: the process's peak


class _Pipeline:
    """One bundle's pipeline on one device: the four stages and the two inferers."""

    def __init__(
        self,
        bundle_dir: Path,
        device: torch.device,
        output_dir: str,
        device_preprocessing: bool,
        settings: dict | None = None,
    ) -> None:
        parser = ConfigParser()
        parser.read_config(str(bundle_dir / "configs" / "inference.json"))
        parser["bundle_root"] = str(bundle_dir)
        parser["output_dir"] = output_dir
        parser["device"] = f"$torch.device('{device}')"
        for key, value in (settings or {}).items():
            if key not in parser["inferer"]:
                raise ValueError(f"--settings: the bundle's inferer has no setting {key!r}.")
            parser[f"inferer#{key}"] = list(value) if isinstance(value, tuple) else value
        self.parser, self.device = parser, device
        self.load, self.preprocess, self.postprocess, self.write = split_pipeline(
            parser.get_parsed_content("preprocessing"),
            parser.get_parsed_content("postprocessing"),
            device if device_preprocessing else None,
        )
        self.to_labels, self.on_host = split_at_labels(self.postprocess)
        self.device_preprocessing = device_preprocessing
        self.network = parser.get_parsed_content("network")
        state = torch.load(
            parser.get_parsed_content("ckpt_path"), map_location=device, weights_only=True
        )
        self.network.load_state_dict(state.get("model", state))
        self.network.eval()
        sliding = {
            k: parser.get_parsed_content(f"inferer#{k}")
            for k in SLIDING_KEYS
            if k in parser["inferer"]
        }
        self.inferers: dict[str, Inferer] = {
            "plain": SlidingWindowInferer(**sliding),
            "grata": parser.get_parsed_content("inferer"),
        }
        self.sliding = sliding

    def volumes(self, dataset_dir: Path) -> list[dict]:
        """The inputs of ``dataset_dir`` as the bundle finds them (its ``exclude`` applies)."""
        self.parser["dataset_dir"] = str(dataset_dir)
        return self.parser.get_parsed_content("volumes")

    def loader(self, items: list[dict], num_workers: int) -> DataLoader:
        """Loaded (and, unless on the device, preprocessed) items, in order, from persistent workers."""
        dataset = _Loading(items, self.load, None if self.device_preprocessing else self.preprocess)
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            persistent_workers=num_workers > 0,
        )

    def infer(self, method: str, data: dict, times: dict) -> tuple[dict, torch.Tensor, dict]:
        """Preprocess on the device (when asked) and infer one volume; ``times`` gets the stages' seconds.
        Returns the batch, the logits and the inferer's report."""
        dev = self.device
        clock = time.perf_counter()
        if self.device_preprocessing:
            data = self.preprocess(data)
            _sync(dev)
            times["preprocess"] = time.perf_counter() - clock
            clock = time.perf_counter()
        batch = list_data_collate([data])
        batch["image"] = batch["image"].to(dev)
        with torch.no_grad():
            pred = self.inferers[method](batch["image"], self.network)
        _sync(dev)
        report = (reports_of(pred) or [{}])[0]
        times["adapt"] = report.get("adapt_seconds", 0.0)
        times["infer"] = time.perf_counter() - clock - times["adapt"]
        return batch, pred, report

    def _outputs(self, batch: dict, pred: torch.Tensor) -> list[tuple[dict, dict]]:
        """One inferred batch as (item, output) pairs, as MONAI's evaluator decollates it."""
        # made in another thread's CUDA stream: keep their memory for this thread's stream too
        for tensor in (batch["image"], pred):
            if tensor.is_cuda:
                tensor.record_stream(torch.cuda.current_stream(tensor.device))
        decollate = Decollated(keys=None, detach=True)
        return list(zip(decollate(batch), decollate({"image": batch["image"], "pred": pred})))

    def finish(self, batch: dict, pred: torch.Tensor, times: dict) -> None:
        """Post-process and write one volume; ``times`` gets both stages' seconds."""
        clock = time.perf_counter()
        pairs = [
            engine_apply_transform(b, o, self.postprocess) for b, o in self._outputs(batch, pred)
        ]
        times["postprocess"] = time.perf_counter() - clock
        clock = time.perf_counter()
        for b, o in pairs:
            engine_apply_transform(b, o, self.write)
        times["write"] = time.perf_counter() - clock

    def hand_off(
        self, batch: dict, pred: torch.Tensor, times: dict, processes: ProcessPoolExecutor
    ) -> Callable[[], None]:
        """Post-process one volume up to its label map here, then send the label map (on the host)
        to ``processes`` for the rest and the writing. Returns the wait for them, which puts both
        stages' seconds in ``times``."""
        clock = time.perf_counter()
        pairs = [
            engine_apply_transform(b, o, self.to_labels) for b, o in self._outputs(batch, pred)
        ]
        labels = [{"pred": o["pred"].cpu()} for _, o in pairs]
        here = time.perf_counter() - clock
        future = processes.submit(_finish_on_host, labels)

        def collect() -> None:
            seconds = future.result()
            times.update(postprocess=here + seconds["postprocess"], write=seconds["write"])

        return collect

    def segment(self, method: str, data: dict, times: dict) -> dict:
        """The rest of one volume's pipeline after loading, in this thread; returns the report."""
        batch, pred, report = self.infer(method, data, times)
        self.finish(batch, pred, times)
        return report

    def run_pass(
        self,
        method: str,
        loader: DataLoader,
        bar: tqdm | None,
        writers: Executor | None = None,
        streams: int = 1,
    ) -> dict:
        """Every volume once with ``method``: wall time, volumes/s, mean stage seconds, peak memory.

        ``streams`` threads infer, each in its own CUDA stream, taking the volumes in turn from the
        loader. With ``writers`` (threads, or processes that get the label maps) they hand each
        volume's output over and go on; at most two volumes per inferring thread wait for their
        outputs at a time."""
        _reset_peak(self.device)
        rows: list[dict] = []
        pending: list[Callable[[], Any]] = []  # waits for the outputs handed over
        lock = threading.Lock()
        volumes = iter(loader)

        def infer_all() -> None:
            while True:
                waited = time.perf_counter()
                with lock:
                    item = next(volumes, None)
                if item is None:
                    return
                data, times = item
                times["wait"] = time.perf_counter() - waited
                if writers is None:
                    self.segment(method, data, times)
                else:
                    batch, pred, _ = self.infer(method, data, times)
                    if isinstance(writers, ProcessPoolExecutor):
                        collect = self.hand_off(batch, pred, times, writers)
                    else:
                        collect = writers.submit(self.finish, batch, pred, times).result
                    with lock:
                        pending.append(collect)
                        late = pending.pop(0) if len(pending) > 2 * streams else None
                    if late is not None:
                        late()
                with lock:
                    rows.append(times)
                    if bar is not None:
                        bar.update()

        def in_stream() -> None:
            with _own_stream(self.device):
                infer_all()

        start = time.perf_counter()
        with ThreadPoolExecutor(streams, "infer") as inferring:
            for done in [inferring.submit(in_stream) for _ in range(streams)]:
                done.result()
        for collect in pending:
            collect()
        seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "volumes_per_s": len(rows) / seconds,
            "stages_s": {s: sum(r.get(s, 0.0) for r in rows) / len(rows) for s in STAGES},
            "peak_memory_mib": _peak_mib(self.device),
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
    settings: dict | None = None,
    limit: int | None = None,
    overwrite: bool = False,
) -> dict:
    """Plain and GraTa through the bundle's pipeline on the same volumes; write ``<name>.json/.md``.

    Each method first segments the first volume once (warm-up, not counted); then the passes over
    all volumes alternate plain, GraTa, ``repeats`` times. Stage times are means per volume; loading
    (and CPU preprocessing) overlap compute in the workers, so ``wait`` is what the loop waited for them.

    Args:
        dataset_dir: a folder of volumes (NIfTI files, DICOM series); default ``$GRATA_DATA_DIR/abdomen/mr``.
        bundle_dir: the bundle (``configs/inference.json``, ``models/model.pt``); default ``$GRATA_BUNDLE_DIR``.
        out_dir: where ``<name>.json`` and ``<name>.md`` go.
        name: the results' file name, without extension.
        repeats: passes per method.
        device: ``"cuda"``, ``"cuda:1"``, ``"cpu"``; default CUDA when available.
        num_workers: loader processes; default :func:`loader_workers` (0 loads in the main process).
        device_preprocessing: preprocess after ``LoadImaged`` on ``device`` in the inferring thread.
        writers: threads that post-process and write the outputs while the inferring threads infer the
            next volumes; 0 does both in the inferring thread, after each volume.
        write_in: ``"threads"``, or ``"processes"``: the writers are processes that get each volume's
            label map (post-processed up to the last ``AsDiscreted`` in the inferring thread).
        streams: threads that infer volumes at once, each in its own CUDA stream (1: one at a time).
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
    ):
        raise ValueError(
            "need --repeats >= 1, --limit >= 1, --num_workers >= 0, --writers >= 0 and --streams >= 1."
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
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        pipe = _Pipeline(
            paths.bundle_dir(bundle_dir), dev, tmp, bool(device_preprocessing), settings
        )
        items = pipe.volumes(dataset)[:limit]
        if not items:
            raise ValueError(f"no volumes in {dataset}.")
        passes: dict[str, list[dict]] = {m: [] for m in pipe.inferers}
        output = _writers(pipe, writers, write_in)
        try:
            reports = {}
            for method in pipe.inferers:  # warm-up: allocator, cudnn autotuning, first-call imports
                data, times = pipe.loader(items[:1], 0).dataset[0]
                reports[method] = pipe.segment(method, data, times)
                # every inferring thread's working copy (and CUDA graphs) and every writer made before timing
                if streams > 1 or output is not None:
                    warm = [items[i % len(items)] for i in range(max(streams, writers))]
                    pipe.run_pass(method, pipe.loader(warm, 0), None, output, streams)
            loader = pipe.loader(items, workers)
            total = repeats * len(passes) * len(items)
            with tqdm(total=total, unit="vol", desc="throughput") as bar:
                for r in range(repeats):
                    for method, done in passes.items():
                        bar.set_description(f"{method} {r + 1}/{repeats}")
                        done.append(pipe.run_pass(method, loader, bar, output, streams))
        finally:
            if output is not None:
                output.shutdown(cancel_futures=True)
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
            "overrides": settings or {},
            "plain": {"method": "SlidingWindowInferer", **pipe.sliding},
            "grata": reports["grata"].get("settings", {}),
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


def _writers(pipe: _Pipeline, count: int, write_in: str) -> Executor | None:
    """The writers of ``run_throughput``: none, threads or started processes."""
    if not count:
        return None
    if write_in == "threads":
        return ThreadPoolExecutor(count, "writer")
    pool = ProcessPoolExecutor(
        count, multiprocessing.get_context("spawn"), _start_host, (pipe.on_host, pipe.write)
    )
    # started now, not on a timed volume (a spawned process imports torch and MONAI)
    list(pool.map(time.sleep, [0.5] * count))
    return pool


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


def _inferring(streams: int) -> str:
    if streams == 1:
        return "one volume inferred at a time"
    return f"{streams} volumes inferred at once, each in its own thread and CUDA stream"


def write_markdown(results: dict) -> str:
    """The results as a short markdown page: the setting, one table row per method, the ratio."""
    memory = "peak RSS" if results["device"].startswith("CPU") else "peak GPU memory"
    s = results["settings"]
    lines = [
        f"# Throughput: {results['device']}",
        "",
        (
            f"Revision `{results['git_revision']}`; {_count(len(s['volumes']), 'volume')} from "
            f"`{s['dataset_dir']}`, "
            f"{s['repeats']} passes per method; {s['num_workers']} loader workers, preprocessing on "
            f"{'the device' if s['device_preprocessing'] else 'the CPU workers'}; "
            f"{_writing(s.get('writers', 0), s.get('write_in', 'threads'))}; {_inferring(s.get('streams', 1))}; "
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
