"""The bundle in a MONAI Deploy App SDK app: a DICOM series in, DICOM SEG, NIfTI and report out.

Runs in the Deploy env (`.ci/deploy.sh`, which fails when anything here skips); skipped where the
SDK is not installed. The series is the bundle's own sample (`bundle/sample/mr_01_image.nii.gz`)
written as an MR DICOM series at test time, with the two gaps of anonymized series the app's
loader handles: no FrameOfReferenceUID and an empty SeriesNumber. The app runs once (module
fixture) in its own process, as in a MONAI Application Package:
`python -m grata_monai.deploy.app -i <series> -o <out> -m <model.ts>`. The model.ts is exported at
test time from the bundle's model.pt with its configs embedded (the packaged form: a
TorchScriptModel wrapper, configs from extra/), with small adaptation settings.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip(
    "monai.deploy.operators", reason="MONAI Deploy App SDK is not installed (run .ci/deploy.sh)"
)
hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")
nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = Path(os.environ.get("GRATA_BUNDLE_DIR", ROOT / "bundle"))
SAMPLE = BUNDLE_DIR / "sample" / "mr_01_image.nii.gz"
SMALL = {"steps": 2, "patches_per_step": 2, "sw_batch_size": 2}
ORGANS = [
    "liver",
    "right kidney",
    "left kidney",
    "spleen",
]  # the bundle's channel_def, as a DICOM SEG shows it


def write_series(nifti: Path, folder: Path) -> list:
    """Write ``nifti`` as an MR DICOM series in ``folder`` (one file per slice, LPS geometry from the
    NIfTI's RAS affine); the datasets, in slice order."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    image = nib.load(nifti)
    data, ras = np.asarray(image.dataobj).astype(np.int16), image.affine
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    row_dir, col_dir = (
        lps[:3, 0] / np.linalg.norm(lps[:3, 0]),
        lps[:3, 1] / np.linalg.norm(lps[:3, 1]),
    )
    spacing = [
        round(float(np.linalg.norm(lps[:3, c])), 4) for c in (1, 0)
    ]  # between rows, between columns
    study, series = (
        generate_uid(entropy_srcs=["grata-test", name]) for name in ("study", "series")
    )
    folder.mkdir(parents=True)
    datasets = []
    for k in range(data.shape[2]):
        ds = pydicom.Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = MRImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid(
            entropy_srcs=["grata-test", str(k)]
        )
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = (
            "Sample^MR01",
            "mr_01",
            "",
            "O",
        )
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.StudyID, ds.AccessionNumber = (
            study,
            series,
            "1",
            "",
        )
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.Manufacturer = (
            "20240101",
            "120000",
            "",
            "test",
        )
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = (
            "MR",
            "",
            k + 1,
        )  # SeriesNumber empty (Type 2)
        ds.ImageOrientationPatient = [round(float(v), 6) for v in (*row_dir, *col_dir)]
        ds.ImagePositionPatient = [
            round(float(v), 4) for v in (lps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        ]
        ds.PixelSpacing, ds.SliceThickness = spacing, round(float(np.linalg.norm(lps[:3, 2])), 4)
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(
            data[:, :, k].T
        ).tobytes()  # (row, column) = NIfTI (j, i)
        ds.save_as(folder / f"slice_{k:03d}.dcm", enforce_file_format=True)
        datasets.append(ds)
    return datasets


@pytest.fixture(scope="module")
def app_run(tmp_path_factory):
    """Export model.ts (small settings), write the sample as a DICOM series, run the app on it; the
    output folder, the log, the series folder and its datasets."""
    for name in (
        "configs/inference.json",
        "configs/metadata.json",
        "models/model.pt",
        "sample/mr_01_image.nii.gz",
    ):
        if not (BUNDLE_DIR / name).is_file():
            pytest.skip(f"bundle file {BUNDLE_DIR / name} not found (set GRATA_BUNDLE_DIR)")
    tmp = tmp_path_factory.mktemp("deploy")
    series = tmp / "series"
    datasets = write_series(SAMPLE, series)
    config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())
    config["inferer"].update(SMALL)
    (tmp / "inference.json").write_text(json.dumps(config, indent=2))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    export = [
        sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def",
        "--filepath", str(tmp / "model.ts"),
        "--ckpt_file", str(BUNDLE_DIR / "models" / "model.pt"),
        "--meta_file", str(BUNDLE_DIR / "configs" / "metadata.json"),
        "--config_file", str(tmp / "inference.json"),
        "--bundle_root", str(BUNDLE_DIR),
    ]  # fmt: skip
    done = subprocess.run(export, cwd=tmp, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    out = tmp / "output"
    done = _run_app(series, out, tmp / "model.ts")
    log = done.stderr + done.stdout  # the summary, printed last, ends stdout
    assert done.returncode == 0, log[-6000:]
    return out, log, series, datasets


def _run_app(series: Path, out: Path, model: Path) -> subprocess.CompletedProcess:
    app = f"{sys.executable} -m grata_monai.deploy.app -i {series} -o {out} -m {model}"
    run = f"ulimit -s 32768 2>/dev/null; exec {app}"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        ["bash", "-c", run], cwd=out.parent, env=env, capture_output=True, text=True, timeout=900
    )


def _seg(out: Path):
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 1, f"expected one DICOM SEG in {out}, found {[f.name for f in files]}"
    return files[0]


def test_app_writes_dicom_seg_nifti_and_report_and_says_so(app_run):
    """The app ran end to end with GraTa (SDK operators, model.ts via the TorchScriptModel wrapper): the
    SEG, the NIfTI and the audit report beside them; the last line names all three; no known noise."""
    from grata_monai import __version__, defaults
    from grata_monai.deploy.app import KNOWN_NOISE, REPORT_NAME

    out, log, series, _ = app_run
    seg = _seg(out)
    report = json.loads((out / REPORT_NAME).read_text())
    assert len(report["steps"]) == SMALL["steps"] and all("cosine" in s for s in report["steps"])
    assert report["input"] == str(series) and report["versions"]["grata-monai"] == __version__
    weights = defaults.for_device("cpu")["statistics_candidates"]  # the app runs on the CPU here
    assert set(report["statistics_entropy"]) == {f"{w:g}" for w in weights}
    assert report["source_sha256"]
    last = log.strip().splitlines()[-1]
    assert (
        last.startswith("done in ")
        and f"DICOM SEG {seg}" in last
        and str(out / "seg.nii.gz") in last
    )
    assert f"report {out / REPORT_NAME} ({SMALL['steps']} GraTa step(s), guard " in last
    assert "Traceback" not in log
    for noise in KNOWN_NOISE:
        assert noise not in log, noise


def test_dicom_seg_readable_with_segments_from_channel_def(app_run):
    """pydicom and highdicom read the SEG; its segments are the bundle's channel_def organs, coded."""
    from grata_monai.deploy.segments import SEGMENT_CODES, bundle_metadata, segment_labels

    path = _seg(app_run[0])
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    seg = hd.seg.segread(path)
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels == segment_labels(bundle_metadata(BUNDLE_DIR)) == ORGANS
    for item in seg.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0]
        assert (code.CodeValue, code.CodingSchemeDesignator) == (
            SEGMENT_CODES[item.SegmentLabel].value,
            "SCT",
        )


