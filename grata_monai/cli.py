"""Command line: ``grata-monai <command> --arg value`` (python-fire).

User commands: ``segment`` (the bundle's inference on a folder or one file), ``wrap`` (GraTa for
any MONAI bundle) and ``dice``. Project tooling (``grata_monai.bench``): ``cache``, ``benchmark``,
``source``, ``study``, ``reference``, ``volumes``, ``report``, ``candidates``, ``directions``,
``throughput``, ``throughput_log``. Each command's ``--help`` shows its
docstring as plain text.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

from grata_monai.bench import paths
from grata_monai.bench.benchmark import run_benchmark, run_reference, run_source, run_volumes
from grata_monai.bench.cache import build_cache
from grata_monai.bench.candidates import run_candidates
from grata_monai.bench.dice import print_dice
from grata_monai.bench.directions import write_directions
from grata_monai.bench.methods import METHODS
from grata_monai.bench.report import write_report
from grata_monai.bench.study import run_study
from grata_monai.bench.throughput import run_throughput
from grata_monai.bench.throughput_log import write_throughput_log
from grata_monai.bundle.io import as_bool
from grata_monai.bundle.wrap import wrap_command

__all__ = ["COMMANDS", "benchmark", "segment", "plain", "command", "main"]

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def plain(text: str) -> str:
    """Docstring reStructuredText as plain text: ``x`` -> x, :func:`~a.b` -> b."""
    text = _ROLE.sub(
        lambda m: m.group(1).split(".")[-1] if m.group(0).count("~") else m.group(1), text
    )
    return text.replace("``", "")


def command(function: Callable, quiet: bool = False) -> Callable:
    """``function`` as a fire command: its help in plain text, its boolean options read strictly
    (fire passes ``--flag false`` as the string 'false', which Python takes for True) and, when
    ``quiet``, its (large) return value not printed (it is written to files)."""
    flags = [
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.annotation in (bool, "bool")
    ]

    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        for name in flags:
            if name in kwargs:
                kwargs[name] = as_bool(kwargs[name], name)
        result = function(*args, **kwargs)
        return None if quiet else result

    run.__doc__ = plain(function.__doc__ or "")
    return run


def segment(
    input: str,
    output_dir: str | None = None,
    bundle_dir: str | None = None,
    overwrite: bool = False,
    **overrides: Any,
) -> None:
    """Segment a folder of volumes (NIfTI files, DICOM series folders) or one NIfTI file with the
    bundle's configs/inference.json, adapting to each volume: <name>_seg.nii.gz and its audit report.

    Args:
        input: a folder (as the bundle's --dataset_dir) or one NIfTI file (*.nii, *.nii.gz).
        output_dir: where the outputs go; default the bundle's (<bundle>/eval).
        bundle_dir: the bundle folder; default $GRATA_BUNDLE_DIR.
        overwrite: replace existing outputs (otherwise the run stops before any work).
        overrides: other ids of inference.json, e.g. --inferer#steps 2 (as monai.bundle run takes them).
    """
    from monai.bundle import run

    bundle = paths.bundle_dir(bundle_dir)
    source = Path(input).expanduser()
    if not source.exists():
        raise FileNotFoundError(
            f"input '{source}' does not exist: pass a folder of volumes or one NIfTI file."
        )
    settings: dict[str, Any] = {"dataset_dir": str(source)}
    if source.is_file():
        if not source.name.endswith((".nii", ".nii.gz")):
            raise ValueError(
                f"'{source}' is not a NIfTI file (*.nii, *.nii.gz); for a DICOM series pass its folder."
            )
        settings = {
            "dataset_dir": str(source.parent),
            "volumes": [{"image": str(source)}],
            "intake#skipped": [],
        }
    if output_dir is not None:
        settings["output_dir"] = output_dir
    run(
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        overwrite=overwrite,
        **settings,
        **overrides,
    )


def benchmark(
    data_dir: str | None = None,
    key: str = "mr_test",
    bundle_dir: str | None = None,
    out: str | None = None,
    methods: str = ",".join(METHODS),
    limit: int | None = None,
    device: str | None = None,
    **settings: Any,
) -> None:
    """Every method on a datalist split with shared settings: Dice, time, GPU memory, in --out (JSON).

    Args:
        data_dir: folder holding datalist.json; default $GRATA_DATA_DIR/abdomen.
        key: the datalist split.
        bundle_dir: the bundle (network, weights, preprocessing); default $GRATA_BUNDLE_DIR.
        out: the results file (replaced).
        methods: comma-separated names (grata_monai.bench.methods.METHODS).
        limit: only the first volumes.
        device: cuda or cpu; CUDA when available by default.
        settings: any setting of the methods' inferers as a flag, e.g. --steps 2 --lr0 0.01
            --weak_transforms flip1,flip2; a setting no method takes is an error. The defaults are
            grata_monai.bench.benchmark.BENCHMARK_SETTINGS.
    """
    run_benchmark(data_dir, key, bundle_dir, out, methods, limit, device, settings)


COMMANDS = {
    "segment": command(segment),
    "wrap": command(wrap_command),
    "dice": command(print_dice),
    "cache": command(build_cache),
    "benchmark": command(benchmark),
    "source": command(run_source, quiet=True),
    "study": command(run_study, quiet=True),
    "reference": command(run_reference, quiet=True),
    "volumes": command(run_volumes, quiet=True),
    "report": command(write_report, quiet=True),
    "candidates": command(run_candidates, quiet=True),
    "directions": command(write_directions, quiet=True),
    "throughput": command(run_throughput, quiet=True),
    "throughput_log": command(write_throughput_log, quiet=True),
}


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``grata-monai`` console script. ``COMMAND --help`` shows the command's help
    (fire would pass ``--help`` to a command that takes any flag)."""
    args = list(sys.argv[1:] if argv is None else argv)
    head = args[: args.index("--")] if "--" in args else args
    if any(a in ("-h", "--help") for a in head):
        args = [a for a in head if a not in ("-h", "--help")][:1] + ["--", "--help"]
    fire.Fire(COMMANDS, command=args, name="grata-monai")


if __name__ == "__main__":
    main()
