"""Add GraTa to an existing MONAI bundle without editing it: ``grata-monai wrap BUNDLE_DIR``.

The bundle is read as ``monai.bundle run`` reads it (``ConfigParser`` over its configs, with
``bundle_root`` set to the bundle folder). When GraTa can work there, a config overlay is written
that, layered after the bundle's configs, changes two things: ``inferer`` becomes a
``grata_monai.GraTaInferer`` with the bundle's own sliding-window settings, and the evaluator's
handlers get an ``AuditReportHandler`` that writes each volume's report beside its segmentation;
``initialize`` starts with the strict check of command-line options (``grata_monai.bundle.overrides``).
MONAI's multi-file merge does the rest: later files replace ids, ``+id`` appends to a list.
"""

from __future__ import annotations

import inspect
import json
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import merge_kv
from monai.inferers import SimpleInferer, SlidingWindowInferer
from monai.transforms import SaveImaged

from grata_monai import defaults
from grata_monai.adaptive import AdaptiveInferer, unwrap_network
from grata_monai.norms import find_norm_layers

__all__ = [
    "WrapError",
    "Wrapped",
    "SETTINGS",
    "STRICT_INITIALIZE",
    "read_bundle",
    "strict_initialize",
    "wrap",
    "wrap_command",
]

INFERER_TARGET = "grata_monai.GraTaInferer"
HANDLER_TARGET = "grata_monai.bundle.handlers.AuditReportHandler"
HANDLER_ID = "grata_audit_report"
# GraTa's settings written into the overlay (the bundle's defaults); any GraTaInferer argument may be added.
SETTINGS = {
    "steps": defaults.STEPS,
    "patches_per_step": defaults.PATCHES_PER_STEP,
    "lr0": defaults.LR0,
    "weak_transforms": list(defaults.WEAK_TRANSFORMS),
    "episodic": defaults.EPISODIC,
    "amp": defaults.AMP,
    "seed": defaults.SEED,
    "norm_stats": defaults.BUNDLE_NORM_STATS,  # needs nothing from the wrapped bundle's training data
}
# First in the wrapped bundle's `initialize`: one-line stop errors, then the check of command-line options.
STRICT_INITIALIZE = [
    "$import grata_monai.bundle.console as grata_console",
    "$import grata_monai.bundle.overrides as grata_overrides",
    "$grata_console.setup()",
    "$grata_overrides.check()",
]
_SLIDING_KEYS = [
    k for k in inspect.signature(SlidingWindowInferer).parameters if k not in ("args", "kwargs")
]
_SAVE_DEFAULTS = {k: p.default for k, p in inspect.signature(SaveImaged).parameters.items()}


class WrapError(ValueError):
    """GraTa cannot be added to this bundle as it stands; the message names the fix."""


@dataclass
class Wrapped:
    """What ``wrap`` wrote: the overlay, where, the command that runs it, and notes for the user."""

    overlay: dict
    path: Path
    command: str
    notes: list[str] = field(default_factory=list)

    def message(self) -> str:
        lines = [
            f"wrote {self.path}",
            *(f"- {n}" for n in self.notes),
            "run it with:",
            f"  {self.command}",
        ]
        return "\n".join(lines)


