"""A MONAI Label app serving MONAI bundles with GraTa, and its infer task.

:class:`GraTaInferTask` is MONAI Label's ``BundleInferTask`` with three changes: an input the
bundle's input check refuses (``grata_monai.bundle.checks``), or that cannot be read, ends the
request with HTTP 422 and the same one-line reason the bundle's own run gives (MONAI Label
answers any other exception with a bare 500); the audit report the inferer attached to its output
(steps, cosine, guard verdict, domain distance, ...) is logged and returned in the result JSON
under ``grata_report`` (``output=json`` or ``output=all``); the label file is uint8, as the bundle
writes it, not MONAI Label's float32. :class:`GraTaLabelApp` serves every bundle folder under the
app's ``model/`` with that task, offline; :func:`write_app` writes such an app folder.

MONAI Label 0.8.5's ``POST /infer/{model}`` is an ``async`` endpoint that runs the whole inference
on the server's event loop, so every other request, ``GET /info`` included, waits for it
(``MONAI_LABEL_INFER_CONCURRENCY`` does not help: the endpoint waits for the pool's result on the
loop). :func:`infer_off_the_event_loop`, called by :class:`GraTaLabelApp`, replaces that route by
the same handler as a plain function, which FastAPI runs in its worker threads.
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException
from fastapi.routing import APIRoute
from monai.transforms import LoadImaged
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.tasks.infer.bundle import BundleInferTask

from grata_monai.audit import reports_of
from grata_monai.bundle.checks import UnusableInput, unreadable
from grata_monai.bundle.console import quiet, stop_reason

__all__ = [
    "REPORT_FIELD",
    "GraTaInferTask",
    "GraTaLabelApp",
    "infer_off_the_event_loop",
    "write_app",
]

logger = logging.getLogger(__name__)

REPORT_FIELD = "grata_report"  # the result JSON's field holding the volume's audit report

_MAIN_PY = '''"""MONAI Label app: the bundles under model/ served with GraTa (grata_monai.label.app)."""
from grata_monai.label.app import GraTaLabelApp  # noqa: F401 - MONAI Label finds the app class here
'''


class _ReadOrRefuse:
    """A loading transform whose reader errors become :class:`UnusableInput` with the intake's reason."""

    def __init__(self, load: Callable, key: str) -> None:
        self.load, self.key = load, key

    def __call__(self, data: dict) -> Any:
        try:
            return self.load(data)
        except Exception as error:
            path = str(data.get(self.key, ""))
            raise UnusableInput(
                unreadable(error, path).replace(path, os.path.basename(path))
            ) from error


class GraTaInferTask(BundleInferTask):
    """MONAI Label's bundle infer task: 422 with the reason for bad input, the GraTa report in the
    result JSON and the log, uint8 labels. Arguments as ``BundleInferTask``."""

    def __init__(self, path: str, conf: dict[str, str], **kwargs: Any) -> None:
        quiet()
        super().__init__(path, conf, **kwargs)

    def pre_transforms(self, data: dict | None = None) -> Sequence[Callable]:
        return [
            _ReadOrRefuse(t, self.input_key)
            if isinstance(t, LoadImaged) or type(t).__name__ == "LoadImageTensord"
            else t
            for t in super().pre_transforms(data)
        ]

    def run_inferer(
        self, data: dict[str, Any], convert_to_batch: bool = True, device: str = "cuda"
    ) -> dict[str, Any]:
        data = super().run_inferer(data, convert_to_batch, device)
        reports = reports_of(data[self.output_label_key])
        if reports:
            report = reports[0]
            data[REPORT_FIELD] = report
            cosines = [
                round(s["cosine"], 4)
                for s in report.get("steps", [])
                if s.get("cosine") is not None
            ]
            logger.info(
                f"GraTa report: {len(report.get('steps', []))} step(s), cosine {cosines}, "
                f"guard {report.get('guard')}, statistics entropy {report.get('statistics_entropy')}, "
                f"volume statistics weight {report.get('volume_statistics_weight')}, "
                f"adapted in {report.get('adapt_seconds', 0.0):.2f} s"
            )
        return data

    def writer(
        self, data: dict[str, Any], extension: str | None = None, dtype: Any = None
    ) -> tuple[Any, Any]:
        label, result = super().writer(data, extension, np.uint8 if dtype is None else dtype)
        if REPORT_FIELD in data:
            result[REPORT_FIELD] = data[REPORT_FIELD]
        return label, result

    def __call__(self, request: dict, callbacks: dict | None = None) -> tuple[str | None, dict]:
        try:
            return super().__call__(request, callbacks)
        except Exception as error:
            reason = stop_reason(error)
            if not isinstance(reason, UnusableInput):
                raise
            logger.warning(f"refused {os.path.basename(str(request.get('image', '')))}: {reason}")
            raise HTTPException(status_code=422, detail=str(reason)) from error


