"""What a DICOM SEG needs to know about the bundle, without the MONAI Deploy App SDK: its metadata
(from a bundle folder or an exported ``model.ts``), the segment labels and their SNOMED CT codes."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from grata_monai.defaults import ORGANS

__all__ = ["CATEGORY", "SEGMENT_CODES", "bundle_metadata", "segment_labels"]

# The segments' category (DICOM CID 7150) and type (CID 7140) for the bundle's organs.
CATEGORY = Code("123037004", "SCT", "Anatomical Structure")
SEGMENT_CODES: dict[str, Code] = dict(
    zip(
        ORGANS,
        (
            codes.SCT.Liver,
            Code(
                "9846003", "SCT", "Right kidney"
            ),  # sided kidneys are not in pydicom's code dictionary
            Code("18639004", "SCT", "Left kidney"),
            codes.SCT.Spleen,
        ),
    )
)


def bundle_metadata(model_path: str | os.PathLike) -> dict:
    """The bundle's ``metadata.json`` from a bundle folder, a folder holding ``model.ts``, or a TorchScript file.

    Args:
        model_path: bundle folder (``configs/metadata.json``), a folder holding ``model.ts`` one or
            two levels down (a MAP's model folder), or a ``model.ts`` exported with
            ``monai.bundle ckpt_export`` (``extra/metadata.json`` inside).

    Raises:
        FileNotFoundError: no metadata found; the message says where it looked.
    """
    path = Path(model_path).expanduser()
    for candidate in (
        path / "configs" / "metadata.json",
        path.parent / "configs" / "metadata.json",
    ):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    ts_files = (
        [path]
        if path.is_file()
        else [p for pattern in ("*.ts", "*/*.ts") for p in sorted(path.glob(pattern))]
    )
    for ts in ts_files:
        if zipfile.is_zipfile(ts):
            with zipfile.ZipFile(ts) as z:
                names = [n for n in z.namelist() if n.endswith("extra/metadata.json")]
                if names:
                    return json.loads(z.read(names[0]))
    raise FileNotFoundError(
        f"no bundle metadata at '{path}': expected a bundle folder with configs/metadata.json or a "
        "model.ts exported with `python -m monai.bundle ckpt_export` (it embeds extra/metadata.json)."
    )


def segment_labels(metadata: dict) -> list[str]:
    """Segment names 1..N from the first output's ``channel_def`` (channel 0, the background, left out)."""
    outputs = metadata["network_data_format"]["outputs"]
    channel_def = next(iter(outputs.values()))["channel_def"]
    return [channel_def[k] for k in sorted(channel_def, key=int) if int(k) > 0]
