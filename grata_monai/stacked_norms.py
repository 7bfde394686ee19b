"""BatchNorm passes batched on the GPU: many windows' statistics from one pass, and one prediction
per set of statistics from one pass.

Both give what a loop of passes gives (the tests assert it), with a fraction of the kernel launches:
:func:`settle_per_window` normalizes each window of a batch by its own statistics, as train-mode
BatchNorm does for a batch of one window, and averages them; :func:`stacked_statistics` makes a
batch of ``K`` copies of the windows run through ``K`` sets of running statistics. They patch the
``forward`` of eager ``nn.BatchNorm`` layers; :func:`can_stack` is False for TorchScript modules,
which keep the loops of :mod:`grata_monai.norms`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from grata_monai.norms import batch_norm_layers

__all__ = ["Statistics", "can_stack", "settle_per_window", "stacked_statistics"]

Statistics = list[tuple[torch.Tensor, torch.Tensor]]  # (running_mean, running_var) per BatchNorm


def can_stack(network: nn.Module) -> bool:
    """True when every BatchNorm layer of ``network`` is an eager ``nn.BatchNorm`` (not scripted)."""
    layers = batch_norm_layers(network)
    return bool(layers) and all(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layers)


def _shape(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``stats`` (N, C) broadcast against ``x`` (N, C, *spatial)."""
    return stats.reshape(*stats.shape, *([1] * (x.ndim - 2)))


def _scale_shift(
    m: nn.Module, mean: torch.Tensor, var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``scale`` and ``shift`` (N, C, float32) that normalize by ``mean`` and ``var`` (N, C)
    and then apply ``m``'s affine map."""
    scale = (var.float() + m.eps).rsqrt()
    shift = -mean.float() * scale
    if m.affine:
        scale, shift = scale * m.weight.float(), shift * m.weight.float() + m.bias.float()
    return scale, shift


def _normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` (``scale``, ``shift``: N, C) in float32, written in ``x``'s dtype and
    memory format by one kernel."""
    scale, shift = _shape(x, scale), _shape(x, shift)
    return torch.addcmul(shift, x, scale, out=torch.empty_like(x))


@contextlib.contextmanager
def _patched(network: nn.Module, forward: Callable) -> Iterator[list[nn.Module]]:
    """Every BatchNorm layer's ``forward`` replaced by ``forward(layer, x)`` inside the block."""
    layers = batch_norm_layers(network)
    for m in layers:
        m.forward = forward.__get__(m)
    try:
        yield layers
    finally:
        for m in layers:
            del m.forward


@torch.no_grad()
def settle_per_window(network: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every BatchNorm layer's running statistics to the mean over windows of each window's own
    statistics, the windows coming in batches (N, C, *spatial); leave the layers in eval mode.

    The same statistics as :func:`grata_monai.norms.settle_batch_norm_statistics` given one window per
    batch (running variance unbiased, as BatchNorm keeps it). Needs :func:`can_stack`.

    Returns:
        the number of windows seen (0 leaves the statistics unchanged).
    """
    sums: dict[nn.Module, list[torch.Tensor]] = {}

    def own_statistics(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, x.ndim))
        var, mean = torch.var_mean(x.float(), dims, correction=0)
        count = x[0, 0].numel()
        unbiased = var * (count / max(count - 1, 1))
        acc = sums.setdefault(
            m, [torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)]
        )
        acc[0] += mean.sum(0)
        acc[1] += unbiased.sum(0)
        return _normalize(x, *_scale_shift(m, mean, var))

    n = 0
    with _patched(network, own_statistics) as layers:
        for batch in batches:
            network(batch)
            n += len(batch)
    for m in layers:
        if n and m in sums:
            m.running_mean.copy_(sums[m][0] / n)
            m.running_var.copy_(sums[m][1] / n)
            m.num_batches_tracked.fill_(n)
        m.eval()
    return n


@contextlib.contextmanager
def stacked_statistics(
    network: nn.Module, statistics: list[Statistics]
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """A function ``f(x)`` that predicts the windows ``x`` once with each set of running statistics, in
    one pass of ``K * len(x)`` windows, the ``K`` predictions side by side along the channels:
    ``f(x).chunk(K, 1)[k]`` is ``network(x)`` with ``statistics[k]`` loaded.

    One output, so MONAI's ``SlidingWindowInferer`` aggregates the ``K`` predictions in one go. Each
    layer's ``K`` normalizations are computed once per block; the BatchNorm layers must be in eval
    mode; needs :func:`can_stack`.
    """
    k = len(statistics)
    layers = batch_norm_layers(network)
    affines = {
        m: _scale_shift(
            m,
            torch.stack([s[i][0] for s in statistics]),
            torch.stack([s[i][1] for s in statistics]),
        )
        for i, m in enumerate(layers)
    }
    rows_of: dict[tuple[nn.Module, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def stacked(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        rows = len(x) // k
        if (m, rows) not in rows_of:  # ``rows`` windows per set: each set's rows repeated
            rows_of[m, rows] = tuple(t.repeat_interleave(rows, 0) for t in affines[m])
        return _normalize(x, *rows_of[m, rows])

    def predict(x: torch.Tensor) -> torch.Tensor:
        return torch.cat(network(torch.cat([x] * k)).chunk(k), 1)

    with _patched(network, stacked):
        yield predict
