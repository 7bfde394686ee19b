"""CUDA graphs of the adaptation's passes give what the eager passes give; off CUDA they are the network."""

from __future__ import annotations

import copy
import gc
import threading
import weakref

import pytest
import torch

from grata_monai import GraTaInferer
from grata_monai.audit import reports_of
from grata_monai.graphs import CapturedPasses
from grata_monai.norms import configure_model
from tests.conftest import tiny_unet

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def _pair(device: str) -> tuple:
    """An eager working copy and a graphed one, configured for adaptation, on ``device``."""
    eager, graphed = tiny_unet().to(device), tiny_unet().to(device)
    eager_params, params = configure_model(eager), configure_model(graphed)
    return eager, eager_params, CapturedPasses(graphed, params), params


def _batch(device: str, seed: int, n: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 16, 16, 16, generator=g).to(device)


def _grads(forward, params, x: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(forward(x).softmax(1)[:, 1].mean(), params))


def test_off_cuda_the_passes_are_the_network(volume):
    """On a CPU the passes run the network itself, and the report says graphs were not used."""
    with torch.no_grad():
        (report,) = reports_of(
            GraTaInferer(roi_size=(16, 16, 16), cuda_graphs=True)(volume, tiny_unet())
        )
    assert report["settings"]["cuda_graphs"] is False
    eager, eager_params, passes, params = _pair("cpu")
    x = _batch("cpu", 0)
    with torch.no_grad():
        torch.testing.assert_close(passes(x), eager(x), rtol=0, atol=0)
    for a, b in zip(_grads(passes, params, x), _grads(eager, eager_params, x), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert passes.graphs == {}


def test_a_cache_keyed_by_the_network_does_not_keep_it_alive():
    """The inferer keeps each working copy's passes by the copy: dropped copies free their graphs."""
    network = tiny_unet()
    cache = weakref.WeakKeyDictionary({network: CapturedPasses(network, configure_model(network))})
    del network
    gc.collect()
    assert len(cache) == 0


@cuda
def test_replays_follow_the_parameters_as_they_are_updated():
    """Several steps: each replay's outputs and gradients equal eager ones at the current weights."""
    eager, eager_params, passes, params = _pair("cuda")
    for step in range(3):
        x = _batch("cuda", step)
        with torch.no_grad():
            torch.testing.assert_close(passes(x), eager(x), rtol=1e-4, atol=1e-5)
        grads, expected = _grads(passes, params, x), _grads(eager, eager_params, x)
        for a, b in zip(grads, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
        with torch.no_grad():  # the same in-place update on both
            torch._foreach_add_(params, grads, alpha=-0.5)
            torch._foreach_add_(eager_params, expected, alpha=-0.5)
    assert len(passes.graphs) == 2  # one pass with gradients, one without


@cuda
def test_outputs_and_gradients_are_not_overwritten_by_later_replays():
    _, _, passes, params = _pair("cuda")
    x0, x1 = _batch("cuda", 0), _batch("cuda", 1)
    with torch.no_grad():
        first = passes(x0)
        kept = first.clone()
        passes(x1)
    torch.testing.assert_close(first, kept, rtol=0, atol=0)
    g0 = _grads(passes, params, x0)
    kept = [g.clone() for g in g0]
    _grads(passes, params, x1)
    for a, b in zip(g0, kept):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@cuda
def test_a_second_pass_before_the_first_backward_runs_eagerly():
    eager, eager_params, passes, params = _pair("cuda")
    x0, x1 = _batch("cuda", 0), _batch("cuda", 1)
    loss = passes(x0).softmax(1)[:, 1].mean() + passes(x1).softmax(1)[:, 2].mean()
    expected = eager(x0).softmax(1)[:, 1].mean() + eager(x1).softmax(1)[:, 2].mean()
    for a, b in zip(
        torch.autograd.grad(loss, params), torch.autograd.grad(expected, eager_params), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@cuda
def test_grata_with_graphs_segments_as_without(volume):
    """The bundle's path (autocast, guard, entropy rule) with and without graphs, over two volumes:
    the second replays the graphs captured on the first."""
    unet = tiny_unet().cuda()
    second = (volume.flip(2) * 0.9).cuda()
    outputs = {}
    for graphs in (False, True):
        inferer = GraTaInferer(
            roi_size=(16, 16, 16), patches_per_step=2, norm_stats="entropy", cuda_graphs=graphs
        )
        source = copy.deepcopy(unet)
        with torch.no_grad():
            outputs[graphs] = [inferer(v, source) for v in (volume.cuda(), second)]
    for eager, graphed in zip(outputs[False], outputs[True], strict=True):
        assert (eager.argmax(1) == graphed.argmax(1)).float().mean() > 0.999
        (e,), (g,) = reports_of(eager), reports_of(graphed)
        assert g["settings"]["cuda_graphs"] and not e["settings"]["cuda_graphs"]
        assert e["steps"][0]["cosine"] == pytest.approx(g["steps"][0]["cosine"], abs=1e-3)


@cuda
def test_threads_inferring_at_once_capture_in_turn_and_finish(volume):
    """Three threads share one inferer and one network, each in its own CUDA stream, as hosts serve
    requests at once: each working copy captures its graphs while the others wait (grata_monai.turns),
    every thread finishes, and each gets the labels of a call made alone."""
    unet, x = tiny_unet().cuda(), volume.cuda()
    inferer = GraTaInferer(roi_size=(16, 16, 16), patches_per_step=2, norm_stats="entropy")
    with torch.no_grad():
        alone = inferer(x, unet).argmax(1)
    inferer = GraTaInferer(roi_size=(16, 16, 16), patches_per_step=2, norm_stats="entropy")
    labels: list[torch.Tensor] = []

    def infer() -> None:
        with torch.cuda.stream(torch.cuda.Stream()), torch.no_grad():
            for _ in range(3):  # a kind of pass is captured on its first or second sight
                out = inferer(x, unet).argmax(1)
            torch.cuda.current_stream().synchronize()
            labels.append(out)

    threads = [threading.Thread(target=infer, daemon=True) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "an inferring thread never finished"
    assert len(labels) == 3
    for out in labels:
        assert (out == alone).float().mean() > 0.999
