"""One source of defaults: the bundle's settings, chosen by the study in ``docs/benchmarks/study.md``.

The library's signatures, the benchmark and the tests read them from here; a test checks that the
bundle's ``configs/inference.json`` (inferer, ``roi_size``) and ``metadata.json`` (organs) agree.
"""

from __future__ import annotations

import os

import torch

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
    "CUDA_GRAPHS",
    "CHANNELS_LAST",
    "SEED",
    "ORGANS",
    "PRESETS",
    "BLEND_RANGE",
    "BUNDLE_NORM_STATS",
    "STATISTICS_CANDIDATES",
    "HISTOGRAM_BINS",
    "BODY_FLOOR",
    "DEVICE_SETTINGS",
    "for_device",
    "loader_workers",
]

ROI_SIZE = (96, 96, 48)  # sliding windows and adaptation patches (voxels of 2 x 2 x 4 mm)
SW_BATCH_SIZE = 4
OVERLAP = 0.25
STEPS = 1  # GraTa updates per volume
# Adaptation patches per step on a GPU: 2, chosen against 4 on dev MR by the rule fixed in
# docs/benchmarks/gpu_settings.py (-0.01 Dice, 20% less GPU time; CT reported, not used).
PATCHES_PER_STEP = 2
LR0 = 1e-3
PERTURB_SCALE = 1.0  # the paper's perturbation theta - g_a
# The anterior-posterior flip: no left-right mirror, so sided labels (right/left kidney) stay valid
# in the pseudo-label. One view, not two (with the superior-inferior flip): the same rule picked it
# on dev MR (+0.01 Dice, 3% less GPU time: docs/benchmarks/gpu_settings_h100_weak.md).
WEAK_TRANSFORMS = ("flip1",)
BATCH_VIEWS = True  # predict the weak views in one batch
EPISODIC = True  # every volume starts from the source weights
AMP = True  # bfloat16 autocast, on CUDA only
# The adaptation's and the statistics rule's network passes as CUDA graphs, on CUDA only.
CUDA_GRAPHS = True
# The working copy's weights in channels-last memory format, on CUDA only: cuDNN's faster bfloat16
# 3-D convolutions (23% less GPU time per MR volume, same Dice: docs/benchmarks/gpu_settings_h100.md).
CHANNELS_LAST = True
SEED = 0
ORGANS = ("liver", "right kidney", "left kidney", "spleen")  # output channels 1..4 (0: background)
# norm_stats="auto" (grata_monai.domain): the intensity-histogram distance to the source training
# data where blending from the source's statistics (below) to the volume's (above) happens, chosen
# between the training CT (0.17-0.43) and most dev MR volumes (0.47-0.78): docs/reliability.md.
BLEND_RANGE = (0.45, 0.55)
# The bundle's statistics rule, norm_stats="entropy" (grata_monai.domain.foreground_entropy): predict with
# each of these weights of the volume's own statistics (0: the source's, 1: the volume's) and keep the
# least uncertain prediction. Chosen on the CT model's dev volumes, held out on MR-trained models
# (docs/benchmarks/directions.md); it needs no source data, so it holds for any source model. The half
# blend of bundles <= 0.3.8 was never kept on those dev volumes: without it the same Dice, one
# prediction fewer (docs/benchmarks/adapt_profile_h100_two_candidates.json).
BUNDLE_NORM_STATS = "entropy"
STATISTICS_CANDIDATES = (0.0, 1.0)
HISTOGRAM_BINS = 32
BODY_FLOOR = 0.05  # intensities above it (after the bundle's [0, 1] scaling) count as body

# Named recipes for GraTaInferer(preset=...). "paper": exactly the paper's protocol (AAAI 2025):
# entropy aux, consistency pseudo loss with the paper's strong augmentation and its five weak views
# (in 3D: flips of the first two axes -- the first mirrors left and right -- and in-plane rotations),
# theta - g_a, (cos + 1)^2 / 4, Adam 1e-4, norm affine only, continual, one step per image, no guard.
PRESETS = {
    "paper": {
        "steps": 1,
        "lr0": 1e-4,
        "optimizer": "adam",
        "episodic": False,
        "weak_transforms": ("flip0", "flip1", "rot90", "rot180", "rot270"),
        "strong": "paper",
        "temperature": 1.0,
        "perturb_scale": 1.0,
        "align": True,
        "dynamic_lr": True,
        "adapt_params": "norm",
        "norm_stats": "volume",
        "guard": False,
    },
}

# The adaptation settings that follow the device the inferer runs on (the bundle reads them with
# for_device(@device)). On a CPU every window pass counts: one smaller patch (run as a pair of
# copies, which PyTorch convolves faster than a batch of one: grata_monai.pairs), one weak view, and
# the statistics settled on the two windows with the most body, where the source's and the volume's
# own statistics are compared before one prediction of the volume. That keeps GraTa at 1.64x plain
# end to end (docs/benchmarks/throughput_cpu.md; 1.89x unpaired) for 1.5 dev Dice below bundle
# 0.3.1's GPU settings; four windows give 1.2 of it back at 2.5x before pairing
# (docs/benchmarks/cpu_preset.json, throughput_cpu_4_windows.md).
DEVICE_SETTINGS = {
    "cuda": {
        "patches_per_step": PATCHES_PER_STEP,
        "patch_size": None,
        "weak_transforms": WEAK_TRANSFORMS,
        "guard": True,
        "settle_windows": None,
        "statistics_candidates": STATISTICS_CANDIDATES,
        "pair_patches": False,
    },
    "cpu": {
        "patches_per_step": 1,
        "patch_size": (64, 64, 32),
        "weak_transforms": ("flip1",),
        "guard": True,
        "settle_windows": 2,
        "statistics_candidates": STATISTICS_CANDIDATES,
        "pair_patches": True,
    },
}


def for_device(device: torch.device | str) -> dict:
    """The adaptation settings for ``device``: the CPU's on a CPU, the GPU's (the study's) elsewhere."""
    return dict(DEVICE_SETTINGS["cpu" if torch.device(device).type == "cpu" else "cuda"])


def loader_workers(cpu_count: int | None = None) -> int:
    """DataLoader workers for this machine: half its cores (the rest infer and write), 1 to 8."""
    cores = cpu_count if cpu_count is not None else (os.cpu_count() or 2)
    return max(1, min(8, cores // 2))
