"""A MONAI Deploy App SDK app: a DICOM series in, GraTa-adapted segmentation out as DICOM SEG and NIfTI.

The pipeline is the SDK's own operators::

    DICOMDataLoaderOperator -> DICOMSeriesSelectorOperator -> DICOMSeriesToVolumeOperator
        -> MonaiBundleInferenceOperator (the bundle's inference.json, whose inferer is GraTaInferer)
        -> DICOMSegmentationWriterOperator (highdicom)  and  NiftiWriterOperator (this module)

The bundle operator (:class:`GraTaBundleOperator`) also writes the volume's audit report (GraTa's
steps, cosine, guard verdict, domain distance, ...) as ``seg_report.json`` beside the SEG; the run
ends with one summary line naming the SEG, the NIfTI and the report. Known noise of a CPU run (the
SDK's nvImageCodec notice, Holoscan's CUDA-driver warning and its closing "deadlock" line, which
is how its scheduler reports a finished graph) is filtered.

Run it on a folder of DICOM files with the bundle's TorchScript model (configs embedded)::

    python -m grata_monai.deploy.app -i /path/to/dicom -o ./output -m bundle/models/model.ts

``-m`` may also be the bundle folder. In a MONAI Application Package the same entry point runs
with the model under ``/opt/holoscan/models`` (see ``docs/monai-deploy.md``). This module needs the
SDK; :mod:`grata_monai.deploy.segments` (labels, codes, metadata) does not.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.deploy.conditions import CountCondition
from monai.deploy.core import AppContext, Application, Image, Operator, OperatorSpec
from monai.deploy.core.io_type import IOType
from monai.deploy.operators.dicom_data_loader_operator import DICOMDataLoaderOperator
from monai.deploy.operators.dicom_seg_writer_operator import (
    DICOMSegmentationWriterOperator,
    SegmentDescription,
)
from monai.deploy.operators.dicom_series_selector_operator import DICOMSeriesSelectorOperator
from monai.deploy.operators.dicom_series_to_volume_operator import DICOMSeriesToVolumeOperator
from monai.deploy.operators.monai_bundle_inference_operator import (
    BundleConfigNames,
    IOMapping,
    MonaiBundleInferenceOperator,
)
from pydicom import Dataset
from pydicom.uid import generate_uid

from grata_monai.audit import reports_of
from grata_monai.bundle.console import quiet, stop_reason
from grata_monai.bundle.handlers import versions
from grata_monai.deploy.segments import CATEGORY, SEGMENT_CODES, bundle_metadata, segment_labels

__all__ = [
    "SERIES_RULES",
    "segment_descriptions",
    "REPORT_NAME",
    "DICOMLoaderOperator",
    "GraTaBundleOperator",
    "NiftiWriterOperator",
    "GraTaSegApp",
    "write_package_source",
    "main",
]

REPORT_NAME = "seg_report.json"  # the audit report, beside the SEG and seg.nii.gz
# What every CPU run logs and nobody can act on: the SDK's notes on its GPU-only nvImageCodec decoder
# (Python logging, filtered), Holoscan's CUDA-driver warning and its closing "Scheduler stopped ...
# deadlock" line (how its greedy scheduler reports a finished graph; C++ log, kept to errors).
KNOWN_NOISE = (
    "nvimgcodec decoder plugin did not register",
    "Module nvidia.nvimgcodec is not available",
    "CUDA driver version is insufficient",
    "no periodic or async entities to get out of the deadlock",
)

# Select CT or MR image series (the first that matches when a study holds several).
SERIES_RULES = json.dumps(
    {"selections": [{"name": "CT or MR series", "conditions": {"Modality": "(?i)(CT|MR)"}}]}
)


class _DropKnownNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in KNOWN_NOISE)


def segment_descriptions(metadata: dict) -> list[SegmentDescription]:
    """The SDK's ``SegmentDescription`` per label of ``metadata``'s ``channel_def``, with SNOMED CT codes."""
    return [
        SegmentDescription(
            segment_label=name,
            segmented_property_category=CATEGORY,
            segmented_property_type=SEGMENT_CODES.get(name.lower(), CATEGORY),
            algorithm_name="GraTa test-time adaptation (grata-monai)",
            algorithm_version=str(metadata.get("version", "0")),
        )
        for name in segment_labels(metadata)
    ]


class DICOMLoaderOperator(DICOMDataLoaderOperator):
    """The SDK's DICOM loader, made to accept series that lack what DICOM SEG needs.

    Two gaps seen in anonymized series such as 3D-IRCADb: an empty SeriesNumber (valid, Type 2),
    on which the SDK's loader calls ``int()`` and drops the whole series; and no
    FrameOfReferenceUID, which highdicom requires of the source images of a SEG. Empty
    attributes are left out of the series-level parsing, and a series without a frame of
    reference gets one in memory (derived from its SeriesInstanceUID, so it is the same on
    every run); the files on disk are never changed.
    """

    def load_data_to_studies(self, input_path: Path) -> list:
        studies = super().load_data_to_studies(input_path)
        for study in studies:
            for series in study.get_all_series():
                datasets = [sop.get_native_sop_instance() for sop in series.get_sop_instances()]
                if datasets and all("FrameOfReferenceUID" not in ds for ds in datasets):
                    uid = generate_uid(entropy_srcs=["grata-monai", str(series.SeriesInstanceUID)])
                    logging.warning(
                        f"series {series.SeriesInstanceUID} has no FrameOfReferenceUID (required by DICOM "
                        f"SEG); using {uid} for it and its segmentation."
                    )
                    for ds in datasets:
                        ds.FrameOfReferenceUID = uid
        return studies

    def populate_series_attributes(self, series, sop_instance) -> None:
        if any(elem.is_empty for elem in sop_instance):
            present = Dataset()
            for elem in sop_instance:
                if not elem.is_empty:
                    present.add(elem)
            sop_instance = present
        super().populate_series_attributes(series, sop_instance)


class GraTaBundleOperator(MonaiBundleInferenceOperator):
    """The SDK's bundle operator, writing the audit report the inferer attached to its output as
    ``<output_folder>/seg_report.json`` (the input folder, the UTC time, the versions, then the
    report's fields: docs/reliability.md). Arguments as the SDK's, plus ``output_folder`` and
    ``input_folder`` (recorded in the report)."""

    def __init__(self, fragment, *args, output_folder: Path, input_folder: Path, **kwargs) -> None:
        self.output_folder, self.input_folder = Path(output_folder), Path(input_folder)
        super().__init__(fragment, *args, **kwargs)

    def predict(self, data: Any, *args, **kwargs) -> Any:
        outputs = super().predict(data, *args, **kwargs)
        for report in reports_of(outputs)[:1]:
            written = datetime.now(timezone.utc).isoformat(timespec="seconds")
            record = {
                "input": str(self.input_folder),
                "written_utc": written,
                "versions": versions(),
                **report,
            }
            self.output_folder.mkdir(parents=True, exist_ok=True)
            path = self.output_folder / REPORT_NAME
            path.write_text(json.dumps(record, indent=1))
            logging.info(f"wrote {path}")
        return outputs


class NiftiWriterOperator(Operator):
    """Write the segmentation ``Image`` (DHW, in the source series' grid) as ``<output>/seg.nii.gz``.

    The affine is the source series' (``original_affine``, RAS) that the bundle operator passes
    along in the image metadata, so the NIfTI overlays the DICOM series.
    """

    def __init__(self, fragment, *args, output_folder: Path, **kwargs) -> None:
        self.output_folder = Path(output_folder)
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("seg_image")

    def compute(self, op_input, op_output, context) -> None:
        image: Image = op_input.receive("seg_image")
        meta = image.metadata() or {}
        affine = meta.get("original_affine", meta.get("affine"))
        affine = np.eye(4) if affine is None else np.asarray(affine, dtype=float)
        array = np.swapaxes(np.asarray(image.asnumpy()), 0, 2).astype(
            np.uint8
        )  # DHW -> WHD (NIfTI i, j, k)
        self.output_folder.mkdir(parents=True, exist_ok=True)
        path = self.output_folder / "seg.nii.gz"
        nib.save(nib.Nifti1Image(array, affine), str(path))
        logging.info(f"wrote {path}")


class GraTaSegApp(Application):
    """DICOM series -> GraTa bundle inference -> DICOM SEG + NIfTI.

    Args:
        argv: the SDK's command line (``-i`` DICOM folder, ``-o`` output folder, ``-m`` model:
            ``model.ts`` or the bundle folder); None reads ``sys.argv`` and the SDK's environment
            variables (``HOLOSCAN_INPUT_PATH``, ``HOLOSCAN_OUTPUT_PATH``, ``HOLOSCAN_MODEL_PATH``).
        bundle: the bundle (folder or ``model.ts``) when it is not the app's model path.
    """

    def __init__(
        self, argv: list[str] | None = None, bundle: str | os.PathLike | None = None
    ) -> None:
        self._argv, self._bundle = argv, bundle
        self.output_folder: Path | None = None  # set when the app is composed (at run)
        super().__init__()

    def compose(self) -> None:
        context: AppContext = Application.init_app_context(self._argv)  # (re)configures logging
        for handler in logging.getLogger().handlers:
            handler.addFilter(_DropKnownNoise())
        input_path, output_path = Path(context.input_path), Path(context.output_path)
        self.output_folder = output_path
        bundle = Path(self._bundle or context.model_path)
        metadata = bundle_metadata(bundle)
        if bundle.is_dir() and (bundle / "configs" / "inference.json").is_file():
            # A bundle folder: the SDK's model factory would take it for a model repository and
            # hand the operator an empty model; let the operator read the folder's configs and
            # load its models/model.ts itself.
            context.models = None
        else:
            bundle = (
                None  # model.ts (or a MAP's model folder): configs embedded, model from the context
            )

        loader = DICOMLoaderOperator(
            self, CountCondition(self, 1), input_folder=input_path, name="loader"
        )
        selector = DICOMSeriesSelectorOperator(self, rules=SERIES_RULES, name="selector")
        to_volume = DICOMSeriesToVolumeOperator(self, name="to_volume")
        infer = GraTaBundleOperator(
            self,
            output_folder=output_path,
            input_folder=input_path,
            input_mapping=[IOMapping("image", Image, IOType.IN_MEMORY)],
            output_mapping=[IOMapping("pred", Image, IOType.IN_MEMORY)],
            app_context=context,
            bundle_path=bundle,
            bundle_config_names=BundleConfigNames(config_names=["inference"]),
            name="grata_infer",
        )
        seg_writer = DICOMSegmentationWriterOperator(
            self,
            segment_descriptions=segment_descriptions(metadata),
            custom_tags={"SeriesDescription": "GraTa adapted segmentation, not for clinical use"},
            output_folder=output_path,
            omit_empty_frames=False,
            name="dicom_seg_writer",
        )
        nifti_writer = NiftiWriterOperator(self, output_folder=output_path, name="nifti_writer")

        self.add_flow(loader, selector, {("dicom_study_list", "dicom_study_list")})
        self.add_flow(
            selector, to_volume, {("study_selected_series_list", "study_selected_series_list")}
        )
        self.add_flow(to_volume, infer, {("image", "image")})
        self.add_flow(infer, seg_writer, {("pred", "seg_image")})
        self.add_flow(
            selector, seg_writer, {("study_selected_series_list", "study_selected_series_list")}
        )
        self.add_flow(infer, nifti_writer, {("pred", "seg_image")})


_APP_PY = '''"""MONAI Application Package entry point: GraTa segmentation, DICOM series in, DICOM SEG + NIfTI out."""
from grata_monai.deploy.app import main

if __name__ == "__main__":
    main()
'''

_APP_YAML = """application:
  title: GraTa abdominal organ segmentation (test-time adapted)
  version: {version}
  inputFormats: ["file"]
  outputFormats: ["file"]

resources:
  cpu: 2
  gpu: 0
  memory: 8Gi
  gpuMemory: 0Gi
"""


def write_package_source(dest: str | os.PathLike, grata_requirement: str = "grata-monai") -> Path:
    """Write the app folder for the SDK's packager (``holoscan package`` in SDK 4.0; Docker needed).

    It holds ``app.py`` (calls `main`), ``app.yaml`` (the MAP's resources) and ``requirements.txt``
    (the SDK, highdicom, pydicom 3, JPEG 2000 decoders and this package).

    Args:
        dest: folder to write (created).
        grata_requirement: pip requirement of this package inside the image (a name, a wheel path
            or a git URL).

    Returns:
        the folder.
    """
    from grata_monai import __version__

    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(_APP_PY)
    (folder / "app.yaml").write_text(_APP_YAML.format(version=__version__))
    requirements = [
        "monai-deploy-app-sdk==4.0.0",
        "monai==1.6.1",
        "highdicom>=0.22",
        "pydicom>=3",
        "pylibjpeg>=2",
        "pylibjpeg-openjpeg>=2",
        "nibabel",
        grata_requirement,
    ]
    (folder / "requirements.txt").write_text("\n".join(requirements) + "\n")
    return folder


def summary(output: Path, seconds: float) -> str:
    """The run's last line: the SEG, the NIfTI and the report written in ``output``, and what GraTa did."""
    segs = sorted(output.glob("*.dcm"), key=lambda p: p.stat().st_mtime)
    if not segs:
        return f"no DICOM SEG written in {output} after {seconds:.0f} s (see the log above)"
    report_path = output / REPORT_NAME
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    adapted = (
        f"{len(report.get('steps', []))} GraTa step(s), guard {report.get('guard')}"
        if report
        else "no report"
    )
    return (
        f"done in {seconds:.0f} s: DICOM SEG {segs[-1]}, NIfTI {output / 'seg.nii.gz'}, report {report_path} "
        f"({adapted})"
    )


def main(argv: list[str] | None = None) -> None:
    """Run the app: ``python -m grata_monai.deploy.app -i <dicom folder> -o <output> -m <model.ts | bundle>``;
    the last line says what was written, or, for an input the bundle refuses (``UnusableInput``: 2D,
    several channels, too thin), ``error: <reason>`` with exit status 1 (``GRATA_DEBUG=1``: the
    traceback). Holoscan's own log keeps to errors unless ``HOLOSCAN_LOG_LEVEL`` is set."""
    from holoscan.logger import LogLevel, set_log_level

    logging.basicConfig(level=logging.INFO)
    if "HOLOSCAN_LOG_LEVEL" not in os.environ:
        set_log_level(LogLevel.ERROR)
    quiet()
    start = time.time()
    app = GraTaSegApp(argv)
    try:
        app.run()
    except Exception as error:  # an input the bundle refuses (or another stop) ends in its one line
        reason = stop_reason(error)
        if reason is None or os.environ.get("GRATA_DEBUG", "") not in ("", "0"):
            raise
        raise SystemExit(f"error: {reason}") from None
    if app.output_folder is not None:
        print(summary(app.output_folder, time.time() - start), flush=True)


if __name__ == "__main__":
    main()