def test_dicom_seg_geometry_matches_source_series(app_run):
    """Rows/columns, frame count, orientation, spacing, frame positions and references match the series."""
    path = _seg(app_run[0])
    seg = hd.seg.segread(path)
    src = app_run[3]
    first = src[0]
    assert (seg.Rows, seg.Columns) == (first.Rows, first.Columns) == (256, 256)
    assert seg.NumberOfFrames == len(src) * len(ORGANS) == 37 * 4  # BINARY, empty frames kept
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {
        i.ReferencedSOPInstanceUID
        for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    }
    assert referenced == {d.SOPInstanceUID for d in src}

    # The series has no FrameOfReferenceUID: the app derives one from the SeriesInstanceUID.
    assert "FrameOfReferenceUID" not in first
    expected_for = first.get("FrameOfReferenceUID") or pydicom.uid.generate_uid(
        entropy_srcs=["grata-monai", first.SeriesInstanceUID]
    )
    assert seg.FrameOfReferenceUID == expected_for

    shared = seg.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    np.testing.assert_allclose(
        [float(v) for v in orientation], [float(v) for v in first.ImageOrientationPatient]
    )
    measures = shared.PixelMeasuresSequence[0]
    np.testing.assert_allclose(
        [float(v) for v in measures.PixelSpacing], [float(v) for v in first.PixelSpacing]
    )

    positions = {
        tuple(round(float(v), 3) for v in f.PlanePositionSequence[0].ImagePositionPatient)
        for f in seg.PerFrameFunctionalGroupsSequence
    }
    source_positions = {tuple(round(float(v), 3) for v in d.ImagePositionPatient) for d in src}
    assert positions == source_positions


