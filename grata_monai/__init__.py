"""grata-monai: GraTa test-time adaptation (gradient alignment) for 3D MONAI segmentation.

The package root is the algorithm (alignment, views, losses, norms, sampling, guard, audit,
the shared adaptive inferer, GraTaInferer, baselines, defaults); :mod:`grata_monai.bundle` serves the
MONAI bundle, :mod:`grata_monai.bench` is the project's benchmark tooling and :mod:`grata_monai.deploy`
the MONAI Deploy app.
"""

from grata_monai.adaptive import AdaptiveInferer
from grata_monai.alignment import StepRecord, grata_step
from grata_monai.audit import VolumeReport, reports_of
from grata_monai.baselines import MemoInferer, NormStatsInferer, TentInferer
from grata_monai.inferer import GraTaInferer

__all__ = [
    "AdaptiveInferer",
    "GraTaInferer",
    "MemoInferer",
    "NormStatsInferer",
    "StepRecord",
    "TentInferer",
    "VolumeReport",
    "grata_step",
    "reports_of",
]
__version__ = "0.1.0"
