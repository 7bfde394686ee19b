"""DICOM input for the bundle: series checks (grata_monai.bundle.dicom) and reading real series, JPEG 2000 included.

Broken folders (missing slices, mixed series, duplicates) are built at test time in a temporary
folder from copies of real files; nothing is written next to the data.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from grata_monai.bundle.dicom import CheckDicomSeriesd, DicomSeriesError, check_item, check_series
from tests.conftest import BUNDLE_DIR, DATA_DIR

IRCAD = DATA_DIR / "ircad01" / "PATIENT_DICOM"
JPEG2000 = DATA_DIR / "dicom-samples" / "totalseg_ct_jpeg2000"


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(
            f"real DICOM series not found at {path} (set GRATA_DATA_DIR to the folder holding ircad01/, dicom-samples/)"
        )
    return path


def _sorted_files(folder: Path) -> list[Path]:
    return list(check_series(folder).files)


def _copy(files, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(files):
        shutil.copyfile(f, dest / f"{i:03d}_{f.name}")
    return dest


@pytest.mark.realdata
def test_real_series_pass():
    info = check_series(_need(IRCAD))
    assert len(info.files) == 129 and info.spacing == pytest.approx(1.6, abs=1e-3)
    info = check_series(_need(JPEG2000))
    assert len(info.files) == 20 and info.spacing == pytest.approx(2.0, abs=1e-3)


@pytest.mark.realdata
def test_missing_slices_named(tmp_path):
    files = _sorted_files(_need(JPEG2000))
    folder = _copy(files[:8] + files[10:], tmp_path / "gappy")
    with pytest.raises(DicomSeriesError, match="missing slices") as err:
        check_series(folder)
    assert str(folder) in str(err.value) and "about 2 slice(s) missing" in str(err.value)


@pytest.mark.realdata
def test_mixed_series_named(tmp_path):
    ct = _sorted_files(_need(IRCAD))[:5]
    j2k = _sorted_files(_need(JPEG2000))[:3]
    folder = _copy(ct + j2k, tmp_path / "mixed")
    with pytest.raises(DicomSeriesError, match="mixes 2 DICOM series") as err:
        check_series(folder)
    message = str(err.value)
    assert str(folder) in message and "5 files" in message and "3 files" in message


@pytest.mark.realdata
def test_duplicate_slices_named(tmp_path):
    files = _sorted_files(_need(JPEG2000))[:6]
    folder = _copy(files + files[2:3], tmp_path / "dup")
    with pytest.raises(DicomSeriesError, match="duplicate") as err:
        check_series(folder)
    assert str(folder) in str(err.value)


def test_no_dicom_and_missing_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    with pytest.raises(DicomSeriesError, match="no DICOM file"):
        check_series(tmp_path)
    with pytest.raises(DicomSeriesError, match="does not exist"):
        check_series(tmp_path / "absent")


@pytest.mark.realdata
def test_non_dicom_files_ignored(tmp_path):
    folder = _copy(_sorted_files(_need(JPEG2000))[:4], tmp_path / "with_extra")
    (folder / "README.txt").write_text("exported by ...")
    assert len(check_series(folder).files) == 4


def test_transform_passes_non_folders(tmp_path):
    nifti = tmp_path / "x.nii.gz"
    nifti.write_bytes(b"")
    t = CheckDicomSeriesd(keys="image")
    tensor = torch.zeros(1, 4, 4, 4)
    assert t({"image": str(nifti)})["image"] == str(nifti)
    assert t({"image": tensor})["image"] is tensor
    assert check_item({"image": np.zeros(3)})["image"].shape == (3,)
    with pytest.raises(DicomSeriesError, match="no DICOM file"):
        t({"image": str(tmp_path)})


@pytest.mark.realdata
def test_jpeg2000_series_decodes_with_pydicom():
    """The JPEG 2000 (lossless) series reads with MONAI's pydicom reader; values are real HU.

    pydicom needs a JPEG 2000 decoder plugin: pylibjpeg + pylibjpeg-openjpeg (the `dicom` extra,
    installed in the Deploy env), or Pillow built with OpenJPEG.
    """
    from monai.transforms import LoadImage, Orientation

    def load(reader: str) -> torch.Tensor:
        image = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)(
            str(_need(JPEG2000))
        )
        return Orientation("RAS")(image)  # the readers stack the slices in opposite orders

    image = load("PydicomReader")
    assert tuple(image.shape) == (1, 512, 512, 20)
    assert float(image.min()) <= -1000 + 50 and float(image.max()) > 500, (
        "not HU: decoding or rescale failed"
    )
    pytest.importorskip("itk", reason="ITK not installed: the ITK comparison runs in the core env")
    reference = load("ITKReader")
    assert torch.allclose(image.affine, reference.affine), "readers agree on the geometry"
    assert torch.equal(image.as_tensor().float(), reference.as_tensor().float()), (
        "lossless: readers agree on every voxel"
    )


@pytest.mark.realdata
def test_pydicom_decoder_plugin_available():
    """Which pydicom plugin decodes JPEG 2000 here (fails with the install hint when none does)."""
    import pydicom

    ds = pydicom.dcmread(_sorted_files(_need(JPEG2000))[0])
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    try:
        pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001
        pytest.fail(
            f"pydicom cannot decode JPEG 2000: {e}. Install `pip install pylibjpeg pylibjpeg-openjpeg`."
        )
    assert pixels.shape == (512, 512)


def _bundle_preprocessing():
    from monai.bundle import ConfigParser

    config = BUNDLE_DIR / "configs" / "inference.json"
    if not config.is_file():
        pytest.skip(f"bundle config {config} not found (set GRATA_BUNDLE_DIR or build the bundle)")
    parser = ConfigParser()
    parser.read_config(str(config))
    parser["bundle_root"] = str(BUNDLE_DIR)
    # The 20-slice JPEG 2000 sample (40 mm) is too thin for the model; these tests are about reading it.
    parser["input_check"]["min_fraction"] = 0.0
    return parser.get_parsed_content("preprocessing")


@pytest.mark.realdata
@pytest.mark.parametrize("series", [IRCAD, JPEG2000], ids=["ircad01", "jpeg2000"])
def test_bundle_preprocessing_reads_dicom_folder(series):
    """The bundle's own inference preprocessing takes a DICOM series folder as `image`."""
    pre = _bundle_preprocessing()
    out = pre({"image": str(_need(series))})
    image = out["image"]
    assert image.shape[0] == 1 and image.ndim == 4
    assert torch.isfinite(torch.as_tensor(image)).all()
    assert float(torch.as_tensor(image).max()) > float(torch.as_tensor(image).min())


@pytest.mark.realdata
def test_bundle_preprocessing_refuses_broken_folder(tmp_path):
    """The bundle's preprocessing names the folder when slices are missing (when it runs the check)."""
    pre = _bundle_preprocessing()
    if not any(isinstance(t, CheckDicomSeriesd) for t in getattr(pre, "transforms", [])):
        pytest.skip("bundle preprocessing does not run grata_monai.bundle.dicom.CheckDicomSeriesd")
    files = _sorted_files(_need(JPEG2000))
    folder = _copy(files[:5] + files[7:], tmp_path / "gappy")
    with pytest.raises(
        Exception
    ) as err:  # MONAI wraps it: "applying transform ...", caused by ours
        pre({"image": str(folder)})
    cause = err.value
    while cause is not None and not isinstance(cause, DicomSeriesError):
        cause = cause.__cause__
    assert cause is not None, f"no DicomSeriesError in the chain of {err.value!r}"
    assert "missing slices" in str(cause) and str(folder) in str(cause)
