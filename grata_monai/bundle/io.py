"""Input discovery and output paths for the bundle configs.

`list_volumes` turns a folder (or one NIfTI file) into MONAI datalist items, `load_datalist` reads a
labelled one (evaluation, training), (NIfTI files and DICOM series
folders) and `list_ignored` names what else is in it; `output_path` is the file MONAI's
``SaveImaged`` writes for an input (its
``FolderLayout``); `check_no_overwrite` enforces the bundle's output policy; `body_mask` is the
body for ``CropForegroundd``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from monai.data import FolderLayout, load_decathlon_datalist
from pydicom.misc import is_dicom

from grata_monai.bundle.console import BadSetting, NotFound, OutputsExist

__all__ = [
    "NIFTI_SUFFIXES",
    "NOT_INPUTS",
    "as_bool",
    "bundle_file",
    "list_volumes",
    "list_ignored",
    "load_datalist",
    "output_path",
    "check_no_overwrite",
    "body_mask",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NOT_INPUTS = ("README*", "LICENSE*")  # documentation that travels with data sets: never an input


def as_bool(value: bool | int | str, name: str = "flag") -> bool:
    """Read a command-line switch: ``monai.bundle run --flag false`` passes the string 'false'.

    Args:
        value: the setting.
        name: its config id, for the error message.

    Raises:
        BadSetting: (a ``ValueError``) the value is not a recognisable boolean.
    """
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("true", "1", "yes", "y", "on"):
            return True
        if v in ("false", "0", "no", "n", "off", ""):
            return False
        raise BadSetting(f"--{name} expects a boolean (true or false), got '{value}'.")
    return bool(value)


def bundle_file(bundle_root: str | os.PathLike, relative: str) -> str:
    """``<bundle_root>/<relative>``, which must exist: a config's ``bundle_root`` is the working
    directory (``"."``, the model-zoo convention) unless ``--bundle_root`` says otherwise.

    Raises:
        NotFound: (a ``FileNotFoundError``) the file is not there; the message says to pass
            ``--bundle_root``.
    """
    path = Path(bundle_root) / relative
    if not path.is_file():
        raise NotFound(
            f"'{path}' not found (bundle_root is '{Path(bundle_root).resolve()}'): run from the bundle folder "
            "or pass --bundle_root <bundle folder>, e.g. --bundle_root bundle from the repository root."
        )
    return str(path)


def _is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES)


def _is_dicom_series(path: Path) -> bool:
    if not path.is_dir():
        return False
    files = sorted(p for p in path.iterdir() if p.is_file())
    return any(is_dicom(p) for p in files[:8])  # 'DICM' at byte 128, whatever the extension


def list_volumes(
    dataset_dir: str | os.PathLike, key: str = "image", exclude: Sequence[str] = ()
) -> list[dict[str, str]]:
    """List the volumes in a folder, or one NIfTI file, as datalist items ``{key: path}``.

    A volume is a NIfTI file (``*.nii``, ``*.nii.gz``) directly in ``dataset_dir``, or a
    DICOM series: a sub-folder whose files are DICOM (any extension), or ``dataset_dir``
    itself when it holds DICOM files and no NIfTI. Items are sorted by path. A ``dataset_dir``
    that names one NIfTI file is that volume alone (``exclude`` does not apply to it).

    Args:
        dataset_dir: folder to scan, or one NIfTI file.
        key: datalist key of the image path.
        exclude: file-name patterns (``fnmatch``) to skip, e.g. label maps stored beside the
            images (``*_label.nii.gz``) or earlier outputs (``*_seg.nii.gz``).

    Raises:
        NotFound: (a ``FileNotFoundError``) the path does not exist, is a file other than NIfTI,
            or is a folder that holds no volume; the message says what was looked for.
    """
    root = Path(dataset_dir).expanduser()
    if _is_nifti(root):
        return [{key: str(root)}]
    if root.is_file():
        what = (
            "a single DICOM file: pass its series folder" if is_dicom(root) else "not a NIfTI file"
        )
        raise NotFound(
            f"dataset_dir '{root}' is {what} (--dataset_dir takes a NIfTI file (*.nii, *.nii.gz), "
            "a DICOM series folder, or a folder of those)."
        )
    if not root.is_dir():
        raise NotFound(
            f"dataset_dir '{root}' does not exist: pass --dataset_dir <NIfTI file, DICOM series folder, or "
            "folder of NIfTI files (*.nii, *.nii.gz) and DICOM series folders>."
        )
    entries = sorted(
        p for p in root.iterdir() if not any(fnmatch.fnmatch(p.name, x) for x in exclude)
    )
    items = [str(p) for p in entries if _is_nifti(p)]
    items += [str(p) for p in entries if _is_dicom_series(p)]
    if not items and _is_dicom_series(root):
        items = [str(root)]
    if not items:
        raise NotFound(
            f"no input volume found in '{root}': looked for NIfTI files (*.nii, *.nii.gz) in it, "
            "DICOM series in its sub-folders (files with 'DICM' at byte 128), or DICOM files in "
            "the folder itself."
        )
    return [{key: p} for p in items]


def list_ignored(
    dataset_dir: str | os.PathLike, exclude: Sequence[str] = ()
) -> list[tuple[str, str]]:
    """What in ``dataset_dir`` is not a volume, as ``(path, reason)``: the inputs a run skips.

    Not listed: the volumes `list_volumes` finds, names matching ``exclude`` or `NOT_INPUTS`,
    hidden files, and anything inside a folder that is itself one DICOM series.

    Args:
        dataset_dir: the folder `list_volumes` scans (a file: nothing is ignored).
        exclude: the same patterns as for `list_volumes`.
    """
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        return []
    if _is_dicom_series(root) and not any(
        _is_nifti(p) or _is_dicom_series(p) for p in root.iterdir()
    ):
        return []  # the folder is the series
    patterns = (*exclude, *NOT_INPUTS)
    ignored = []
    for p in sorted(root.iterdir()):
        if p.name.startswith(".") or any(fnmatch.fnmatch(p.name, x) for x in patterns):
            continue
        if p.is_dir() and not _is_dicom_series(p):
            ignored.append(
                (
                    str(p),
                    "a folder without DICOM files (a series folder holds one DICOM file per slice)",
                )
            )
        elif p.is_file() and not _is_nifti(p):
            what = (
                "a DICOM file outside a series folder"
                if is_dicom(p)
                else "not a NIfTI file (*.nii, *.nii.gz)"
            )
            ignored.append(
                (
                    str(p),
                    f"{what}; put DICOM series in sub-folders, or pass --exclude to leave it out",
                )
            )
    return ignored


def load_datalist(
    datalist_file: str | os.PathLike, key: str, base_dir: str | os.PathLike
) -> list[dict]:
    """MONAI's ``load_decathlon_datalist`` for a config, with a one-line stop when the file or key is missing.

    Args:
        datalist_file: the JSON datalist (``<dataset_dir>/datalist.json`` in the configs).
        key: the split to read, e.g. ``mr_test``.
        base_dir: folder the datalist's relative paths start from.

    Raises:
        NotFound: (a ``FileNotFoundError``) no datalist file; the message says what to pass.
        BadSetting: (a ``ValueError``) the file has no split ``key``; the message lists those it has.
    """
    path = Path(datalist_file)
    if not path.is_file():
        raise NotFound(
            f"no datalist at '{path}': pass --dataset_dir <folder holding datalist.json and the labelled images> "
            "(to segment unlabelled volumes use configs/inference.json)."
        )
    splits = json.loads(path.read_text())
    if key not in splits:
        raise BadSetting(
            f"datalist '{path}' has no split '{key}' (it has: {', '.join(sorted(splits))})."
        )
    return load_decathlon_datalist(path, data_list_key=key, base_dir=base_dir)


def output_path(
    input_path: str,
    output_dir: str,
    postfix: str,
    ext: str = ".nii.gz",
    separate_folder: bool = False,
) -> str:
    """The file ``SaveImaged(output_postfix=postfix, separate_folder=separate_folder)`` writes for an
    input (MONAI's ``FolderLayout``; a series folder is named by its last path component)."""
    layout = FolderLayout(
        output_dir, postfix=postfix, extension=ext, parent=separate_folder, makedirs=False
    )
    return str(layout.filename(subject=str(input_path).rstrip("/\\")))


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
        OutputsExist: (a ``FileExistsError``) an output exists and ``overwrite`` is false.
    """
    if not as_bool(overwrite, "overwrite"):
        existing = [
            p
            for p in (output_path(d[key], output_dir, postfix, ext) for d in items)
            if os.path.exists(p)
        ]
        if existing:
            raise OutputsExist(
                f"{len(existing)} output(s) already exist, e.g. '{existing[0]}': choose another "
                "--output_dir, remove them, or pass --overwrite true."
            )
    return items


def body_mask(image: torch.Tensor, threshold: float = 0.05) -> torch.Tensor:
    """The body for ``CropForegroundd``: voxels above ``threshold`` of an image scaled to [0, 1].

    A volume with nothing above it (blank or constant) keeps its whole extent instead of being
    cropped to an empty array.
    """
    mask = image > threshold
    return mask if mask.any() else torch.ones_like(mask)
