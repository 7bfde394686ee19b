"""Strict command-line overrides for ``python -m monai.bundle run``: a mistyped option stops the run.

MONAI merges every ``--key value`` it does not know as a runner argument into the config, so
``--datset_dir /data`` adds an unused id and the run segments the default input. :func:`check`,
the first work of each bundle config's ``initialize``, reads the command line of the process and
raises :class:`~grata_monai.bundle.console.BadSetting` (one line: the key and the nearest known
one) for an override that names no id of the merged configs (nested ids included, e.g.
``--inferer#stpes``) and is not a runner argument of MONAI's ``run``. A new argument of a
component (``"_target_"``) is allowed when its target's signature names it. :func:`check_config_files`
is for ``python -m grata_monai.bundle``, which runs before MONAI reads the configs.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from pydoc import locate
from typing import Any

from monai.bundle import ConfigComponent, ConfigParser
from monai.bundle.scripts import create_workflow, run
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS, MERGE_KEY
from monai.bundle.workflows import ConfigWorkflow

from grata_monai.bundle.console import BadSetting, NotFound

__all__ = [
    "RUNNER_ARGS",
    "SEP",
    "COMPONENT_KEYS",
    "known_ids",
    "unknown_override",
    "command_line",
    "run_arguments",
    "check_overrides",
    "check_config_files",
    "check",
]


def _parameters(function: Any) -> list[inspect.Parameter]:
    return list(inspect.signature(function).parameters.values())


def _named_parameters(*functions: Any) -> frozenset[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for f in functions for p in _parameters(f) if p.kind in kinds) - {
        "self"
    }


# The arguments MONAI's `run` (through create_workflow and ConfigWorkflow) takes for itself.
RUNNER_ARGS = _named_parameters(run, create_workflow, ConfigWorkflow.__init__)
SEP = "#"  # the id separator of the command line (MONAI also reads "::")
# Keys MONAI reads in any component dict.
COMPONENT_KEYS = ("_target_", "_disabled_", "_requires_", "_desc_", "_mode_")


def _target_parameters(component: Mapping) -> list[str]:
    """The named arguments of a component's ``_target_`` (empty when it cannot be located); for a class
    whose ``__init__`` takes ``**kwargs``, those of its base classes too (MONAI's ``DataLoader``)."""
    try:
        target = locate(str(ConfigComponent(config=dict(component)).resolve_module_name()))
        if not callable(target):
            return []
        names: set[str] = set()
        for cls in target.__mro__[:-1] if inspect.isclass(target) else (target,):
            names |= _named_parameters(cls)
            if not any(p.kind is p.VAR_KEYWORD for p in _parameters(cls)):
                break
        return sorted(names)
    except (ValueError, TypeError, ImportError):
        return []


def known_ids(config: Any, prefix: str = "") -> Iterator[str]:
    """Every id of a raw config (``a``, ``a#b``, ``a#0#c``, ...), and ``<component>#<argument>`` for the
    named arguments of each component's ``_target_``."""
    if isinstance(config, dict):
        children: list[Any] = list(config.items())
        if "_target_" in config and not str(config["_target_"]).startswith(("$", "@")):
            children += [
                (name, None)
                for name in (*_target_parameters(config), *COMPONENT_KEYS)
                if name not in config
            ]
    elif isinstance(config, list):
        children = list(enumerate(config))
    else:
        return
    for key, value in children:
        path = f"{prefix}{SEP}{key}" if prefix else str(key)
        yield path
        yield from known_ids(value, path)


def unknown_override(key: str, ids: Sequence[str]) -> str | None:
    """The one-line complaint about override ``key``, or None when it is a known id or a runner argument."""
    normal = key.removeprefix(MERGE_KEY).replace("::", SEP)
    if normal in RUNNER_ARGS or normal in ids:
        return None
    candidates = [i for i in ids if i.rpartition(SEP)[2] not in COMPONENT_KEYS] + sorted(
        RUNNER_ARGS
    )
    nearest = difflib.get_close_matches(normal, candidates, n=1, cutoff=0.0)
    hint = f"did you mean --{nearest[0]}?" if nearest else "check the spelling."
    return (
        f"unknown option --{key}: no id of that name in the bundle's configs and not a MONAI runner "
        f"argument; {hint}"
    )


def _value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def command_line(argv: Sequence[str]) -> dict[str, Any] | None:
    """The keyword arguments python-fire passes to ``monai.bundle run`` for ``argv`` (``sys.argv``), or None
    when ``argv`` is not a ``python -m monai.bundle run`` command line."""
    if (
        len(argv) < 2
        or Path(argv[0]).parts[-3:] != ("monai", "bundle", "__main__.py")
        or argv[1] != "run"
    ):
        return None
    return run_arguments(argv[2:])


def run_arguments(tokens: Sequence[str]) -> dict[str, Any]:
    """The keyword arguments python-fire makes of the tokens after ``run`` (``--key value``, ``--key=value``,
    ``--flag``; values read as Python literals where they parse)."""
    args: dict[str, Any] = {}
    tokens, i = list(tokens), 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            continue  # a positional run_id, or fire's own separator
        name, sep, text = token[2:].partition("=")
        if not sep:
            if i < len(tokens) and not tokens[i].startswith("--"):
                text, i = tokens[i], i + 1
            else:
                text = "True"
        args[name.replace("-", "_")] = _value(text)
    return args


def check_overrides(args: Mapping[str, Any]) -> None:
    """Refuse any key of ``args`` (``monai.bundle run``'s keyword arguments, ``args_file`` merged) that is no
    runner argument and no id of the merged ``config_file``(s) and ``meta_file``.

    Raises:
        BadSetting: (a ``ValueError``) the first unknown key, with the nearest known one.
    """
    args = dict(args)
    if args.get("args_file"):
        args = {**ConfigParser.load_config_file(args["args_file"]), **args}
    files = args.get("config_file")
    if not files:
        return  # MONAI itself stops a run without config files
    files = [str(f) for f in ([files] if isinstance(files, (str, os.PathLike)) else files)]
    parser = ConfigParser()
    parser.read_config(files)
    meta = args.get("meta_file") or Path(files[0]).parent / "metadata.json"
    if isinstance(meta, (list, tuple)) or Path(meta).is_file():
        parser.read_meta(meta)
    config = parser.get()
    tracking = args.get("tracking")
    if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
        config = {**DEFAULT_EXP_MGMT_SETTINGS[tracking].get("configs", {}), **config}
    ids = list(known_ids(config))
    for key in args:
        message = unknown_override(key, ids)
        if message:
            raise BadSetting(message)


def check_config_files(files: Any) -> None:
    """Stop before MONAI does, in one line, when a ``--config_file`` does not exist (MONAI raises a traceback).

    Raises:
        NotFound: (a ``FileNotFoundError``) the first missing file, with the nearest config beside it.
    """
    for f in [files] if isinstance(files, (str, os.PathLike)) else list(files or ()):
        path = Path(f)
        if path.is_file():
            continue
        folder = path.parent if path.parent.is_dir() else None
        names = sorted(p.name for p in folder.glob("*.json")) if folder else []
        nearest = difflib.get_close_matches(path.name, names, n=1, cutoff=0.0)
        if folder and nearest:
            hint = f"did you mean '{folder / nearest[0]}'?"
        else:
            hint = "pass a bundle config, e.g. --config_file bundle/configs/inference.json from the repository root."
        raise NotFound(f"config file '{path}' not found: {hint}")


def check(argv: Sequence[str] | None = None) -> None:
    """Check this process's ``monai.bundle run`` command line (for a config's ``initialize``); other
    processes (MONAI Label, Deploy, tests building the config) are left alone.

    Raises:
        BadSetting: an override names no id of the configs; see :func:`check_overrides`.
    """
    args = command_line(sys.argv if argv is None else argv)
    if args is not None:
        check_overrides(args)
