"""The bundle's inference pipeline as stages, for timing: load, preprocess, infer, post-process, write.

:class:`Pipeline` runs ``inference.json`` as the bundle builds it: its ``preprocessing`` split after
``LoadImaged`` into *load* and *preprocess*, the inferer, and its ``postprocessing`` split before
``SaveImaged`` into *post-process* and *write*. Plain is MONAI's ``SlidingWindowInferer`` with the
bundle inferer's sliding-window settings and the source statistics; GraTa is the bundle's
``inferer``. Loading runs in persistent ``DataLoader`` workers; ``streams`` threads infer volumes at
once, each in its own CUDA stream; writers (threads, or processes that get the label maps) finish
the volumes while the inferring threads go on.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import resource
import sys
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

from grata_monai.audit import reports_of
from grata_monai.turns import TURNS

__all__ = [
    "STAGES",
    "WRITE_IN",
    "Pipeline",
    "bundle_volumes",
    "split_at_labels",
    "split_pipeline",
    "start_writers",
]

WRITE_IN = ("threads", "processes")
STAGES = ("load", "preprocess", "wait", "adapt", "infer", "postprocess", "write")
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
    # one thread: the writers share the cores with the loader and the inferring process
    torch.set_num_threads(1)
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


def bundle_volumes(bundle_dir: Path, dataset_dir: Path) -> list[dict]:
    """The inputs of ``dataset_dir`` as the bundle's ``inference.json`` finds them (its
    ``exclude`` applies)."""
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle_dir)
    parser["dataset_dir"] = str(dataset_dir)
    return parser.get_parsed_content("volumes")


class Pipeline:
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
        self.device = device
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

    def loader(self, items: list[dict], num_workers: int) -> DataLoader:
        """Loaded (and, unless on the device, preprocessed) items, in order, from persistent workers;
        on Linux forked, as there by default, also in a spawned process (where each spawned worker
        would import torch and MONAI again)."""
        dataset = _Loading(items, self.load, None if self.device_preprocessing else self.preprocess)
        fork = num_workers > 0 and sys.platform.startswith("linux")
        return DataLoader(
            dataset,
            batch_size=None,
            num_workers=num_workers,
            collate_fn=_as_is,
            persistent_workers=num_workers > 0,
            multiprocessing_context="fork" if fork else None,
        )

    def infer(self, method: str, data: dict, times: dict) -> tuple[dict, torch.Tensor, dict]:
        """Preprocess on the device (when asked) and infer one volume; ``times`` gets the stages' seconds.
        Returns the batch, the logits and the inferer's report."""
        dev = self.device
        clock = time.perf_counter()
        if self.device_preprocessing:
            with TURNS.running():  # GPU work, in turn with the inferer's captures in other threads
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
        with TURNS.running():  # GPU work, in turn with the inferer's captures in other threads
            pairs = [
                engine_apply_transform(b, o, self.postprocess)
                for b, o in self._outputs(batch, pred)
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
        with TURNS.running():  # GPU work, in turn with the inferer's captures in other threads
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
        progress: Callable[[], Any] | None = None,
        writers: Executor | None = None,
        streams: int = 1,
    ) -> dict:
        """Every volume of ``loader`` once with ``method``: wall time, its start and end
        (``time.monotonic``, comparable across processes), volumes, volumes/s, mean stage seconds,
        peak memory. ``progress`` is called after each volume.

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
                    if progress is not None:
                        progress()

        def in_stream() -> None:
            with _own_stream(self.device):
                infer_all()

        start = time.monotonic()
        with ThreadPoolExecutor(streams, "infer") as inferring:
            for done in [inferring.submit(in_stream) for _ in range(streams)]:
                done.result()
        for collect in pending:
            collect()
        end = time.monotonic()
        return {
            "seconds": end - start,
            "start": start,
            "end": end,
            "volumes": len(rows),
            "volumes_per_s": len(rows) / (end - start),
            "stages_s": {s: sum(r.get(s, 0.0) for r in rows) / len(rows) for s in STAGES},
            "peak_memory_mib": _peak_mib(self.device),
        }


def start_writers(pipe: Pipeline, count: int, write_in: str) -> Executor | None:
    """``count`` writers for ``pipe``'s outputs: none (0), threads, or started processes that get
    the label maps (spawned, as the parent holds CUDA)."""
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
