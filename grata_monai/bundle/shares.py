"""One bundle run over several processes on the same device, each segmenting its share of the volumes.

One process leaves the GPU idle while it loads, preprocesses and writes a volume; a second process
fills those gaps, as a server runs several workers per GPU (``grata-monai throughput --instances``
measures it, docs/benchmarks). :func:`run_in_processes` lists the volumes as the bundle does (its
``new_volumes`` id, with the run's settings: outputs that exist stop the run before any work),
deals them out in turn, and runs ``monai.bundle.run`` on
each share in its own spawned process (its own CUDA context and copy of the network), the
machine's cores shared out between them (torch threads, and loader workers unless set). The first
process alone reports the inputs the bundle skips without reading them. Each process prints its
own progress lines and summary.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.bundle import ConfigParser

from grata_monai.bundle.console import BadSetting, RunStopped, setup, stop_reason
from grata_monai.defaults import loader_workers

__all__ = ["ProcessFailed", "bundle_items", "run_in_processes", "shares"]

# monai.bundle.run's own keywords; the others are config ids
RUN_KEYWORDS = (
    "config_file",
    "meta_file",
    "logging_file",
    "tracking",
    "args_file",
    "run_id",
    "init_id",
    "final_id",
)


class ProcessFailed(RunStopped, RuntimeError):
    """A process of a split run ended with an error (its own messages are above)."""


def shares(items: Sequence[Any], count: int) -> list[list[Any]]:
    """``items`` dealt out in turn into at most ``count`` shares, none of them empty."""
    return [list(items[i::count]) for i in range(min(count, len(items)))]


def bundle_items(run_args: Mapping[str, Any]) -> list[dict]:
    """The volumes the bundle's run given ``run_args`` (``monai.bundle.run``'s keywords) would
    segment: its ``new_volumes`` (which refuses outputs that exist), else its ``volumes``.

    Raises:
        RunStopped: the bundle's own stop error, e.g. ``OutputsExist`` or ``NotFound``.
    """
    parser = ConfigParser()
    parser.read_config(run_args["config_file"])
    for key, value in run_args.items():
        if key not in RUN_KEYWORDS:
            parser[key] = value
    try:
        return list(
            parser.get_parsed_content("new_volumes" if "new_volumes" in parser else "volumes")
        )
    except RuntimeError as error:  # MONAI wraps a config expression's error: raise ours as it is
        reason = stop_reason(error)
        if reason is None:
            raise
        raise reason from None


def _run_share(run_args: dict, threads: int) -> None:
    """A spawned process's job: the bundle's run on its share with ``threads`` torch threads, a stop
    error as its one line."""
    from monai.bundle import run

    torch.set_num_threads(threads)
    try:
        run(**run_args)
    except Exception as error:
        reason = stop_reason(error)
        if reason is None:
            raise
        print(f"{reason.prefix}{reason}", file=sys.stderr, flush=True)
        sys.exit(1)


def run_in_processes(processes: int, run_args: Mapping[str, Any]) -> None:
    """``monai.bundle.run(**run_args)`` split over ``processes`` processes (fewer when there are
    fewer volumes); returns once all have ended.

    Raises:
        BadSetting: ``processes`` is not a whole number of at least 1.
        ProcessFailed: a process ended with an error; the other shares still ran to their end.
    """
    setup()  # a stop error as one line, as the bundle's own run shows it
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise BadSetting(f"--processes must be a whole number of at least 1, got {processes!r}.")
    groups = shares(bundle_items(run_args), processes)
    if len(groups) <= 1:
        from monai.bundle import run

        run(**run_args)
        return
    # the machine's cores shared out: torch threads and loader workers (unless set) per process
    cores = max(1, (os.cpu_count() or 1) // len(groups))
    spawn = multiprocessing.get_context("spawn")
    workers = []
    for index, group in enumerate(groups):
        args = {"dataloader#num_workers": loader_workers(cores), **run_args, "volumes": group}
        if index:
            args["intake#skipped"] = []  # the first process reports the unreadable inputs
        process = spawn.Process(target=_run_share, args=(args, cores), name=f"share {index + 1}")
        workers.append(process)
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    failed = [f"{w.name} (exit status {w.exitcode})" for w in workers if w.exitcode != 0]
    if failed:
        raise ProcessFailed(
            f"{len(failed)} of {len(workers)} processes failed: {', '.join(failed)}; "
            "their messages are above."
        )
