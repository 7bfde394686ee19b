"""Single patches run as pairs on a CPU, where PyTorch's fast convolutions need a batch of two.

PyTorch sends a float32 3-D convolution on a CPU to oneDNN when the batch has two or more images,
and a batch of one to its native kernel when the layer is small (batch x channels x the first two
spatial sizes at most 20,480). On this project's 2-core machine the bundle's network on a batch of
one 64x64x32 patch takes 95 ms forward, and 44 ms on a batch of two; forward and backward 190 ms
against 102 ms. For 96x96x48 windows the native kernel is as fast as oneDNN per image, so pairing
them doubles the work: the option is for small patches (the CPU settings'), see
:data:`grata_monai.defaults.DEVICE_SETTINGS`.

Two copies of one patch give exactly the outputs of the one: every BatchNorm, in batch-statistics
mode too, sees the same mean and variance. As a function of the network's parameters the first
copy's output is the single patch's, so its gradients are too (the tests assert both).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["PairedPasses"]


class PairedPasses(nn.Module):
    """``network(x)``, with a CPU batch of one run as two copies of it (the first copy's output).

    Other batches, and batches off the CPU, run as they are.

    Args:
        network: the network; it is called, never changed.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) != 1 or x.device.type != "cpu":
            return self.network(x)
        return self.network(torch.cat([x, x]))[:1]
