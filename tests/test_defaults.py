"""grata_monai.defaults: the device rule of the adaptation settings."""

from __future__ import annotations

import torch

from grata_monai import defaults


def test_gpu_settings_are_the_studys_defaults():
    gpu = defaults.for_device("cuda:1")
    assert gpu == {
        "patches_per_step": defaults.PATCHES_PER_STEP,
        "patch_size": None,
        "weak_transforms": defaults.WEAK_TRANSFORMS,
        "guard": True,
        "settle_windows": None,
        "statistics_candidates": defaults.STATISTICS_CANDIDATES,
        "pair_patches": False,
    }
    assert defaults.for_device(torch.device("cuda")) == gpu


def test_cpu_settings_are_lighter():
    cpu = defaults.for_device(torch.device("cpu"))
    assert (
        cpu == defaults.DEVICE_SETTINGS["cpu"]
        and cpu["patches_per_step"] < defaults.PATCHES_PER_STEP
    )
    assert set(cpu["weak_transforms"]) <= set(defaults.WEAK_TRANSFORMS)
    assert (
        cpu["statistics_candidates"] == defaults.STATISTICS_CANDIDATES
    )  # one rule on both devices
    assert all(
        p <= r and p % 16 == 0 for p, r in zip(cpu["patch_size"], defaults.ROI_SIZE)
    )  # the UNet's 4 halvings
    cpu["patches_per_step"] = 99  # a copy: the callers cannot change the rule
    assert (
        defaults.for_device("cpu")["patches_per_step"]
        == defaults.DEVICE_SETTINGS["cpu"]["patches_per_step"]
    )
