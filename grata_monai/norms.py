"""Normalization-layer handling: find, configure, collect and settle the adapted norm layers.

Works on eager ``nn.Module`` networks and on TorchScript modules, where norm layers are not
instances of ``nn.BatchNorm3d`` etc. and are recognised by their ``original_name``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

__all__ = [
    "NORM_TYPES",
    "PARAM_SCOPES",
    "batch_norm_layers",
    "batch_norm_moments",
    "batch_norm_statistics",
    "blend_batch_norm_statistics",
    "blended_statistics",
    "collect_params",
    "configure_model",
    "find_norm_layers",
    "head_params",
    "load_batch_norm_statistics",
    "norm_layers",
    "norm_type",
    "settle_batch_norm_statistics",
    "use_test_statistics",
]

PARAM_SCOPES = ("norm", "norm+head", "all")

NORM_TYPES = (
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "SyncBatchNorm",
    "InstanceNorm1d",
    "InstanceNorm2d",
    "InstanceNorm3d",
    "GroupNorm",
)


def norm_type(module: nn.Module) -> str | None:
    """Return the class name of a normalization layer (eager or scripted), else None."""
    name = getattr(module, "original_name", None) or type(module).__name__
    return name if name in NORM_TYPES else None


def _is_batch_norm(module: nn.Module) -> bool:
    return (norm_type(module) or "").startswith(("BatchNorm", "SyncBatchNorm"))


def _affine_params(module: nn.Module) -> list[nn.Parameter]:
    params = dict(module.named_parameters(recurse=False))
    return [params[k] for k in ("weight", "bias") if params.get(k) is not None]


def find_norm_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    """Return ``(name, module)`` for every normalization layer that has affine parameters."""
    return [(n, m) for n, m in network.named_modules() if norm_type(m) and _affine_params(m)]


def collect_params(network: nn.Module) -> tuple[list[nn.Parameter], list[str]]:
    """Return the affine weights/biases of the norm layers and their qualified names.

    Raises:
        ValueError: when the network has no norm layer with affine parameters.
    """
    params, names = [], []
    for layer_name, module in find_norm_layers(network):
        for pname, p in module.named_parameters(recurse=False):
            if pname in ("weight", "bias") and p is not None:
                params.append(p)
                names.append(f"{layer_name}.{pname}")
    if not params:
        raise ValueError(
            "The network has no normalization layer with affine parameters, so test-time adaptation "
            "has nothing to adapt. Build it with adaptable norms, e.g. MONAI UNet(norm='batch') or "
            "norm=('instance', {'affine': True})."
        )
    return params, names


def norm_layers(network: nn.Module) -> list[nn.Module]:
    """Every normalization layer of ``network`` (:data:`NORM_TYPES`), with or without affine parameters."""
    return [m for m in network.modules() if norm_type(m)]


def use_test_statistics(network: nn.Module, norms: Sequence[nn.Module] | None = None) -> None:
    """Put ``network`` in eval mode except its norm layers (``norms``, found when not given), which
    normalize with the statistics of the current test batch (train mode)."""
    network.eval()
    for module in norm_layers(network) if norms is None else norms:
        module.train()


def head_params(network: nn.Module) -> list[nn.Parameter]:
    """The parameters of the network's last block: the last child of its first module with several
    children (for MONAI's UNet, the final up-sampling block that produces the output)."""
    module = network
    while len(children := list(module.children())) == 1:
        module = children[0]
    return list(children[-1].parameters()) if children else []


def configure_model(network: nn.Module, scope: str = "norm") -> list[nn.Parameter]:
    """Prepare ``network`` (in place) for adaptation and return the adapted parameters.

    All parameters are frozen except those of ``scope`` (one of ``PARAM_SCOPES``): ``"norm"``, the
    norm layers' affine weight and bias (the paper); ``"norm+head"``, those and the last block
    (:func:`head_params`); ``"all"``, every parameter. The norm layers use test statistics
    (:func:`use_test_statistics`).
    """
    if scope not in PARAM_SCOPES:
        raise ValueError(f"Unknown parameter scope {scope!r}; choose from {PARAM_SCOPES}.")
    params, _ = collect_params(network)  # raises when there is no adaptable norm layer
    if scope == "norm+head":
        seen = {id(p) for p in params}
        params += [p for p in head_params(network) if id(p) not in seen]
    elif scope == "all":
        params = list(network.parameters())
    for p in network.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    use_test_statistics(network)
    return params


@torch.no_grad()
def settle_batch_norm_statistics(network: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Set every BatchNorm layer's running statistics to the mean of its per-batch statistics.

    Each batch is forwarded with the BatchNorm layers in train mode; a layer's batch statistics
    are recovered from its running-statistic update (TorchScript makes ``momentum`` a constant, so
    it cannot be switched to a cumulative average). Afterwards the BatchNorm layers are in eval
    mode and normalize with the settled statistics, whatever batches inference later uses.

    Returns:
        the number of batches seen (0 leaves the network's statistics unchanged).
    """
    layers = batch_norm_layers(network)
    for m in layers:
        m.train()
    sums = [[torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)] for m in layers]
    n = 0
    for batch in batches:
        for m in layers:
            m.running_mean.zero_()
            m.running_var.zero_()
            m.num_batches_tracked.zero_()
        network(batch)
        for m, acc in zip(layers, sums):
            factor = 1.0 if m.momentum is None else float(m.momentum)
            acc[0] += m.running_mean / factor
            acc[1] += m.running_var / factor
        n += 1
    for m, (mean_sum, var_sum) in zip(layers, sums):
        if n:
            m.running_mean.copy_(mean_sum / n)
            m.running_var.copy_(var_sum / n)
            m.num_batches_tracked.fill_(n)
        m.eval()
    return n


def batch_norm_layers(network: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers (eager or scripted) that keep running statistics."""
    return [
        m for _, m in network.named_modules() if _is_batch_norm(m) and m.running_mean is not None
    ]


def batch_norm_moments(network: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every BatchNorm layer's running (mean, var) themselves: they change as the layer's do."""
    return [(m.running_mean, m.running_var) for m in batch_norm_layers(network)]


def batch_norm_statistics(network: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A copy of every BatchNorm layer's running (mean, var), to restore with :func:`load_batch_norm_statistics`."""
    return [(mean.clone(), var.clone()) for mean, var in batch_norm_moments(network)]


@torch.no_grad()
def load_batch_norm_statistics(
    network: nn.Module, statistics: list[tuple[torch.Tensor, torch.Tensor]]
) -> None:
    """Put back the running statistics saved by :func:`batch_norm_statistics`."""
    for m, (mean, var) in zip(batch_norm_layers(network), statistics, strict=True):
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)


def blended_statistics(
    source: list[tuple[torch.Tensor, torch.Tensor]],
    own: list[tuple[torch.Tensor, torch.Tensor]],
    weight: float,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``weight * own + (1 - weight) * source`` per layer's (mean, var), on ``own``'s device; 0 gives
    the source's exactly, 1 the own."""
    return [
        (sm.to(om).lerp(om, weight), sv.to(ov).lerp(ov, weight))
        for (sm, sv), (om, ov) in zip(source, own, strict=True)
    ]


@torch.no_grad()
def blend_batch_norm_statistics(network: nn.Module, source: nn.Module, weight: float) -> None:
    """Set ``network``'s BatchNorm running statistics to the :func:`blended_statistics` of
    ``source``'s (which may sit on another device) and its own."""
    own, theirs = batch_norm_statistics(network), batch_norm_statistics(source)
    load_batch_norm_statistics(network, blended_statistics(theirs, own, weight))
