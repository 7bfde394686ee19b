"""Input discovery, output paths and policy, and config helpers of grata_monai.bundle.io."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from grata_monai.bundle.console import RunStopped
from grata_monai.bundle.io import (
    as_bool,
    body_mask,
    bundle_file,
    check_no_overwrite,
    list_ignored,
    list_volumes,
    load_datalist,
    output_path,
)
from tests.conftest import DATA_DIR


def _nifti(path: Path) -> None:
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(path))


def _dicom_series(folder: Path, n: int = 2) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{i}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = (
            meta.MediaStorageSOPClassUID,
            meta.MediaStorageSOPInstanceUID,
        )
        ds.save_as(str(folder / f"IM{i}"), enforce_file_format=True)


def test_list_volumes_nifti_and_dicom(tmp_path):
    _nifti(tmp_path / "b.nii.gz")
    _nifti(tmp_path / "a.nii")
    (tmp_path / "notes.txt").write_text("x")
    _dicom_series(tmp_path / "series1")
    (tmp_path / "empty").mkdir()
    items = list_volumes(tmp_path)
    assert [Path(d["image"]).name for d in items] == ["a.nii", "b.nii.gz", "series1"]


def test_list_ignored_names_what_is_not_a_volume(tmp_path):
    _nifti(tmp_path / "a.nii")
    _nifti(tmp_path / "a_label.nii")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "README.md").write_text("x")
    (tmp_path / ".hidden").write_text("x")
    (tmp_path / "empty").mkdir()
    _dicom_series(tmp_path / "series1")
    _dicom_series(tmp_path / "loose")
    (tmp_path / "loose" / "IM0").rename(tmp_path / "IM0")
    ignored = dict(list_ignored(tmp_path, exclude=["*_label.nii*"]))
    assert sorted(Path(p).name for p in ignored) == ["IM0", "empty", "notes.txt"]
    assert "not a NIfTI file" in ignored[str(tmp_path / "notes.txt")]
    assert "DICOM file outside a series folder" in ignored[str(tmp_path / "IM0")]
    assert "folder without DICOM files" in ignored[str(tmp_path / "empty")]
    assert list_ignored(tmp_path / "series1") == []  # the folder is the series


def test_list_volumes_folder_is_one_dicom_series(tmp_path):
    _dicom_series(tmp_path / "s")
    assert list_volumes(tmp_path / "s") == [{"image": str(tmp_path / "s")}]


def test_list_volumes_real_dicom_without_extension():
    series = DATA_DIR / "ircad01" / "PATIENT_DICOM"
    if not series.is_dir():
        pytest.skip(f"real DICOM series not found at {series} (set GRATA_DATA_DIR)")
    assert list_volumes(series.parent) == [{"image": str(series)}]


def test_list_volumes_errors_say_what_was_looked_for(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"\*\.nii\.gz.*DICOM") as error:
        list_volumes(tmp_path)
    assert isinstance(error.value, RunStopped)  # a bundle run ends with the message alone
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_volumes(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="not a NIfTI file"):
        list_volumes(tmp_path / "notes.txt")


def test_list_volumes_takes_one_nifti_file(tmp_path):
    _nifti(tmp_path / "a_label.nii.gz")
    _nifti(tmp_path / "b.nii")
    assert list_volumes(tmp_path / "a_label.nii.gz", exclude=["*_label.nii*"]) == [
        {"image": str(tmp_path / "a_label.nii.gz")}
    ]  # named on purpose: exclude is for scanning folders
    assert list_ignored(tmp_path / "b.nii") == []


def test_output_path_and_no_overwrite(tmp_path):
    items = [{"image": "/data/mr_01_image.nii.gz"}, {"image": "/data/series7/"}]
    assert output_path(items[0]["image"], str(tmp_path), "seg") == str(
        tmp_path / "mr_01_image_seg.nii.gz"
    )
    assert output_path(items[1]["image"], str(tmp_path), "seg") == str(
        tmp_path / "series7_seg.nii.gz"
    )
    assert check_no_overwrite(items, str(tmp_path), "seg") is items
    (tmp_path / "series7_seg.nii.gz").write_bytes(b"")
    with pytest.raises(FileExistsError, match="--overwrite true") as error:
        check_no_overwrite(items, str(tmp_path), "seg")
    assert isinstance(error.value, RunStopped)
    with pytest.raises(FileExistsError):
        check_no_overwrite(items, str(tmp_path), "seg", overwrite="false")
    assert check_no_overwrite(items, str(tmp_path), "seg", overwrite="true") is items


@pytest.mark.parametrize(
    "value,expected", [(True, True), ("false", False), ("True", True), ("0", False), (1, True)]
)
def test_as_bool(value, expected):
    assert as_bool(value) is expected


def test_as_bool_rejects_other_strings():
    with pytest.raises(ValueError, match="--overwrite expects a boolean") as error:
        as_bool("maybe", "overwrite")
    assert isinstance(error.value, RunStopped)


def test_bundle_file_says_to_pass_bundle_root(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"")
    assert bundle_file(tmp_path, "models/model.pt") == str(tmp_path / "models" / "model.pt")
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        bundle_file(tmp_path / "elsewhere", "models/model.pt")


def test_output_path_is_save_imageds(tmp_path):
    """The name MONAI's SaveImaged writes (its FolderLayout), e.g. a dotted series folder name."""
    from monai.data import MetaTensor
    from monai.transforms import SaveImage

    image = MetaTensor(np.zeros((1, 4, 4, 4), np.float32), meta={"filename_or_obj": "/d/s.1.2"})
    SaveImage(
        output_dir=str(tmp_path), output_postfix="seg", separate_folder=False, print_log=False
    )(image)
    assert [p.name for p in tmp_path.iterdir()] == [
        Path(output_path("/d/s.1.2", str(tmp_path), "seg")).name
    ]
    SaveImage(output_dir=str(tmp_path / "sep"), output_postfix="seg", print_log=False)(
        image
    )  # separate_folder
    written = [p for p in (tmp_path / "sep").rglob("*") if p.is_file()]
    assert written == [
        Path(output_path("/d/s.1.2", str(tmp_path / "sep"), "seg", separate_folder=True))
    ]


def test_list_volumes_excludes_label_maps_beside_the_images(tmp_path):
    for name in ("a_image.nii.gz", "a_label.nii.gz", "b.nii", "b_seg.nii.gz"):
        (tmp_path / name).write_bytes(b"")
    items = list_volumes(tmp_path, exclude=["*_label.nii*", "*_seg.nii*"])
    assert [Path(i["image"]).name for i in items] == ["a_image.nii.gz", "b.nii"]
    assert len(list_volumes(tmp_path)) == 4


def test_body_mask_keeps_a_blank_volume_whole():
    import torch

    image = torch.zeros(1, 4, 4, 4)
    assert body_mask(image).all()
    image[0, 1, 1, 1] = 1.0
    assert body_mask(image).sum() == 1


def test_load_datalist_stops_with_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --dataset_dir") as error:
        load_datalist(tmp_path / "datalist.json", "mr_test", tmp_path)
    assert isinstance(error.value, RunStopped)
    (tmp_path / "datalist.json").write_text('{"mr_test": [{"image": "a.nii.gz"}], "ct_val": []}')
    assert load_datalist(tmp_path / "datalist.json", "mr_test", tmp_path) == [
        {"image": str(tmp_path / "a.nii.gz")}
    ]
    with pytest.raises(ValueError, match=r"no split 'mr_dev' \(it has: ct_val, mr_test\)"):
        load_datalist(tmp_path / "datalist.json", "mr_dev", tmp_path)
