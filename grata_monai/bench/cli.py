"""Command line: ``grata-monai <command> --arg value`` (python-fire)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import fire

from grata_monai.bench.benchmark import run_benchmark, run_reference, run_source, run_volumes
from grata_monai.bench.cache import build_cache
from grata_monai.bench.dice import print_dice
from grata_monai.bench.report import write_report
from grata_monai.bench.study import run_study
from grata_monai.bench.throughput import run_throughput
from grata_monai.bundle.wrap import wrap_command

__all__ = ["main"]


def _quiet(command: Callable) -> Callable:
    """Run ``command`` without letting fire print its (large) return value; it is written to files."""

    @functools.wraps(command)
    def run(*args, **kwargs) -> None:
        command(*args, **kwargs)

    return run


COMMANDS = {
    "cache": build_cache,
    "benchmark": _quiet(run_benchmark),
    "source": _quiet(run_source),
    "study": _quiet(run_study),
    "reference": _quiet(run_reference),
    "volumes": _quiet(run_volumes),
    "report": _quiet(write_report),
    "throughput": _quiet(run_throughput),
    "wrap": wrap_command,
    "dice": print_dice,
}


def main() -> None:
    """Entry point of the ``grata-monai`` console script."""
    fire.Fire(COMMANDS)


if __name__ == "__main__":
    main()
