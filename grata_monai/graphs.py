"""CUDA graphs of the adaptation's network passes: each kind of pass is captured once per working copy
of the network, then replayed for every volume.

The adaptation runs the same few passes on every volume: patches of one size, with gradients for the
auxiliary and strong views and without for the weak views and the guard's checks. Eagerly each pass
launches hundreds of kernels from Python, and on a fast GPU the launching, not the GPU, sets the
pace. A replayed graph launches them all at once. The adapted parameters are updated in place, so
a replay always uses their current values. Inputs are copied into the graph's static input, outputs
and gradients are copied out of its static buffers, so a later replay never changes what an earlier
one returned.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from grata_monai.foreach import clones
from grata_monai.turns import TURNS

__all__ = ["CapturedPasses", "autocast_kind", "autocast_of", "capturing", "record", "warm_up"]

WARMUP = 2  # eager passes on a side stream before capturing (cuDNN's choices, the allocator)


@dataclass
class _Graph:
    """One captured pass: a forward graph and, for passes with gradients, a backward graph."""

    x: torch.Tensor  # the static input
    out: torch.Tensor  # the static output
    forward: torch.cuda.CUDAGraph
    backward: torch.cuda.CUDAGraph | None = None
    grad_out: torch.Tensor | None = None  # the static gradient of the output
    grads: Sequence[torch.Tensor | None] = ()  # the static gradients of the parameters
    pending: bool = False  # replayed forward whose backward has not run yet

    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.forward.replay()
        return self.out.clone()


class _Replay(torch.autograd.Function):
    """A captured pass as one autograd node: its backward replays the backward graph."""

    @staticmethod
    def forward(ctx, graph: _Graph, x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.graph = graph
        graph.pending = True
        return graph.run(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple:
        graph = ctx.graph
        graph.grad_out.copy_(grad)
        graph.backward.replay()
        graph.pending = False
        return (None, None, *clones(graph.grads))


class CapturedPasses(nn.Module):
    """``network(x)`` through CUDA graphs: each kind of pass captured on first use, then replayed.

    A kind of pass is the input's shape and dtype, whether gradients are on, the autocast dtype and
    the train/eval mode of every module. Passes with gradients give gradients for ``params`` only
    (the adapted parameters; the others must be frozen). Inputs off CUDA, inputs that require
    gradients, a second pass with gradients before the first one's backward, and kinds whose capture
    failed (warned once) run eagerly.

    Args:
        network: the working copy; its parameters and buffers are updated in place only. It is held
            by a weak reference, so a cache keyed by the network can hold its passes.
        params: the parameters that get gradients.
    """

    def __init__(self, network: nn.Module, params: Sequence[nn.Parameter]) -> None:
        super().__init__()
        self._network, self.params = weakref.ref(network), list(params)
        self._below = list(network.modules())[1:]  # not the root: it is held by a weak reference
        self.graphs: dict[tuple, _Graph] = {}
        self.failed: set[tuple] = set()

    @property
    def network(self) -> nn.Module:
        return self._network()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not x.is_cuda or x.requires_grad:
            return self.network(x)
        grad = torch.is_grad_enabled()
        key = self._kind(x, grad)
        graph = self.graphs.get(key)
        if graph is None and key not in self.failed:
            graph = self._capture(key, x, grad)
        if graph is None or (grad and graph.pending):
            return self.network(x)
        if grad:
            return _Replay.apply(graph, x, *self.params)
        return graph.run(x)

    def _kind(self, x: torch.Tensor, grad: bool) -> tuple:
        modes = (self.network.training, *(m.training for m in self._below))
        return tuple(x.shape), x.dtype, x.device, grad, autocast_kind(), modes

    def _capture(self, key: tuple, x: torch.Tensor, grad: bool) -> _Graph | None:
        try:
            graph = self._record(x, grad, key[4])
        except RuntimeError as err:  # e.g. an operation that cannot be captured
            self.failed.add(key)
            warnings.warn(
                f"CUDA graph capture failed ({err}); this pass runs eagerly.", stacklevel=3
            )
            return None
        self.graphs[key] = graph
        return graph

    def _record(self, x: torch.Tensor, grad: bool, autocast: torch.dtype | bool) -> _Graph:
        """Warm up on a side stream, then capture the forward (and backward) pass of ``x``'s kind."""
        static_x = x.clone()
        cast = autocast_of(autocast)
        params = [p for p in self.params if p.requires_grad]

        def step() -> None:
            out = self.network(static_x)
            if grad:
                torch.autograd.grad(out, params, torch.ones_like(out), allow_unused=True)

        warm_up(step, x.device, cast)
        forward, out = record(lambda: self.network(static_x), cast)
        graph = _Graph(static_x, out, forward)
        if grad:
            graph.grad_out = torch.empty_like(out)
            graph.backward = torch.cuda.CUDAGraph()
            with capturing(graph.backward, forward.pool()):
                grads = torch.autograd.grad(out, params, graph.grad_out, allow_unused=True)
            by_param = dict(zip(map(id, params), grads))
            graph.grads = [by_param.get(id(p)) for p in self.params]
            graph.out = (
                out.detach()
            )  # frees the captured autograd graph (and its side-stream nodes)
        return graph


def autocast_kind() -> torch.dtype | bool:
    """The CUDA autocast dtype in force, else False: part of a pass's kind."""
    return torch.is_autocast_enabled("cuda") and torch.get_autocast_dtype("cuda")


def autocast_of(kind: torch.dtype | bool) -> torch.autocast:
    """The autocast context of :func:`autocast_kind`'s ``kind``, its cache off (captures must not keep
    cast weights that go stale)."""
    return torch.autocast("cuda", dtype=kind or None, enabled=bool(kind), cache_enabled=False)


def warm_up(step: Callable[[], object], device: torch.device, cast: torch.autocast) -> None:
    """``step()`` run ``WARMUP`` times on a side stream before a capture: cuDNN picks its algorithms
    and the allocator its blocks outside the graph."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side), cast:
        for _ in range(WARMUP):
            step()
    torch.cuda.current_stream(device).wait_stream(side)


def record(
    fn: Callable[[], torch.Tensor], cast: torch.autocast, pool: tuple | None = None
) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
    """``fn()`` captured as a CUDA graph (in the memory ``pool`` when given), and its static output."""
    graph = torch.cuda.CUDAGraph()
    with capturing(graph, pool), cast:
        out = fn()
    return graph, out


@contextlib.contextmanager
def capturing(graph: torch.cuda.CUDAGraph, pool: tuple | None = None) -> Iterator[None]:
    """``torch.cuda.graph`` capturing into ``graph`` while no other thread runs an inferer
    (:data:`~grata_monai.turns.TURNS`). Unsafe CUDA calls fail in the capturing thread only."""
    with TURNS.alone(), torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
        yield
