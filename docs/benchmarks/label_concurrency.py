"""MONAI Label: do inference requests block the server? A bounded loopback measurement.

Serves the bundle's sample with ``grata_monai.label.app`` on 127.0.0.1 (a free port, uvicorn in this
process), sends ``--clients`` infer requests at once and, one second later, ``GET /info``; records
each request's wall time, then stops the server. ``--stock`` keeps MONAI Label's own async infer
route (inference on the event loop) for comparison. Run in the MONAI Label env (``.ci/label.sh``):

    python docs/benchmarks/label_concurrency.py --out docs/benchmarks/label_concurrency.json
    python docs/benchmarks/label_concurrency.py --stock --out docs/benchmarks/label_concurrency_stock.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import tempfile
import threading
import time
from pathlib import Path

import requests
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"steps": 2, "patches_per_step": 1, "sw_batch_size": 2}  # the Label tests' settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--stock", action="store_true", help="keep MONAI Label's async infer route")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import grata_monai.label.app as label_app

    if args.stock:
        label_app.infer_off_the_event_loop = lambda: False
    tmp = Path(tempfile.mkdtemp(prefix="label_concurrency_"))
    app_dir = label_app.write_app(tmp / "app", ROOT / "bundle")
    config_path = app_dir / "model" / "grata_abdomen" / "configs" / "inference.json"
    config = json.loads(config_path.read_text())
    config["inferer"].update(SMALL)
    config_path.write_text(json.dumps(config))
    studies = tmp / "studies"
    studies.mkdir()
    (studies / "mr_01_image.nii.gz").write_bytes(
        (ROOT / "bundle" / "sample" / "mr_01_image.nii.gz").read_bytes()
    )

    from monailabel.config import settings

    settings.MONAI_LABEL_APP_DIR, settings.MONAI_LABEL_STUDIES = str(app_dir), str(studies)
    settings.MONAI_LABEL_APP_CONF = {"preload": "true"}
    from monailabel.app import app as server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(server, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=uv.run, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(1)
    requests.post(
        f"{url}/infer/grata_abdomen?image=mr_01_image&output=json",
        data={"params": '{"device": "cpu"}'},
        timeout=600,
    ).raise_for_status()  # warm-up: the network is loaded, caches filled

    results: dict[str, float] = {}

    def timed(name: str, call) -> None:
        start = time.perf_counter()
        call().raise_for_status()
        results[name] = round(time.perf_counter() - start, 2)

    infer = lambda: requests.post(  # noqa: E731
        f"{url}/infer/grata_abdomen?image=mr_01_image&output=json",
        data={"params": '{"device": "cpu"}'},
        timeout=600,
    )
    threads = [
        threading.Thread(target=timed, args=(f"infer_{i}", infer)) for i in range(args.clients)
    ]
    start = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(1.0)
    timed("info_sent_1s_after", lambda: requests.get(f"{url}/info/", timeout=600))
    for t in threads:
        t.join()
    total = round(time.perf_counter() - start, 2)
    uv.should_exit = True
    record = {
        "route": "MONAI Label's async infer route"
        if args.stock
        else "grata_monai.label.app (worker threads)",
        "clients": args.clients,
        "seconds": results,
        "all_done_seconds": total,
        "settings": SMALL,
        "cpu_count": os.cpu_count(),
        "machine": platform.platform(),
    }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
