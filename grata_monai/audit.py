"""The audit record of one volume: what the inferer did, and the source model it started from.

An adaptive inferer returns its logits as a ``MetaTensor`` whose ``meta[REPORT_KEY]`` holds one
report per volume of the batch, as JSON text: it travels with the prediction to the evaluator's
handlers (``grata_monai.bundle.handlers``) and through MONAI's decollation, and hosts that only
take the tensor (MONAI Label, MONAI Deploy) are unaffected. Fields: ``docs/reliability.md``.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from monai.data import MetaTensor
from torch import nn

__all__ = ["REPORT_KEY", "VolumeReport", "checksum", "attach_reports", "reports_of", "to_host"]

REPORT_KEY = "grata_report"


@dataclass
class VolumeReport:
    """What the inferer did for one volume (the audit record; see docs/reliability.md)."""

    method: str
    settings: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    guard: str | None = None
    volume_statistics_weight: float | None = (
        None  # 1: the volume's normalization statistics, 0: the source's
    )
    domain_distance: float | None = (
        None  # norm_stats="auto": intensity-histogram distance to the source data
    )
    statistics_entropy: dict | None = (
        None  # norm_stats="entropy": foreground entropy of each candidate weight
    )
    adapt_seconds: float = 0.0
    total_seconds: float = 0.0
    device: str = ""
    autocast: str = "off"  # the autocast actually used: "bfloat16" (CUDA with amp) or "off"
    source_sha256: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


_CHECKSUMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def checksum(network: nn.Module) -> str:
    """SHA-256 of the network's parameters and buffers (names, dtypes and values).

    Cached per network until any of its tensors is modified in place (tensor version counters).
    """
    state = network.state_dict()
    versions = tuple(t._version for t in state.values())
    cached = _CHECKSUMS.get(network)
    if cached is not None and cached[0] == versions:
        return cached[1]
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    _CHECKSUMS[network] = (versions, digest.hexdigest())
    return digest.hexdigest()


def to_host(values: Sequence[torch.Tensor]) -> list[list[float]]:
    """Each of ``values`` (tensors on one device) as a flat list of floats, all read in one transfer,
    so the host waits for the device once per volume rather than once per value."""
    if not values:
        return []
    device = values[0].device
    flat = torch.cat([v.detach().to(device).float().reshape(-1) for v in values]).tolist()
    out, start = [], 0
    for v in values:
        out.append(flat[start : start + v.numel()])
        start += v.numel()
    return out


def attach_reports(logits: torch.Tensor, reports: list[VolumeReport]) -> MetaTensor:
    """``logits`` (B, C, *spatial) as a batch ``MetaTensor`` carrying one report per volume."""
    out = logits if isinstance(logits, MetaTensor) else MetaTensor(logits)
    out.meta[REPORT_KEY] = [json.dumps(r.to_dict(), default=str) for r in reports]
    return out


def reports_of(output: torch.Tensor) -> list[dict]:
    """The reports an adaptive inferer attached to ``output`` (a batch, or one decollated item);
    empty for any other tensor."""
    value = getattr(output, "meta", {}).get(REPORT_KEY, [])
    return [json.loads(v) for v in ([value] if isinstance(value, str) else value)]
