"""DICOM series checks for the bundle's input.

MONAI's readers load a folder of DICOM files as one volume without asking whether it is one:
ITK silently takes the first series of a mixed folder, pydicom stacks whatever it finds, and
both close a gap left by missing slices, which shifts every slice after it in world space.
`check_series` reads the headers only and refuses such a folder with a message that names it;
`CheckDicomSeriesd` runs that check on each item of the bundle's datalist (folders only, so
NIfTI paths and in-memory images of MONAI Label and MONAI Deploy pass through untouched).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from monai.transforms import MapTransform

__all__ = ["DicomSeriesError", "SeriesInfo", "check_series", "check_item", "CheckDicomSeriesd"]


class DicomSeriesError(ValueError):
    """A DICOM folder that is not exactly one complete series."""


@dataclass(frozen=True)
class SeriesInfo:
    """What `check_series` found in a valid folder.

    Args:
        folder: the series folder.
        series_uid: its SeriesInstanceUID.
        files: its DICOM files, sorted along the slice normal (or by InstanceNumber).
        spacing: the slice spacing in mm (None with a single slice or without positions).
    """

    folder: Path
    series_uid: str
    files: tuple[Path, ...]
    spacing: float | None


def _read_header(path: Path):
    """The header of a DICOM file, or None when the file is not DICOM."""
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, EOFError, ValueError):
        return None


def _normal(ds) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    row, col = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    n = np.cross(row, col)
    norm = np.linalg.norm(n)
    return n / norm if norm > 0 else None


def check_series(folder: str | os.PathLike, gap_tolerance: float = 0.5) -> SeriesInfo:
    """Check that ``folder`` holds exactly one complete DICOM series.

    Reads headers only (no pixel data). Files that are not DICOM are ignored. The slices must
    share one SeriesInstanceUID, one orientation and one image size, and their positions along
    the slice normal must be evenly spaced: a step larger than ``1 + gap_tolerance`` times the
    median step means missing slices; two slices at one position mean duplicates. Without
    ImagePositionPatient, InstanceNumber must run without gaps instead.

    Args:
        folder: the series folder.
        gap_tolerance: allowed relative deviation of a slice step from the median step.

    Returns:
        a `SeriesInfo` with the files sorted along the slice normal.

    Raises:
        DicomSeriesError: the folder is missing, holds no DICOM file, holds several series,
            mixes orientations or image sizes, or has missing or duplicate slices; the message
            names the folder and says what to do.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DicomSeriesError(f"DICOM series folder '{root}' does not exist or is not a folder.")
    headers = []
    for path in sorted(p for p in root.iterdir() if p.is_file()):
        ds = _read_header(path)
        if ds is not None and "SOPInstanceUID" in ds:
            headers.append((path, ds))
    if not headers:
        raise DicomSeriesError(
            f"no DICOM file in '{root}': expected one DICOM series (one file per slice)."
        )

    series: dict[str, list] = {}
    for path, ds in headers:
        series.setdefault(str(ds.get("SeriesInstanceUID", "<none>")), []).append((path, ds))
    if len(series) > 1:
        lines = [
            f"  {uid}: {len(items)} files, '{items[0][1].get('SeriesDescription', '')}' "
            f"(e.g. {items[0][0].name})"
            for uid, items in sorted(series.items(), key=lambda kv: -len(kv[1]))
        ]
        raise DicomSeriesError(
            f"'{root}' mixes {len(series)} DICOM series; put each series in its own folder "
            "(one volume per folder):\n" + "\n".join(lines)
        )
    ((uid, items),) = series.items()

    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in items}
    if len(sizes) > 1:
        raise DicomSeriesError(
            f"'{root}': slices of series {uid} have different image sizes {sorted(sizes)}."
        )
    normals = [_normal(ds) for _, ds in items]
    has_geometry = all(n is not None for n in normals) and all(
        "ImagePositionPatient" in ds for _, ds in items
    )
    if has_geometry:
        if any(abs(float(np.dot(n, normals[0]))) < 0.999 for n in normals):
            raise DicomSeriesError(f"'{root}': slices of series {uid} have different orientations.")
        where = np.array(
            [
                float(np.dot(np.asarray(ds.ImagePositionPatient, float), normals[0]))
                for _, ds in items
            ]
        )
        label = "position along the slice normal (mm)"
    else:
        if not all("InstanceNumber" in ds for _, ds in items):
            raise DicomSeriesError(
                f"'{root}': slices of series {uid} have neither ImagePositionPatient/ImageOrientationPatient "
                "nor InstanceNumber, so their order cannot be checked."
            )
        where = np.array([float(ds.InstanceNumber) for _, ds in items])
        label = "InstanceNumber"
    order = np.argsort(where, kind="stable")
    where, files = where[order], tuple(items[i][0] for i in order)
    if len(files) < 2:
        return SeriesInfo(root, uid, files, None)

    steps = np.diff(where)
    duplicate = np.flatnonzero(steps <= 1e-3 * max(float(np.median(np.abs(steps))), 1e-6))
    if duplicate.size:
        i = int(duplicate[0])
        raise DicomSeriesError(
            f"'{root}': series {uid} has {duplicate.size} duplicate slice(s) ({files[i].name} and "
            f"{files[i + 1].name} at {label} {where[i]:g}); remove the duplicates."
        )
    step = float(np.median(steps)) if has_geometry else 1.0
    gaps = np.flatnonzero(np.abs(steps - step) > gap_tolerance * step)
    if gaps.size:
        missing = int(sum(max(round(steps[i] / step) - 1, 0) for i in gaps))
        where_gaps = ", ".join(f"{where[i]:g}..{where[i + 1]:g}" for i in gaps[:5])
        raise DicomSeriesError(
            f"'{root}': series {uid} has missing slices: {len(files)} slices with step {step:g}, "
            f"but {gaps.size} gap(s) at {label} {where_gaps} (about {missing} slice(s) missing). "
            "Export the complete series again."
        )
    return SeriesInfo(root, uid, files, step if has_geometry else None)


def check_item(item: Mapping, key: str = "image") -> Mapping:
    """Check ``item[key]`` with `check_series` when it is a folder; return the item unchanged.

    For bundle configs, e.g. ``"$[grata_monai.bundle.dicom.check_item(i) for i in @datalist]"``.
    """
    value = item.get(key)
    if isinstance(value, (str, os.PathLike)) and Path(value).is_dir():
        check_series(value)
    return item


class CheckDicomSeriesd(MapTransform):
    """Run `check_series` on each ``keys`` value that is a folder path; pass everything else.

    Put it before ``LoadImaged`` in a bundle's preprocessing. MONAI Label hands its own loader a
    file path and MONAI Deploy an in-memory image: neither is a folder, so both pass through.

    Args:
        keys: keys of the image paths.
        allow_missing_keys: do not fail when a key is absent.
    """

    def __init__(
        self, keys: Hashable | Sequence[Hashable], allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            check_item(d, key)
        return d
