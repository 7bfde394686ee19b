"""The statistics rule's BatchNorm passes, batched, and on CUDA replayed from CUDA graphs.

Both passes give what a loop of passes gives (the tests assert it), with a fraction of the kernel
launches: :meth:`StatisticsPasses.settle` normalizes each window of a batch by its own statistics, as
train-mode BatchNorm does for a batch of one window, and averages them; :meth:`StatisticsPasses.stacked`
makes a batch of ``K`` copies of the windows run through ``K`` sets of running statistics. They patch
the ``forward`` of eager ``nn.BatchNorm`` layers; :func:`can_stack` is False for TorchScript modules,
which keep the loops of :mod:`grata_monai.norms`.

Every patched layer reads and writes buffers of its :class:`StatisticsPasses` only, so each kind of
pass (settle or stacked, window batch shape, dtype, autocast) can be captured once as a CUDA graph
and replayed for every volume with that volume's values.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from grata_monai.graphs import autocast_kind, autocast_of, record, warm_up
from grata_monai.norms import batch_norm_layers

__all__ = ["Statistics", "StatisticsPasses", "can_stack"]

Statistics = list[tuple[torch.Tensor, torch.Tensor]]  # (running_mean, running_var) per BatchNorm


def can_stack(network: nn.Module) -> bool:
    """True when every BatchNorm layer of ``network`` is an eager ``nn.BatchNorm`` (not scripted)."""
    layers = batch_norm_layers(network)
    return bool(layers) and all(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in layers)


def _shape(x: torch.Tensor, stats: torch.Tensor) -> torch.Tensor:
    """``stats`` (N, C) broadcast against ``x`` (N, C, *spatial)."""
    return stats.reshape(*stats.shape, *([1] * (x.ndim - 2)))


def _scale_shift(
    mean: torch.Tensor,
    var: torch.Tensor,
    eps: float | torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``scale`` and ``shift`` (N, C, float32) that normalize by ``mean`` and ``var`` (N, C)
    and then apply the affine map ``weight``, ``bias`` (C; None: none)."""
    scale = (var.float() + eps).rsqrt()
    shift = -mean.float() * scale
    if weight is not None:
        scale, shift = scale * weight.float(), shift * weight.float() + bias.float()
    return scale, shift


def _normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``x * scale + shift`` (``scale``, ``shift``: N, C) in float32, written in ``x``'s dtype and
    memory format by one kernel."""
    return torch.addcmul(_shape(x, shift), x, _shape(x, scale), out=torch.empty_like(x))


@contextlib.contextmanager
def _patched(layers: list[nn.Module], forward: Callable) -> Iterator[None]:
    """Each of the BatchNorm ``layers``' ``forward`` replaced by ``forward(layer, x)`` inside the block."""
    for m in layers:
        m.forward = functools.partial(forward, m)
    try:
        yield
    finally:
        for m in layers:
            del m.forward


