"""Input discovery and path helpers for the bundle configs.

`list_volumes` turns a folder into MONAI datalist items (NIfTI files and DICOM series
folders); `check_no_overwrite` enforces the bundle's output policy; `bundle_root` lets a
bundle config locate its own folder from any working directory.
"""

from __future__ import annotations

import fnmatch
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["NIFTI_SUFFIXES", "as_bool", "list_volumes", "output_path", "check_no_overwrite", "bundle_root", "body_mask"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def as_bool(value: bool | int | str) -> bool:
    """Read a command-line switch: ``monai.bundle run --flag false`` passes the string 'false'.

    Raises:
        ValueError: the value is not a recognisable boolean.
    """
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1", "yes", "y", "on"):
            return True
        if v in ("false", "0", "no", "n", "off", ""):
            return False
        raise ValueError(f"expected a boolean (true/false), got '{value}'.")
    return bool(value)


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128, whatever their extension."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_series(path: Path) -> bool:
    if not path.is_dir():
        return False
    files = sorted(p for p in path.iterdir() if p.is_file())
    return any(_is_dicom_file(p) for p in files[:8])


def list_volumes(
    dataset_dir: str | os.PathLike, key: str = "image", exclude: Sequence[str] = ()
) -> list[dict[str, str]]:
    """List the volumes in a folder as datalist items ``{key: path}``.

    A volume is a NIfTI file (``*.nii``, ``*.nii.gz``) directly in ``dataset_dir``, or a
    DICOM series: a sub-folder whose files are DICOM (any extension), or ``dataset_dir``
    itself when it holds DICOM files and no NIfTI. Items are sorted by path.

    Args:
        dataset_dir: folder to scan.
        key: datalist key of the image path.
        exclude: file-name patterns (``fnmatch``) to skip, e.g. label maps stored beside the
            images (``*_label.nii.gz``) or earlier outputs (``*_seg.nii.gz``).

    Raises:
        FileNotFoundError: the folder does not exist or holds no volume; the message says
            what was looked for.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"dataset_dir '{root}' is not a folder: pass --dataset_dir <folder of NIfTI files "
            "(*.nii, *.nii.gz) or DICOM series folders>."
        )
    entries = sorted(p for p in root.iterdir() if not any(fnmatch.fnmatch(p.name, x) for x in exclude))
    items = [str(p) for p in entries if _is_nifti(p)]
    items += [str(p) for p in entries if _is_dicom_series(p)]
    if not items and _is_dicom_series(root):
        items = [str(root)]
    if not items:
        raise FileNotFoundError(
            f"no input volume found in '{root}': looked for NIfTI files (*.nii, *.nii.gz) in it, "
            "DICOM series in its sub-folders (files with 'DICM' at byte 128), or DICOM files in "
            "the folder itself."
        )
    return [{key: p} for p in items]


def _stem(path: str) -> str:
    name = Path(path.rstrip("/\\")).name
    for suffix in NIFTI_SUFFIXES[::-1]:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def output_path(input_path: str, output_dir: str, postfix: str, ext: str = ".nii.gz") -> str:
    """The file ``SaveImaged(separate_folder=False, output_postfix=postfix)`` writes for an input."""
    return str(Path(output_dir) / f"{_stem(input_path)}_{postfix}{ext}")


def check_no_overwrite(
    items: list[dict[str, str]],
    output_dir: str,
    postfix: str,
    overwrite: bool = False,
    key: str = "image",
    ext: str = ".nii.gz",
) -> list[dict[str, str]]:
    """Refuse to run when an output of ``items`` already exists (MONAI's SaveImaged overwrites silently).

    Args:
        items: datalist items (as from `list_volumes`).
        output_dir: folder the segmentations are written to.
        postfix: SaveImaged ``output_postfix``.
        overwrite: allow replacing existing outputs.
        key: datalist key of the image path.
        ext: output extension.

    Returns:
        ``items`` unchanged, so the call can sit in a config expression.

    Raises:
        FileExistsError: an output exists and ``overwrite`` is false.
    """
    if not as_bool(overwrite):
        existing = [p for p in (output_path(d[key], output_dir, postfix, ext) for d in items) if os.path.exists(p)]
        if existing:
            raise FileExistsError(
                f"{len(existing)} output(s) already exist, e.g. '{existing[0]}': choose another "
                "--output_dir, remove them, or pass --overwrite true."
            )
    return items


def bundle_root(fallback: str | os.PathLike | None = None) -> str:
    """The bundle folder of the config being run, whatever the working directory.

    Looks, in order, for the `ConfigWorkflow` evaluating the config (its
    ``config_root_path``), for ``--config_file`` on the command line, then ``fallback``, then
    the working directory. A folder named ``configs`` resolves to its parent.
    """
    from monai.bundle import ConfigWorkflow

    root = None
    frame = inspect.currentframe()
    while frame is not None:
        obj = frame.f_locals.get("self")
        if isinstance(obj, ConfigWorkflow):
            root = Path(obj.config_root_path)
            break
        frame = frame.f_back
    if root is None:
        argv = sys.argv
        for i, arg in enumerate(argv):
            value = None
            if arg == "--config_file" and i + 1 < len(argv):
                value = argv[i + 1]
            elif arg.startswith("--config_file="):
                value = arg.split("=", 1)[1]
            if value:
                first = value.strip("[]()'\" ").split(",")[0].strip("'\" ")
                root = Path(first).parent
                break
    if root is None:
        root = Path(fallback) if fallback is not None else Path.cwd()
    root = root.resolve()
    return str(root.parent if root.name == "configs" else root)


def body_mask(image: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """The body for ``CropForegroundd``: voxels above ``threshold`` of an image scaled to [0, 1].

    A volume with nothing above it (blank or constant) keeps its whole extent instead of being
    cropped to an empty array.
    """
    mask = image > threshold
    return mask if mask.any() else torch.ones_like(mask)