def read_bundle(
    bundle_dir: str | Path, config_files: Sequence[str] = ("configs/inference.json",)
) -> ConfigParser:
    """The bundle's configs (and metadata) merged by MONAI's ``ConfigParser``, ``bundle_root`` set to the folder."""
    bundle_dir = Path(bundle_dir)
    files = [bundle_dir / f for f in config_files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise WrapError(
            f"no bundle config at {missing}; pass the bundle folder (holding configs/) and --config_file."
        )
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    if (bundle_dir / "configs" / "metadata.json").is_file():
        parser.read_meta(str(bundle_dir / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle_dir)
    return parser


def _deref(parser: ConfigParser, value: Any) -> Any:
    """Follow ``@id`` references in the raw config."""
    while isinstance(value, str) and value.startswith("@") and parser.get(value[1:]) is not None:
        value = parser.get(value[1:])
    return value


def _fragment(raw: Any) -> str:
    """A raw config value as a piece of a ``$`` expression."""
    if isinstance(raw, str) and raw.startswith("@"):
        return raw
    if isinstance(raw, str) and raw.startswith("$"):
        return f"({raw[1:]})"
    return repr(raw)


def check_network(parser: ConfigParser) -> int:
    """Build ``network_def`` (else ``network``) and count its norm layers with affine parameters.

    Raises:
        WrapError: the network cannot be built, or it has nothing GraTa can adapt.
    """
    key = "network_def" if parser.get("network_def") is not None else "network"
    if parser.get(key) is None:
        raise WrapError(
            "the bundle has no 'network_def' (or 'network') id; add one that builds the network."
        )
    try:
        network = unwrap_network(parser.get_parsed_content(key))
    except Exception as e:  # noqa: BLE001 - any failure of the bundle's own config
        raise WrapError(
            f"could not build the bundle's '{key}' ({type(e).__name__}: {e}); it must build here "
            "(install the packages its _target_ needs)."
        ) from e
    layers = find_norm_layers(network)
    if not layers:
        raise WrapError(
            f"the network ('{key}', {type(network).__name__}) has no normalization layer with affine parameters, "
            "so GraTa has nothing to adapt. Fix: retrain with adaptable norms, e.g. MONAI UNet(norm='batch') or "
            "norm=('instance', {'affine': True}) (MONAI's default instance norm has affine=False)."
        )
    return len(layers)


def _metadata_roi(parser: ConfigParser) -> list[int] | None:
    inputs = (parser.get("_meta_#network_data_format") or {}).get("inputs") or {}
    shape = next(iter(inputs.values()), {}).get("spatial_shape") if inputs else None
    return list(shape) if shape and all(isinstance(s, int) for s in shape) else None


def sliding_settings(
    parser: ConfigParser, roi_size: Sequence[int] | None = None
) -> tuple[dict, str]:
    """The sliding-window settings of the bundle's ``inferer`` (raw config values, so references
    such as ``@roi_size`` still follow command-line overrides) and a note saying where they came from.

    Raises:
        WrapError: no ``inferer`` id, or one we cannot take settings from.
    """
    if parser.get("inferer") is None:
        raise WrapError(
            "the bundle has no 'inferer' id (the id MONAI Label, MONAI Deploy and our overlay replace). "
            "Fix: define 'inferer' (e.g. a SlidingWindowInferer) and make the evaluator use '@inferer'."
        )
    try:
        inferer = parser.get_parsed_content("inferer")
    except Exception as e:  # noqa: BLE001
        raise WrapError(f"could not build the bundle's 'inferer' ({type(e).__name__}: {e}).") from e
    raw, name = parser.get("inferer"), type(inferer).__name__
    if isinstance(inferer, AdaptiveInferer):
        inferer = inferer.sliding
    if isinstance(inferer, SlidingWindowInferer):
        if isinstance(raw, dict) and "_target_" in raw:
            settings = {k: v for k, v in raw.items() if k in _SLIDING_KEYS}
        else:
            settings = {
                "roi_size": list(inferer.roi_size),
                "sw_batch_size": inferer.sw_batch_size,
                "overlap": inferer.overlap,
                "mode": str(getattr(inferer.mode, "value", inferer.mode)),
            }
        note = f"kept the bundle's {name} settings: {json.dumps(settings)}"
        if roi_size is not None:
            settings["roi_size"] = list(roi_size)
            note += f"; roi_size {list(roi_size)} from --roi_size"
        return settings, note
    if isinstance(inferer, SimpleInferer):
        roi, why = (
            (list(roi_size), "--roi_size")
            if roi_size is not None
            else (_metadata_roi(parser), None)
        )
        if roi is None:
            raise WrapError(
                "the bundle's inferer is a SimpleInferer (whole input at once) and its metadata gives no "
                "integer network_data_format.inputs.*.spatial_shape; GraTa adapts on patches and infers "
                'with sliding windows. Fix: pass --roi_size, e.g. --roi_size "[96,96,96]".'
            )
        why = (
            why
            or "the network's declared input shape (metadata network_data_format.inputs.*.spatial_shape)"
        )
        settings = {"roi_size": roi, "sw_batch_size": 1, "overlap": defaults.OVERLAP}
        return settings, (
            f"the bundle's SimpleInferer ran the whole input; GraTa uses sliding windows of roi_size "
            f"{roi} from {why} (one window when preprocessing already gives inputs that shape), "
            f"overlap {defaults.OVERLAP}; pass --roi_size to choose another"
        )
    raise WrapError(
        f"the bundle's inferer is a {name}; wrap takes settings from a SlidingWindowInferer or a "
        "SimpleInferer. Fix: make 'inferer' a SlidingWindowInferer with the roi_size, sw_batch_size and "
        "overlap you use, or write the GraTaInferer config by hand (docs/any-bundle.md)."
    )


def _is_audit_handler(item: Any) -> bool:
    return isinstance(item, dict) and str(item.get("_target_", "")).endswith("AuditReportHandler")


def _save_transform(parser: ConfigParser) -> dict | None:
    """The raw config of the enabled ``SaveImaged`` in ``postprocessing``, if any."""
    post = _deref(parser, parser.get("postprocessing"))
    transforms = (
        post.get("transforms", [])
        if isinstance(post, dict)
        else post
        if isinstance(post, list)
        else []
    )
    for t in (_deref(parser, t) for t in transforms):
        enabled = isinstance(t, dict) and t.get("_disabled_") not in (True, "true", "True")
        if enabled and str(t.get("_target_", "")).split(".")[-1] == "SaveImaged":
            return t
    return None


def audit_overlay(parser: ConfigParser) -> tuple[dict, str]:
    """Overlay entries adding the audit-report handler to the evaluator, and a note.

    Raises:
        WrapError: the evaluator does not use ``@inferer``, so the replacement would not be used.
    """
    if not isinstance(parser.get("evaluator"), dict):
        return (
            {},
            "no 'evaluator' id: no audit reports (hosts that call 'inferer' directly still adapt)",
        )
    used = parser.get("evaluator#inferer")
    if not (isinstance(used, str) and re.search(r"@inferer\b(?!#)", used)):
        raise WrapError(
            f"the evaluator's inferer is {used!r}, not '@inferer', so it would not use GraTa. "
            'Fix: set "evaluator#inferer": "@inferer" in the bundle\'s config.'
        )
    save = _save_transform(parser)
    if save is None:
        return {}, "no enabled SaveImaged in 'postprocessing': no audit reports written"
    target, handlers = "evaluator#val_handlers", parser.get("evaluator#val_handlers")
    while (
        isinstance(handlers, str)
        and handlers.startswith("@")
        and parser.get(handlers[1:]) is not None
    ):
        target, handlers = handlers[1:], parser.get(handlers[1:])
    if isinstance(handlers, list) and any(_is_audit_handler(_deref(parser, h)) for h in handlers):
        return {}, "the evaluator already has an AuditReportHandler: kept it"
    save = {**_SAVE_DEFAULTS, **save}
    handler = {
        "_target_": HANDLER_TARGET,
        "output_dir": save["output_dir"],
        "postfix": f"${_fragment(save['output_postfix'])} + '_report'",
        "seg_postfix": save["output_postfix"],
        "separate_folder": save["separate_folder"],
        "overwrite": True,  # SaveImaged replaces the segmentation; its report follows
    }
    overlay: dict[str, Any] = {HANDLER_ID: handler}
    if handlers is None:
        overlay["evaluator#val_handlers"] = [f"@{HANDLER_ID}"]
    elif isinstance(handlers, list):
        overlay[f"+{target}"] = [f"@{HANDLER_ID}"]
    else:
        original = _fragment(parser.get("evaluator#val_handlers"))
        overlay["evaluator#val_handlers"] = f"$list({original}) + [@{HANDLER_ID}]"
    return (
        overlay,
        "an audit report (<input>_<output_postfix>_report.json) is written beside each segmentation",
    )


def strict_initialize(parser: ConfigParser) -> dict:
    """Overlay entry putting `STRICT_INITIALIZE` before the bundle's own ``initialize`` (nothing when it has
    the check already)."""
    own = parser.get("initialize")
    items = [] if own is None else list(own) if isinstance(own, list) else [own]
    if any(re.search(r"overrides\.check\(", str(item)) for item in items):
        return {}
    return {"initialize": [*STRICT_INITIALIZE, *items]}


def wrap(
    bundle_dir: str | Path,
    out: str | Path | None = None,
    overwrite: bool = False,
    config_file: str | Sequence[str] = "configs/inference.json",
    roi_size: Sequence[int] | None = None,
    copy_to: str | Path | None = None,
    **settings: Any,
) -> Wrapped:
    """Write the GraTa overlay for the bundle in ``bundle_dir``; nothing is written when GraTa cannot work.

    Args:
        bundle_dir: the bundle folder (``configs/``, ``models/``); its files are never modified.
        out: the overlay file; default ``<bundle_dir>/configs/grata.json``.
        overwrite: replace an existing ``out``.
        config_file: the bundle config(s) the overlay goes after, relative to ``bundle_dir``.
        roi_size: sliding-window size, replacing the bundle's (needed for a SimpleInferer without metadata shape).
        copy_to: instead of an overlay, copy the bundle to this new folder with the merged config as its
            ``configs/inference.json`` (for hosts that read one config: MONAI Label, MONAI Deploy).
        settings: GraTaInferer arguments, e.g. ``steps=2``, ``norm_stats="source"`` (defaults: ``SETTINGS``).

    Raises:
        WrapError: what stops GraTa from working on this bundle, and the fix.
    """
    bundle_dir = Path(bundle_dir)
    files = [config_file] if isinstance(config_file, str) else list(config_file)
    parser = read_bundle(bundle_dir, files)
    n_layers = check_network(parser)
    sliding, sliding_note = sliding_settings(parser, roi_size)
    inferer = {"_target_": INFERER_TARGET, **sliding, **SETTINGS, **settings}
    audit, audit_note = audit_overlay(parser)
    parser["grata_check"] = inferer
    try:
        parser.get_parsed_content("grata_check")
    except Exception as e:  # noqa: BLE001
        raise WrapError(
            f"GraTa settings {settings} do not build a GraTaInferer ({type(e).__name__}: {e})."
        ) from e
    strict = strict_initialize(parser)
    overlay = {"inferer": inferer, **audit, **strict}
    notes = [
        f"GraTa adapts the affine parameters of {n_layers} normalization layers",
        sliding_note,
        audit_note,
    ]
    if strict:
        notes.append(
            "a command-line option that names no setting of the configs stops the run (strict options)"
        )
    if copy_to is not None:
        return _write_copy(bundle_dir, files, overlay, Path(copy_to), notes)
    path = Path(out) if out is not None else bundle_dir / "configs" / "grata.json"
    if path.exists() and not overwrite:
        raise WrapError(
            f"'{path}' already exists; pass --overwrite to replace it or --out to write elsewhere."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(overlay, indent=4) + "\n")
    configs = ",".join(f"'{bundle_dir / f}'" for f in files) + f",'{path}'"
    command = f'python -m monai.bundle run --config_file "[{configs}]" --bundle_root {bundle_dir}'
    return Wrapped(overlay, path, command, notes)


def _write_copy(
    bundle_dir: Path, files: list[str], overlay: dict, dest: Path, notes: list[str]
) -> Wrapped:
    """Copy the bundle to ``dest`` and write the merged config as its ``configs/inference.json``."""
    if dest.exists():
        raise WrapError(f"'{dest}' already exists; --copy_to needs a new folder.")
    parser = ConfigParser()
    parser.read_config([str(bundle_dir / f) for f in files])
    for k, v in overlay.items():
        merge_kv(parser, k, v)
    merged = {k: v for k, v in parser.get().items() if k != "_meta_"}
    shutil.copytree(bundle_dir, dest)
    path = dest / "configs" / "inference.json"
    path.write_text(json.dumps(merged, indent=4) + "\n")
    if (dest / "models" / "model.ts").is_file():
        notes.append(
            "the copy's models/model.ts embeds the original configs (MONAI Deploy reads those): re-export it with "
            f"python -m monai.bundle ckpt_export network_def --filepath {dest}/models/model.ts --ckpt_file "
            f"{dest}/models/model.pt --meta_file {dest}/configs/metadata.json --config_file {path} --bundle_root {dest}"
        )
    command = f"python -m monai.bundle run --config_file {path} --bundle_root {dest}"
    return Wrapped(overlay, path, command, notes)


def wrap_command(
    bundle_dir: str,
    out: str | None = None,
    overwrite: bool = False,
    config_file: str | Sequence[str] = "configs/inference.json",
    roi_size: Sequence[int] | None = None,
    copy_to: str | None = None,
    **settings: Any,
) -> None:
    """GraTa for any MONAI bundle: write a config overlay (the bundle's files stay untouched) and print the
    ``monai.bundle run`` command, or say why GraTa cannot work there (exit status 2). See :func:`wrap`.

    Args:
        bundle_dir: the bundle folder (``configs/``, ``models/``).
        out: the overlay file; default ``<bundle_dir>/configs/grata.json``.
        overwrite: replace an existing overlay.
        config_file: the bundle config(s) the overlay goes after, relative to ``bundle_dir``.
        roi_size: sliding-window size replacing the bundle's, e.g. ``"[96,96,96]"``.
        copy_to: instead of an overlay, a new folder: a copy of the bundle with one merged
            ``configs/inference.json`` (for MONAI Label and MONAI Deploy).
        settings: GraTaInferer settings as flags, e.g. ``--steps 2 --lr0 0.001 --norm_stats source``
            (the defaults are ``grata_monai.bundle.wrap.SETTINGS``).
    """
    try:
        print(
            wrap(bundle_dir, out, overwrite, config_file, roi_size, copy_to, **settings).message()
        )
    except WrapError as e:
        print(f"grata-monai wrap: nothing written: {e}", file=sys.stderr)
        sys.exit(2)
