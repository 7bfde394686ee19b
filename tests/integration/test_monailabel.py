"""The bundle inside MONAI Label 0.8.5: its own `monaibundle` sample app, offline, on a real MR volume.

Runs in the MONAI Label env (`.ci/label.sh`); skipped where monailabel is not installed, where the
real data or the bundle's model is absent. The bundle is served from a temporary copy of the sample
app whose `model/grata_abdomen/` holds the bundle's metadata, its weights (linked, not copied) and
an inference.json with small adaptation settings, so CPU requests take seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

monailabel = pytest.importorskip("monailabel", reason="MONAI Label is not installed (run .ci/label.sh)")
nib = pytest.importorskip("nibabel")

ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("GRATA_DATA_DIR", ROOT.parent / "shared" / "data"))
BUNDLE_DIR = Path(os.environ.get("GRATA_BUNDLE_DIR", ROOT / "bundle"))
MODEL_NAME = "grata_abdomen"
VOLUMES = ("mr_01_image.nii.gz", "mr_05_image.nii.gz")
SMALL = {"steps": 2, "patches_per_step": 1, "sw_batch_size": 2}  # adaptation settings for CPU tests

pytestmark = pytest.mark.realdata


def _sample_app() -> Path:
    """The monaibundle sample app shipped with the monailabel wheel (under the env's prefix)."""
    for base in (Path(sys.prefix), Path(monailabel.__file__).resolve().parents[3]):
        app = base / "monailabel" / "sample-apps" / "monaibundle"
        if (app / "main.py").is_file():
            return app
    pytest.skip(f"monaibundle sample app not found under {sys.prefix}/monailabel/sample-apps")


@pytest.fixture(scope="module")
def label_app(tmp_path_factory):
    """A MONAI Label app instance (the server's own factory) serving the bundle, plus its studies folder."""
    for volume in VOLUMES:
        if not (DATA_DIR / "abdomen" / "mr" / volume).is_file():
            pytest.skip(f"real MR volume {volume} not found in {DATA_DIR}/abdomen/mr (set GRATA_DATA_DIR)")
    for name in ("configs/inference.json", "configs/metadata.json", "models/model.pt"):
        if not (BUNDLE_DIR / name).is_file():
            pytest.skip(f"bundle file {BUNDLE_DIR / name} not found (set GRATA_BUNDLE_DIR or build the bundle)")

    tmp = tmp_path_factory.mktemp("monailabel")
    app_dir = tmp / "monaibundle"
    shutil.copytree(_sample_app(), app_dir)
    bundle = app_dir / "model" / MODEL_NAME
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    shutil.copy(BUNDLE_DIR / "configs" / "metadata.json", bundle / "configs")
    config = json.loads((BUNDLE_DIR / "configs" / "inference.json").read_text())
    config["inferer"].update(SMALL)
    (bundle / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (bundle / "models" / "model.pt").symlink_to(BUNDLE_DIR / "models" / "model.pt")
    if (BUNDLE_DIR / "LICENSE").is_file():
        shutil.copy(BUNDLE_DIR / "LICENSE", bundle)

    studies = tmp / "studies"
    studies.mkdir()
    for volume in VOLUMES:
        shutil.copyfile(DATA_DIR / "abdomen" / "mr" / volume, studies / volume)  # a writable tmp copy: the datastore works in this folder

    from monailabel.config import settings
    from monailabel.interfaces.utils.app import app_instance

    # zoo_source other than "monaihosting": bundles come from app_dir/model only, nothing is downloaded.
    conf = {"models": MODEL_NAME, "zoo_source": "local", "sam2": "false", "skip_trainers": "true", "preload": "false"}
    settings.MONAI_LABEL_APP_DIR, settings.MONAI_LABEL_STUDIES = str(app_dir), str(studies)
    settings.MONAI_LABEL_APP_CONF = conf
    app = app_instance(str(app_dir), str(studies), conf)
    return app, studies


def _task(app):
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = app._infers[MODEL_NAME]
    assert isinstance(task, BundleInferTask) and task.is_valid()
    return task


def _infer(app, image_id: str) -> np.ndarray:
    """One infer request as the /infer endpoint makes it; the label array."""
    result = app.infer({"model": MODEL_NAME, "image": image_id, "device": "cpu", "save_label": False})
    return np.asarray(nib.load(result["file"]).dataobj)


def _infer_with_report(app, image_id: str) -> tuple[np.ndarray, dict | None]:
    """:func:`_infer`, and the GraTa report the inferer attached to its output (MONAI Label keeps
    only the tensor, so the test reads it at the inferer's return). Not for concurrent requests."""
    from unittest import mock

    from grata_monai import GraTaInferer, reports_of

    reports, call = [], GraTaInferer.__call__

    def spy(self, *args, **kwargs):
        out = call(self, *args, **kwargs)
        reports.extend(reports_of(out))
        return out

    with mock.patch.object(GraTaInferer, "__call__", spy):
        label = _infer(app, image_id)
    return label, reports[-1] if reports else None


def _state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in network.state_dict().items()}


def test_bundle_loads_as_bundle_infer_task(label_app):
    """The monaibundle app offline: our bundle is a valid BundleInferTask with channel_def labels and GraTa."""
    from grata_monai import GraTaInferer

    app, _ = label_app
    task = _task(app)
    assert task.labels == {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    assert task.dimension == 3
    inferer = task.inferer({"device": "cpu"})
    assert isinstance(inferer, GraTaInferer)
    assert inferer.steps == SMALL["steps"]
    assert MODEL_NAME in app.info()["models"]


def test_infer_request_returns_adapted_segmentation_and_keeps_network(label_app):
    """An infer request on a real MR volume: adapted (GraTa steps ran) label map in the input's grid;
    the network MONAI Label caches is unchanged afterwards."""
    from grata_monai.audit import checksum

    app, studies = label_app
    task = _task(app)
    network = task._get_network("cpu", {})  # the network MONAI Label caches per device
    before = _state(network)

    label, report = _infer_with_report(app, "mr_01_image")

    image = nib.load(studies / VOLUMES[0])
    assert label.shape[:3] == image.shape[:3], "the label is restored to the input's grid"
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4}
    assert (label == 1).sum() > 1000, "expected a liver on an abdominal MR"
    assert report is not None and len(report["steps"]) == SMALL["steps"], "GraTa adapted on this volume"
    assert report["source_sha256"] == checksum(network)

    assert task._get_network("cpu", {}) is network, "MONAI Label reuses its cached network"
    after = network.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), f"cached network changed: {key}"
    assert not network.training


