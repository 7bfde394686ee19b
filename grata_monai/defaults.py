"""One source of defaults: the bundle's settings, chosen by the sweep in ``docs/benchmarks.md``.

The library's signatures, the benchmark and the tests read them from here; a test checks that the
bundle's ``configs/inference.json`` (inferer, ``roi_size``) and ``metadata.json`` (organs) agree.
"""

from __future__ import annotations

__all__ = [
    "ROI_SIZE",
    "SW_BATCH_SIZE",
    "OVERLAP",
    "STEPS",
    "PATCHES_PER_STEP",
    "LR0",
    "PERTURB_SCALE",
    "WEAK_TRANSFORMS",
    "BATCH_VIEWS",
    "EPISODIC",
    "AMP",
    "SEED",
    "ORGANS",
]

ROI_SIZE = (96, 96, 48)  # sliding windows and adaptation patches (voxels of 2 x 2 x 4 mm)
SW_BATCH_SIZE = 4
OVERLAP = 0.25
STEPS = 1  # GraTa updates per volume
PATCHES_PER_STEP = 4
LR0 = 1e-3
PERTURB_SCALE = 1.0  # the paper's perturbation theta - g_a
# The anterior-posterior and superior-inferior flips: no left-right mirror, so sided labels
# (right/left kidney) stay valid in the pseudo-label.
WEAK_TRANSFORMS = ("flip1", "flip2")
BATCH_VIEWS = True  # predict the weak views in one batch
EPISODIC = True  # every volume starts from the source weights
AMP = True  # bfloat16 autocast, on CUDA only
SEED = 0
ORGANS = ("liver", "right kidney", "left kidney", "spleen")  # output channels 1..4 (0: background)
