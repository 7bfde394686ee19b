"""The bundle inside MONAI Label 0.8.5, offline, on the bundle's own sample (no outside data).

Runs in the MONAI Label env (`.ci/label.sh`, which fails when anything here skips); skipped where
monailabel is not installed. The app is `grata_monai.label.app.write_app`'s: the bundle under
`model/grata_abdomen/` with small adaptation settings, so CPU requests take seconds. The studies
are the sample, a copy cropped to its upper half (a second patient for the concurrency test) and
bad inputs: a text file named `.nii.gz`, a 2D image, a 4-slice 31 mm slab.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

monailabel = pytest.importorskip(
    "monailabel", reason="MONAI Label is not installed (run .ci/label.sh)"
)
nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
BUNDLE_DIR = Path(os.environ.get("GRATA_BUNDLE_DIR", ROOT / "bundle"))
SAMPLE = BUNDLE_DIR / "sample" / "mr_01_image.nii.gz"
MODEL_NAME = "grata_abdomen"
IMAGES = ("mr_01_image", "mr_01_upper")  # two volumes for the concurrency test
CPU = {"params": '{"device": "cpu"}'}  # the request's form
SMALL = {"steps": 2, "patches_per_step": 1, "sw_batch_size": 2}  # adaptation settings for CPU tests


def _save(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), str(path))


@pytest.fixture(scope="module")
def label_app(tmp_path_factory):
    """A MONAI Label app instance (the server's own factory) serving the bundle, plus its studies folder."""
    from grata_monai.label.app import write_app

    tmp = tmp_path_factory.mktemp("monailabel")
    app_dir = write_app(tmp / "app", BUNDLE_DIR, MODEL_NAME)
    config_path = app_dir / "model" / MODEL_NAME / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["inferer"].update(SMALL)
    config_path.write_text(json.dumps(config, indent=2))

    studies = tmp / "studies"
    studies.mkdir()
    image = nib.load(SAMPLE)
    array, affine = np.asarray(image.dataobj), image.affine
    _save(studies / "mr_01_image.nii.gz", array, affine)
    _save(studies / "mr_01_upper.nii.gz", array[:, :, array.shape[2] // 2 :], affine)
    (studies / "notes.nii.gz").write_text("this is not an image\n")
    _save(studies / "flat.nii.gz", array[:, :, 18:19], affine)  # one slice
    _save(
        studies / "slab.nii.gz", array[:, :, 16:20], np.diag([1.25, 1.25, 7.75, 1.0])
    )  # 4 slices, 31 mm

    from monailabel.config import settings
    from monailabel.interfaces.utils.app import app_instance

    conf = {"preload": "false"}
    settings.MONAI_LABEL_APP_DIR, settings.MONAI_LABEL_STUDIES = str(app_dir), str(studies)
    settings.MONAI_LABEL_APP_CONF = conf
    app = app_instance(str(app_dir), str(studies), conf)
    return app, studies


def _task(app):
    from grata_monai.label.app import GraTaInferTask

    task = app._infers[MODEL_NAME]
    assert isinstance(task, GraTaInferTask) and task.is_valid()
    return task


def _infer(app, image_id: str) -> tuple[np.ndarray, dict]:
    """One infer request as the /infer endpoint makes it: the label array (its file's dtype) and the result JSON."""
    result = app.infer(
        {"model": MODEL_NAME, "image": image_id, "device": "cpu", "save_label": False}
    )
    return np.asarray(nib.load(result["file"]).dataobj), result["params"]


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_bundle_loads_as_grata_infer_task(label_app):
    """The app offline: our bundle is a GraTaInferTask (a BundleInferTask) with channel_def labels and GraTa."""
    from grata_monai import GraTaInferer

    app, _ = label_app
    task = _task(app)
    assert task.labels == {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    assert task.dimension == 3
    inferer = task.inferer({"device": "cpu"})
    assert isinstance(inferer, GraTaInferer)
    assert inferer.steps == SMALL["steps"]
    assert MODEL_NAME in app.info()["models"]


def test_infer_returns_uint8_adapted_segmentation_with_its_report(label_app, caplog):
    """An infer request on the sample: a uint8 label map in the input's grid; the GraTa report (steps,
    cosine, guard, domain distance) in the result JSON and the log; the cached network unchanged."""
    from grata_monai import defaults
    from grata_monai.audit import checksum
    from grata_monai.label.app import REPORT_FIELD

    app, studies = label_app
    task = _task(app)
    network = task._get_network("cpu", {})  # the network MONAI Label caches per device
    before = _state(network)

    with caplog.at_level("INFO", logger="grata_monai.label.app"):
        label, result = _infer(app, IMAGES[0])

    assert label.dtype == np.uint8, "the label file is uint8, as the bundle writes it"
    assert label.shape[:3] == nib.load(studies / "mr_01_image.nii.gz").shape[:3], (
        "restored to the input's grid"
    )
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4}
    assert (label == 1).sum() > 1000, "expected a liver on an abdominal MR"
    report = result[REPORT_FIELD]
    assert len(report["steps"]) == SMALL["steps"] and all("cosine" in s for s in report["steps"])
    assert report["guard"] is None or isinstance(report["guard"], str)
    weights = defaults.for_device("cpu")["statistics_candidates"]  # the request runs on the CPU
    assert set(report["statistics_entropy"]) == {f"{w:g}" for w in weights}, (
        "the bundle's norm_stats='entropy' tries each of the device's statistics weights"
    )
    assert report["volume_statistics_weight"] in weights
    assert report["source_sha256"] == checksum(network)
    assert any(
        r.getMessage().startswith(f"GraTa report: {SMALL['steps']} step(s), cosine [")
        for r in caplog.records
    )

    assert task._get_network("cpu", {}) is network, "MONAI Label reuses its cached network"
    after = network.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"cached network changed: {key}"
    assert not network.training


def test_concurrent_requests_match_sequential(label_app):
    """Two requests on different volumes, at once, give what the same requests give one after the other."""
    app, _ = label_app
    sequential = [_infer(app, image)[0] for image in IMAGES]

    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(IMAGES))

    def worker(i: int, image: str) -> None:
        try:
            barrier.wait()
            results[i] = _infer(app, image)[0]
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i, v)) for i, v in enumerate(IMAGES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sequential[0].shape != sequential[1].shape
    for i in range(len(IMAGES)):
        assert np.array_equal(results[i], sequential[i]), (
            f"{IMAGES[i]}: concurrent result differs from sequential"
        )


def test_infer_over_http_returns_label_and_report(label_app):
    """The server's REST routes: POST /infer/<model>?image=<id> returns the uint8 label file; an image
    uploaded with PUT /datastore/image lands in the studies folder, and its infer request with
    output=json returns the result JSON holding the GraTa report."""
    from fastapi.testclient import TestClient
    from monailabel.app import app as server

    from grata_monai.label.app import REPORT_FIELD

    _, studies = label_app
    with TestClient(server) as client:
        response = client.post(f"/infer/{MODEL_NAME}?image={IMAGES[1]}&output=image", data=CPU)
        assert response.status_code == 200, response.text[:500]
        out = studies.parent / "http_label.nii.gz"
        out.write_bytes(response.content)
        with open(studies / "mr_01_upper.nii.gz", "rb") as f:
            response = client.put(
                "/datastore/image?image=uploaded", files={"file": ("uploaded.nii.gz", f)}
            )
        assert response.status_code == 200 and response.json() == {"image": "uploaded"}, (
            response.text[:500]
        )
        assert (studies / "uploaded.nii.gz").is_file()
        response = client.post(f"/infer/{MODEL_NAME}?image=uploaded&output=json", data=CPU)
        assert response.status_code == 200, response.text[:500]
        assert len(response.json()[REPORT_FIELD]["steps"]) == SMALL["steps"]
    label = nib.load(out)
    assert label.get_data_dtype() == np.uint8
    assert label.shape[:3] == nib.load(studies / "mr_01_upper.nii.gz").shape[:3]
    assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 3, 4}


