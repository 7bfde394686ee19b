"""grata_monai.pairs: a CPU batch of one run as two copies gives that batch's outputs and gradients."""

from __future__ import annotations

import pytest
import torch

from grata_monai import GraTaInferer, reports_of
from grata_monai.losses import entropy
from grata_monai.norms import configure_model, use_test_statistics
from grata_monai.pairs import PairedPasses
from tests.conftest import tiny_unet


@pytest.mark.parametrize("batch_statistics", [True, False])
def test_pair_gives_the_outputs_and_gradients_of_the_single_patch(batch_statistics):
    network = tiny_unet()
    params = configure_model(network, "norm")
    if batch_statistics:
        use_test_statistics(network)  # BatchNorm normalizes by the batch: the pair's is the one's
    else:
        network.eval()
    x = torch.randn(1, 1, 16, 16, 16)
    paired = PairedPasses(network)
    outputs, grads = [], []
    for run in (network, paired):
        out = run(x)
        outputs.append(out)
        grads.append(torch.autograd.grad(entropy(out), params))
    assert outputs[1].shape == outputs[0].shape
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)  # other kernels
    for single, pair in zip(*grads):
        torch.testing.assert_close(pair, single, rtol=1e-4, atol=1e-7)


def test_pair_runs_larger_batches_as_they_are():
    seen = []
    network = tiny_unet().eval()
    network.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    paired = PairedPasses(network)
    with torch.no_grad():
        paired(torch.randn(1, 1, 16, 16, 16))
        paired(torch.randn(3, 1, 16, 16, 16))
    assert seen == [2, 3]


def test_inferer_pairs_single_patches_with_the_same_result(volume):
    """pair_patches: the adaptation's passes go through PairedPasses on a CPU; the output is unchanged."""
    network, cpu = tiny_unet(), torch.device("cpu")
    runs = {}
    for pair in (False, True):
        inferer = GraTaInferer((16, 16, 16), patches_per_step=1, pair_patches=pair)
        with torch.no_grad():
            assert isinstance(inferer.configure(network, cpu).passes, PairedPasses) == pair
            runs[pair] = inferer(volume, network)
    torch.testing.assert_close(runs[True], runs[False], rtol=1e-4, atol=1e-5)
    assert reports_of(runs[True])[0]["settings"]["pair_patches"] is True
    assert reports_of(runs[False])[0]["settings"]["pair_patches"] is False