class StatisticsPasses:
    """The statistics rule's batched passes over one working copy: :meth:`settle` and :meth:`stacked`.

    Args:
        network: an eager ``nn.BatchNorm`` network (:func:`can_stack`), held by a weak reference so a
            cache keyed by it can hold its passes.
        graphs: on CUDA inputs, capture each kind of pass as a CUDA graph the second time it comes
            and replay it from then on (the graphs share one memory pool). A kind seen once (a
            volume's odd last batch, one volume in a process) runs eagerly, with no capture to pay
            for; a kind whose capture fails warns once and runs eagerly.
    """

    def __init__(self, network: nn.Module, graphs: bool = False) -> None:
        self._network = weakref.ref(network)
        self.layers = batch_norm_layers(network)
        self._index = {m: i for i, m in enumerate(self.layers)}
        self.use_graphs = graphs
        self.graphs: dict[tuple, tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.failed: set[tuple] = set()
        self._seen: set[tuple] = set()
        self._pool: tuple | None = None
        self._sums = [torch.zeros_like(t) for m in self.layers for t in _moments(m)]
        sizes = [len(m.running_mean) for m in self.layers]
        self._spans = list(zip(itertools.accumulate([0, *sizes]), sizes))  # each layer's channels
        self._eps = torch.cat([torch.full_like(m.running_var, m.eps) for m in self.layers]).float()
        self._buffers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per batch size
        # per batch size, each layer's views of those buffers
        self._affines: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self._warming = False

    @property
    def network(self) -> nn.Module:
        return self._network()

    # --- settle: each window's own statistics, averaged ------------------------------------------
    @torch.no_grad()
    def settle(self, batches: Iterable[torch.Tensor]) -> int:
        """Set every BatchNorm layer's running statistics to the mean over windows of each window's
        own statistics, the windows coming in batches (N, C, *spatial); leave the layers in eval mode.

        The same statistics as :func:`grata_monai.norms.settle_batch_norm_statistics` given one window
        per batch (running variance unbiased, as BatchNorm keeps it).

        Returns:
            the number of windows seen (0 leaves the statistics unchanged).
        """
        torch._foreach_zero_(self._sums)
        n = 0
        with _patched(self.layers, self._own_statistics):
            for batch in batches:  # only the statistics are kept: an empty output is not copied
                self._run("settle", batch, lambda b: self.network(b)[:0])
                n += len(batch)
        if n:
            torch._foreach_copy_(
                [t for m in self.layers for t in _moments(m)], torch._foreach_div(self._sums, n)
            )
        for m in self.layers:
            if n:
                m.num_batches_tracked.fill_(n)
            m.eval()
        return n

    def _own_statistics(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The patched ``forward`` of :meth:`settle`: ``x`` normalized per window, its statistics summed."""
        dims = tuple(range(2, x.ndim))
        var, mean = torch.var_mean(x.float(), dims, correction=0)
        if not self._warming:
            count = x[0, 0].numel()
            i = 2 * self._index[m]
            self._sums[i].add_(mean.sum(0))
            self._sums[i + 1].add_(var.sum(0), alpha=count / max(count - 1, 1))
        affine = (m.weight, m.bias) if m.affine else (None, None)
        return _normalize(x, *_scale_shift(mean, var, m.eps, *affine))

    # --- stacked: one prediction per set of statistics ------------------------------------------
    @torch.no_grad()
    def blends(
        self, source: Statistics, weights: Sequence[float]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The sets of running statistics that are ``weights[k]`` the layers' own and the rest
        ``source``'s (:func:`grata_monai.norms.blended_statistics`' values), in :meth:`stacked`'s
        form."""
        own = [torch.cat(t) for t in zip(*(_moments(m) for m in self.layers))]
        theirs = [torch.cat(t).to(o) for t, o in zip(zip(*source), own)]
        return tuple(torch.stack([s.lerp(o, w) for w in weights]) for s, o in zip(theirs, own))

    @contextlib.contextmanager
    def stacked(
        self, means: torch.Tensor, variances: torch.Tensor
    ) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
        """A function ``f(x)`` that predicts the windows ``x`` once with each of ``K`` sets of running
        statistics, in one pass of ``K * len(x)`` windows, the ``K`` predictions side by side along
        the channels: ``f(x).chunk(K, 1)[k]`` is ``network(x)`` with set ``k`` loaded. A set is row
        ``k`` of ``means`` and ``variances`` (K, channels of all layers, the layers' one after the
        other).

        One output, so MONAI's ``SlidingWindowInferer`` aggregates the ``K`` predictions in one go.
        The ``K`` normalizations of all layers are computed at once, per block. The BatchNorm layers
        must be in eval mode.
        """
        k, sets = len(means), self._scale_shift(means, variances)
        filled: set[int] = set()

        @torch.no_grad()
        def predict(x: torch.Tensor) -> torch.Tensor:
            if len(x) not in filled:  # each set's (scale, shift) repeated for the batch's windows
                self._fill(sets, k, len(x))
                filled.add(len(x))
            return self._run(("stacked", k), x, lambda x: _side_by_side(self.network, x, k))

        with _patched(self.layers, self._stacked_statistics):
            yield predict

    @torch.no_grad()
    def _scale_shift(
        self, means: torch.Tensor, variances: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`_scale_shift` of every layer at once: (K, channels of all layers) each."""
        weight = [m.weight if m.affine else torch.ones_like(m.running_mean) for m in self.layers]
        bias = [m.bias if m.affine else torch.zeros_like(m.running_mean) for m in self.layers]
        eps = self._eps.to(variances.device)
        return _scale_shift(means, variances, eps, torch.cat(weight), torch.cat(bias))

    def _fill(self, sets: tuple[torch.Tensor, torch.Tensor], k: int, rows: int) -> None:
        """The batch size ``k * rows``'s buffers set to ``sets`` ((K, C) each), row ``r`` to set
        ``r // rows``; each layer reads its channels' columns."""
        if k * rows not in self._buffers:
            buffers = self._buffers[k * rows] = tuple(
                t.new_empty(k * rows, t.shape[1]) for t in sets
            )
            self._affines[k * rows] = [
                tuple(b[:, start : start + size] for b in buffers) for start, size in self._spans
            ]
        for buffer, values in zip(self._buffers[k * rows], sets):
            buffer.view(k, rows, -1).copy_(values.unsqueeze(1).expand(k, rows, -1))

    def _stacked_statistics(self, m: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The patched ``forward`` of :meth:`stacked`: row ``r`` normalized by its set's statistics."""
        return _normalize(x, *self._affines[len(x)][self._index[m]])

    # --- running a pass, eagerly or from its graph --------------------------------------------------
    def _run(
        self, kind: object, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """``fn(x)``: replayed from the graph of its kind where graphs are on and ``x`` is on CUDA."""
        if not (self.use_graphs and x.is_cuda):
            return fn(x)
        key = (kind, tuple(x.shape), x.dtype, x.device, autocast_kind())
        graph = self.graphs.get(key)
        if graph is None:
            if key in self.failed or key not in self._seen:  # a kind seen once runs eagerly
                self._seen.add(key)
                return fn(x)
            graph = self._capture(key, x, fn)
            if graph is None:
                return fn(x)
        static_x, replay, out = graph
        static_x.copy_(x)
        replay.replay()
        return out.clone()

    def _capture(
        self, key: tuple, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.cuda.CUDAGraph, torch.Tensor] | None:
        """Warm ``fn`` up on a copy of ``x`` (the sums left alone), then capture it; None (warned)
        when the capture fails."""
        static_x, cast = x.clone(), autocast_of(key[-1])
        self._warming = True
        try:
            warm_up(lambda: fn(static_x), x.device, cast)
            self._warming = False
            graph, out = record(lambda: fn(static_x), cast, self._pool)
        except RuntimeError as err:  # e.g. an operation that cannot be captured
            self.failed.add(key)
            warnings.warn(
                f"CUDA graph capture failed ({err}); this statistics pass runs eagerly.",
                stacklevel=4,
            )
            return None
        finally:
            self._warming = False
        self._pool = self._pool or graph.pool()
        self.graphs[key] = static_x, graph, out
        return self.graphs[key]


def _moments(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return m.running_mean, m.running_var


def _side_by_side(network: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """``network`` on ``k`` copies of ``x``, the copies' outputs side by side along the channels."""
    return torch.cat(network(torch.cat([x] * k)).chunk(k), 1)