def infer_off_the_event_loop() -> bool:
    """Serve MONAI Label's ``POST /infer/{model}`` from FastAPI's worker threads instead of the event
    loop: the route's ``async`` endpoint is replaced, in place, by a plain function with the same
    parameters that calls the same handler (``monailabel.endpoints.infer.run_inference``).

    Returns:
        True when the route was replaced (False: already done, or no such route in this version).
    """
    from monailabel.endpoints import infer as endpoint

    routes = (
        endpoint.router.routes
    )  # the app includes this router (FastAPI reads it at request time)
    for i, route in enumerate(routes):
        if isinstance(route, APIRoute) and route.endpoint is endpoint.api_run_inference:
            signature = inspect.signature(route.endpoint)

            def api_run_inference(**kwargs: Any) -> Any:
                kwargs.pop(
                    "user", None
                )  # checked by its dependency; run_inference does not take it
                return endpoint.run_inference(**kwargs)

            api_run_inference.__signature__ = signature  # FastAPI reads the parameters from here
            routes[i] = APIRoute(
                route.path,
                api_run_inference,
                methods=list(route.methods),
                summary=route.summary,
                tags=route.tags,
                responses=route.responses,
            )
            logger.info(
                "POST /infer/{model} runs in worker threads: other requests are served meanwhile"
            )
            return True
    return False


class GraTaLabelApp(MONAILabelApp):
    """Every bundle folder under ``<app_dir>/model/`` (one with ``configs/inference.json``) as a
    :class:`GraTaInferTask` named after the folder; nothing is downloaded, nothing is trained.
    Inference requests run in worker threads (:func:`infer_off_the_event_loop`)."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        model_dir = Path(app_dir) / "model"
        folders = sorted(model_dir.iterdir()) if model_dir.is_dir() else []
        self.bundles = {
            p.name: str(p) for p in folders if (p / "configs" / "inference.json").is_file()
        }
        if not self.bundles:
            raise ValueError(f"no bundle under {model_dir} (a folder with configs/inference.json)")
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="GraTa bundles",
            description="MONAI bundles with GraTa test-time adaptation",
            version="1",
        )
        infer_off_the_event_loop()

    def init_infers(self) -> dict[str, InferTask]:
        return {name: GraTaInferTask(path, self.conf) for name, path in self.bundles.items()}


def write_app(
    dest: str | os.PathLike, bundle: str | os.PathLike, name: str = "grata_abdomen"
) -> Path:
    """Write a MONAI Label app folder serving ``bundle`` as model ``name``: ``main.py`` and
    ``model/<name>/`` (a copy of the bundle). Refuses an existing ``model/<name>``.

    Returns:
        the app folder, for ``monailabel start_server --app``.
    """
    app, target = Path(dest), Path(dest) / "model" / name
    if target.exists():
        raise FileExistsError(f"{target} already exists; remove it or choose another name")
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("eval", "sample", "__pycache__"))
    (app / "main.py").write_text(_MAIN_PY)
    return app