def test_concurrent_requests_match_sequential(label_app):
    """Two requests on different volumes, at once, give what the same requests give one after the other."""
    app, _ = label_app
    sequential = [_infer(app, Path(v).name.split(".")[0]) for v in VOLUMES]

    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(VOLUMES))

    def worker(i: int, volume: str) -> None:
        try:
            barrier.wait()
            results[i] = _infer(app, Path(volume).name.split(".")[0])
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i, v)) for i, v in enumerate(VOLUMES)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(len(VOLUMES)):
        assert np.array_equal(results[i], sequential[i]), f"{VOLUMES[i]}: concurrent result differs from sequential"


def test_infer_over_http(label_app):
    """The server's REST route: POST /infer/<model>?image=<id> returns the label file."""
    from fastapi.testclient import TestClient
    from monailabel.app import app as server

    _, studies = label_app
    with TestClient(server) as client:
        response = client.post(f"/infer/{MODEL_NAME}?image=mr_05_image&output=image", data={"params": '{"device": "cpu"}'})
        assert response.status_code == 200, response.text[:500]
        out = studies.parent / "http_label.nii.gz"
        out.write_bytes(response.content)
    label = np.asarray(nib.load(out).dataobj)
    assert label.shape[:3] == nib.load(studies / VOLUMES[1]).shape[:3]
    assert set(np.unique(label)) <= {0, 1, 2, 3, 4}