def test_nifti_matches_dicom_seg_and_series(app_run):
    """The NIfTI is on the series' grid (MONAI's own DICOM reading gives the same affine) and holds the
    same label map as the SEG, slice by slice; liver and spleen are found, on the right sides."""
    from monai.transforms import LoadImage, Orientation

    from grata_monai.bundle.dicom import check_series

    out = app_run[0]
    nifti = nib.load(out / "seg.nii.gz")
    labels = np.asarray(nifti.dataobj)
    assert labels.shape == (256, 256, 37)
    assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
    # MONAI's reader stacks the slices in the opposite order: compare both in RAS.
    reference = LoadImage(reader="PydicomReader", image_only=True, affine_lps_to_ras=True)(
        str(app_run[2])
    )
    reference = Orientation("RAS")(reference[None])
    np.testing.assert_allclose(
        nib.as_closest_canonical(nifti).affine, np.asarray(reference.affine), atol=1e-3
    )

    seg = hd.seg.segread(_seg(out))
    src = [pydicom.dcmread(f, stop_before_pixels=True) for f in check_series(app_run[2]).files]
    # Voxel k of the NIfTI is source slice k (sorted along the normal); NIfTI (i, j) is DICOM (column, row).
    for k in (10, 18, 26):
        uid = src[k].SOPInstanceUID
        frames = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid], combine_segments=True, skip_overlap_checks=True
        )[0]
        np.testing.assert_array_equal(frames, labels[:, :, k].T, err_msg=f"slice {k}")

    def centre_x(label: int) -> float:  # RAS x of an organ's centre
        return float((nifti.affine @ np.r_[np.argwhere(labels == label).mean(0), 1.0])[0])

    assert (labels == 1).sum() > 10_000, "no liver found on the abdominal MR"
    assert (labels == 4).sum() > 1_000, "no spleen found on the abdominal MR"
    # RAS+: x grows toward the patient's right, so the liver (right) has a larger x than the spleen (left).
    assert centre_x(1) > centre_x(4), "liver and spleen on the wrong sides: geometry flipped"


def test_package_source_and_packager_cli(tmp_path):
    """The package source (app.py, our entry point; app.yaml; requirements.txt) and the SDK's packager CLI.
    Building the image needs Docker, which is not here."""
    import shutil

    from grata_monai.deploy.app import write_package_source

    folder = write_package_source(tmp_path / "map")
    assert {p.name for p in folder.iterdir()} == {"app.py", "app.yaml", "requirements.txt"}
    compile((folder / "app.py").read_text(), "app.py", "exec")
    requirements = (folder / "requirements.txt").read_text()
    assert "monai-deploy-app-sdk==4.0.0" in requirements and "highdicom" in requirements
    # SDK 4.0 ships no `monai-deploy` command any more: its packager is holoscan-cli's `holoscan package`.
    cli = shutil.which("holoscan") or str(Path(sys.executable).with_name("holoscan"))
    done = subprocess.run(
        ["bash", "-c", f"ulimit -s 32768 2>/dev/null; {cli} package --help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "--no-docker-build" in done.stdout, (
        done.stdout[-2000:] + done.stderr[-2000:]
    )


def test_thin_series_is_refused_with_the_bundle_runs_reason(app_run, tmp_path):
    """A 4-slice (31 mm) slab of the sample as a DICOM series: the app ends with `error: <reason>` (exit
    status 1), the reason the bundle's own run gives for the same slab as NIfTI; nothing is written."""
    from monai.bundle import ConfigParser

    from grata_monai.bundle.intake import Intake

    image = nib.load(SAMPLE)
    slab = tmp_path / "slab.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, 16:20], image.affine), str(slab))
    write_series(slab, tmp_path / "series")
    config = ConfigParser()
    config.read_config(str(BUNDLE_DIR / "configs" / "inference.json"))
    intake = Intake(
        [{"image": str(slab)}, {"image": str(SAMPLE)}],
        check=config.get_parsed_content("input_check"),
    )
    reason = dict(intake.failed)[str(slab)]
    assert reason.startswith("too thin: 31 mm along S")

    done = _run_app(tmp_path / "series", tmp_path / "out", app_run[0].parent / "model.ts")
    assert done.returncode == 1, (done.stdout + done.stderr)[-3000:]
    assert done.stderr.strip().splitlines()[-1] == f"error: {reason}"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir()), (
        "nothing is written"
    )
