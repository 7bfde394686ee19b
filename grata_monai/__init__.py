"""grata-monai: GraTa test-time adaptation (gradient alignment) for 3D MONAI segmentation."""

from grata_monai.alignment import StepRecord, grata_step
from grata_monai.baselines import MemoInferer, NormStatsInferer, TentInferer
from grata_monai.inferer import AdaptiveInferer, GraTaInferer, VolumeReport

__all__ = [
    "AdaptiveInferer",
    "GraTaInferer",
    "MemoInferer",
    "NormStatsInferer",
    "StepRecord",
    "TentInferer",
    "VolumeReport",
    "grata_step",
]
__version__ = "0.1.0"
