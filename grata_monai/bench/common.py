"""What the benchmark, the study and the other commands share: the bundle's configs, network and
labelled data, the device, the code revision and the results files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser
from monai.data import load_decathlon_datalist
from tqdm import tqdm

__all__ = [
    "read_config",
    "bundle_config",
    "load_bundle",
    "prepare",
    "names",
    "pick_device",
    "device_name",
    "sync",
    "git_revision",
    "out_path",
    "write_json",
]


def read_config(config_file: str | Path, **overrides: Any) -> ConfigParser:
    """A config as ``monai.bundle run`` reads it (MONAI's ``ConfigParser``), with ``overrides`` set."""
    parser = ConfigParser()
    parser.read_config(str(config_file))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def bundle_config(bundle_dir: str | Path, name: str = "inference.json") -> ConfigParser:
    """The bundle's ``configs/<name>`` with ``bundle_root`` set to ``bundle_dir``."""
    return read_config(Path(bundle_dir) / "configs" / name, bundle_root=str(bundle_dir))


def load_bundle(
    bundle_dir: str | Path, device: torch.device, ckpt: str | Path | None = None
) -> tuple[torch.nn.Module, Any, dict]:
    """The bundle's network (with ``ckpt``, by default its ``models/model.pt``), labelled
    preprocessing (``validate#preprocessing`` of ``train.json``) and settings."""
    parser = bundle_config(bundle_dir, "train.json")
    network = parser.get_parsed_content("network_def", instantiate=True)
    state = torch.load(
        ckpt or Path(bundle_dir) / "models" / "model.pt", map_location="cpu", weights_only=True
    )
    network.load_state_dict(state.get("model", state))
    preprocessing = parser.get_parsed_content("validate#preprocessing", instantiate=True)
    return network.to(device).eval(), preprocessing, {"roi_size": list(parser["roi_size"])}


def prepare(
    data_dir: str | Path, key: str, preprocessing: Any, limit: int | None = None
) -> list[dict]:
    """Load and preprocess the ``key`` split of ``data_dir/datalist.json`` (image, label, name, seconds)."""
    items = load_decathlon_datalist(
        str(Path(data_dir) / "datalist.json"), True, key, base_dir=str(data_dir)
    )
    volumes = []
    for item in tqdm(items[:limit], desc=f"load {key}", leave=False):
        start = time.perf_counter()
        data = preprocessing(dict(item))
        volumes.append(
            {
                "name": Path(item["image"]).name.split(".")[0],
                "image": torch.as_tensor(data["image"])[None],
                "label": torch.as_tensor(data["label"])[None],
                "preprocess_s": time.perf_counter() - start,
            }
        )
    return volumes


def names(value: str | tuple) -> tuple:
    """A comma-separated string (as from the command line) or a sequence, as a tuple of names."""
    return tuple(v for v in value.split(",") if v) if isinstance(value, str) else tuple(value)


def pick_device(device: str | None) -> torch.device:
    """``device``, else CUDA when available, else the CPU."""
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def device_name(device: torch.device) -> str:
    return (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({platform.processor() or 'cpu'})"
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (for timings)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def git_revision() -> str:
    """The revision of this code: ``$GRATA_GIT_REVISION`` (a tree without .git), else git's, else "unknown"."""
    if os.environ.get("GRATA_GIT_REVISION"):
        return os.environ["GRATA_GIT_REVISION"]
    try:
        here = Path(__file__).parent
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True
        )
        return result.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def out_path(out: str | None) -> Path:
    """``out`` as a path; a command that writes results needs one."""
    if not out:
        raise ValueError("pass --out <file.json>: where to write this command's results.")
    return Path(out)


def write_json(out: Path, result: Any) -> None:
    """Write ``result`` to ``out`` (the command's own output, replaced), creating its folder."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