@pytest.mark.parametrize("image", ["notes", "flat", "slab"])
def test_bad_input_gets_422_with_the_bundle_runs_reason(label_app, image):
    """A text file named .nii.gz, a 2D image and a 31 mm slab: HTTP 422 whose detail is the one-line
    reason the bundle's own run gives for the same file (its intake), not a bare 500."""
    from fastapi.testclient import TestClient
    from monai.bundle import ConfigParser
    from monailabel.app import app as server

    from grata_monai.bundle.intake import Intake

    _, studies = label_app
    path = studies / f"{image}.nii.gz"
    config = ConfigParser()
    config.read_config(str(BUNDLE_DIR / "configs" / "inference.json"))
    intake = Intake(
        [{"image": str(path)}, {"image": str(studies / "mr_01_image.nii.gz")}],
        check=config.get_parsed_content("input_check"),
    )
    expected = dict(intake.failed)[str(path)].replace(str(path), path.name)
    with TestClient(server) as client:
        response = client.post(f"/infer/{MODEL_NAME}?image={image}&output=image", data=CPU)
    assert response.status_code == 422, response.text[:500]
    detail = response.json()["detail"]
    assert "\n" not in detail
    if (
        image == "notes"
    ):  # the reader's message names the file where MONAI Label put it: compare the kind
        assert detail.startswith("unreadable (") and expected.startswith("unreadable (")
    else:
        assert detail == expected
    assert {"notes": "unreadable", "flat": "a 2D image", "slab": "too thin"}[image] in detail


def test_info_is_served_while_an_inference_runs(label_app):
    """Inference runs off the event loop: a GET /info sent while an infer request runs is answered
    before that request ends (stock MONAI Label 0.8.5 answers it only after)."""
    from fastapi.testclient import TestClient
    from monailabel.app import app as server

    from grata_monai.label.app import infer_off_the_event_loop

    assert infer_off_the_event_loop() is False, "the app already replaced the route"
    started, events = threading.Event(), []
    task = _task(label_app[0])
    original = task.run_inferer

    def slow_inferer(*args, **kwargs):  # marks that the inference is under way
        started.set()
        out = original(*args, **kwargs)
        events.append("infer computed")
        return out

    with TestClient(server) as client:

        def infer() -> None:
            response = client.post(f"/infer/{MODEL_NAME}?image={IMAGES[0]}&output=json", data=CPU)
            events.append(f"infer {response.status_code}")

        worker = threading.Thread(target=infer)
        task.run_inferer = slow_inferer
        try:
            worker.start()
            assert started.wait(600), "the inference did not start"
            response = client.get("/info/")
            events.append(f"info {response.status_code}")
            worker.join(600)
        finally:
            del task.run_inferer
    assert events == ["info 200", "infer computed", "infer 200"], events
