"""Finding, configuring and settling normalization layers, eager and TorchScript."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from grata_monai.norms import (
    batch_norm_statistics,
    blend_batch_norm_statistics,
    blended_statistics,
    collect_params,
    configure_model,
    find_norm_layers,
    norm_type,
    settle_batch_norm_statistics,
)
from tests.conftest import tiny_unet


@pytest.mark.parametrize(
    "norm", ["batch", ("instance", {"affine": True}), ("group", {"num_groups": 1})]
)
@pytest.mark.parametrize("scripted", [False, True])
def test_finds_affine_norms_eager_and_scripted(norm, scripted):
    net = tiny_unet(norm)
    n_eager = len(find_norm_layers(net))
    net = torch.jit.script(net) if scripted else net
    layers = find_norm_layers(net)
    assert len(layers) == n_eager > 0
    params, names = collect_params(net)
    assert len(params) == 2 * len(layers)
    assert all(n.endswith((".weight", ".bias")) for n in names)


def test_no_affine_norm_is_an_error():
    net = tiny_unet("instance")  # MONAI's default: InstanceNorm3d(affine=False)
    assert (
        norm_type(next(m for m in net.modules() if isinstance(m, nn.InstanceNorm3d)))
        == "InstanceNorm3d"
    )
    with pytest.raises(ValueError, match="nothing to adapt"):
        collect_params(net)
    with pytest.raises(ValueError, match="nothing to adapt"):
        configure_model(torch.jit.script(net))


@pytest.mark.parametrize("scripted", [False, True])
def test_configure_model_freezes_all_but_norm_affine(scripted):
    net = tiny_unet()
    net = torch.jit.script(net) if scripted else net
    params = configure_model(net)
    adapted = {id(p) for p in params}
    for p in net.parameters():
        assert p.requires_grad == (id(p) in adapted)
    for _, m in net.named_modules():
        if norm_type(m):
            assert m.training
        elif not list(m.children()):
            assert not m.training, m  # dropout and friends stay in eval mode
    loss = net(torch.rand(2, 1, 16, 16, 16)).mean()
    grads = torch.autograd.grad(loss, params)
    assert all(g.abs().sum() > 0 for g in grads[:2])


@pytest.mark.parametrize("scripted", [False, True])
def test_settle_uses_mean_of_per_batch_statistics(scripted):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv3d(1, 2, 1), nn.BatchNorm3d(2))
    net = torch.jit.script(net) if scripted else net
    batches = [torch.randn(1, 1, 4, 4, 4) * s + s for s in (1.0, 3.0, 5.0)]
    with torch.no_grad():
        feats = [net[0](b) for b in batches]
    n = settle_batch_norm_statistics(net, batches)
    bn = dict(net.named_modules())[
        "1"
    ]  # (indexing a scripted Sequential returns the eager original)
    assert n == 3 and not bn.training
    mean = torch.stack([f.mean(dim=(0, 2, 3, 4)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3, 4), unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weight", [0.0, 0.5, 1.0])
def test_blend_mixes_own_and_source_statistics(weight):
    """The blend is ``weight * own + (1 - weight) * source`` per layer; 0 and 1 give either exactly."""
    source, own = tiny_unet(seed=0), tiny_unet(seed=1)
    for i, net in enumerate((source, own)):
        for m in net.modules():
            if isinstance(m, nn.BatchNorm3d):
                m.running_mean.uniform_(-1, 1).add_(i)
                m.running_var.uniform_(0.5, 2.0).mul_(i + 1)
    theirs, mine = batch_norm_statistics(source), batch_norm_statistics(own)
    blended = blended_statistics(theirs, mine, weight)
    blend_batch_norm_statistics(own, source, weight)
    for (sm, sv), (om, ov), (bm, bv), (nm, nv) in zip(
        theirs, mine, blended, batch_norm_statistics(own), strict=True
    ):
        torch.testing.assert_close(bm, weight * om + (1 - weight) * sm)
        torch.testing.assert_close(bv, weight * ov + (1 - weight) * sv)
        assert torch.equal(nm, bm) and torch.equal(nv, bv)
        if weight in (0.0, 1.0):
            assert torch.equal(bm, om if weight else sm) and torch.equal(bv, ov if weight else sv)
