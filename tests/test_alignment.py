"""The GraTa step against an independent computation of the seven steps."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from grata_monai.alignment import cosine, dynamic_lr, grata_step


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1)
    )


def aux(network, x):
    return network(x).pow(2).mean()


def pse(network, x):
    return torch.log_softmax(network(x), dim=1)[:, 0].mean().neg()


def independent_step(net, x, lr0, scale):
    """The paper's update written out directly with autograd on separate copies."""
    norm = net[1]
    theta = torch.cat([norm.weight.detach().flatten(), norm.bias.detach().flatten()])
    g_a = torch.autograd.grad(aux(net, x), [norm.weight, norm.bias])
    perturbed = copy.deepcopy(net)
    with torch.no_grad():
        perturbed[1].weight -= scale * g_a[0]
        perturbed[1].bias -= scale * g_a[1]
    g_p = torch.autograd.grad(pse(perturbed, x), [perturbed[1].weight, perturbed[1].bias])
    g_a, g_p = torch.cat([g.flatten() for g in g_a]), torch.cat([g.flatten() for g in g_p])
    cos = torch.nn.functional.cosine_similarity(g_a, g_p, dim=0).item()
    lr = lr0 * (cos + 1) ** 2 / 4
    # Adam's first step: m_hat = g, v_hat = g^2  ->  theta - lr * g / (|g| + eps)
    new_theta = theta - lr * g_p / (g_p.abs() + 1e-8)
    return cos, lr, new_theta


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_grata_step_matches_hand_computation(scale):
    net = tiny_net().train()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    cos, lr, new_theta = independent_step(copy.deepcopy(net), x, 1e-2, scale)
    params = [net[1].weight, net[1].bias]
    for p in net.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    record = grata_step(
        net, params, torch.optim.Adam(params, lr=1e-2), x, aux, pse, 1e-2, perturb_scale=scale
    )
    assert float(record.cosine) == pytest.approx(cos, abs=1e-5)
    assert float(record.lr) == pytest.approx(lr, rel=1e-5)
    got = torch.cat([p.detach().flatten() for p in params])
    torch.testing.assert_close(got, new_theta, rtol=1e-5, atol=1e-6)


def test_ablations_change_what_they_say():
    net = tiny_net().train()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    params = [net[1].weight, net[1].bias]
    before = [p.detach().clone() for p in params]
    record = grata_step(
        net, params, torch.optim.SGD(params, lr=1.0), x, aux, pse, 0.5, align=False, dynamic=False
    )
    assert float(record.lr) == 0.5
    at_theta = _with(net, before)
    g_p = torch.autograd.grad(pse(at_theta, x), list(at_theta[1].parameters()))
    for p, b, g in zip(params, before, g_p):
        torch.testing.assert_close(p.detach(), b - 0.5 * g)  # g_p at theta itself, fixed lr


def _with(net, theta):
    clone = copy.deepcopy(net)
    with torch.no_grad():
        clone[1].weight.copy_(theta[0])
        clone[1].bias.copy_(theta[1])
    return clone


def test_weights_restored_before_step():
    """With lr0 = 0 the update is a no-op: the perturbation must have been undone."""
    net = tiny_net().train()
    x = torch.randn(2, 1, 8, 8)
    params = [net[1].weight, net[1].bias]
    before = [p.detach().clone() for p in params]
    grata_step(net, params, torch.optim.Adam(params, lr=0.0), x, aux, pse, 0.0)
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


def test_cosine_and_dynamic_lr():
    a = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
    assert cosine(a, a).item() == pytest.approx(1.0)
    assert cosine(a, [-t for t in a]).item() == pytest.approx(-1.0)
    assert cosine(a, [torch.tensor([0.0, 1.0]), torch.tensor([0.0])]).item() == pytest.approx(0.0)
    assert dynamic_lr(1e-3, 1.0) == pytest.approx(1e-3)
    assert dynamic_lr(1e-3, 0.0) == pytest.approx(2.5e-4)
    assert dynamic_lr(1e-3, -1.0) == 0.0


@pytest.mark.parametrize("optimizer_cls", [torch.optim.Adam, torch.optim.SGD])
def test_tensor_learning_rate_steps_as_a_float_one(optimizer_cls):
    """An optimizer built with a tensor lr (fused, as on CUDA) gets GraTa's rate as a tensor and
    makes the same update; the record stays tensors on the device until read."""
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    updated, records = [], []
    # a float rate; a tensor rate given to the constructor; one set after it (as configure does)
    for lr, fused, later in (
        (1e-2, None, False),
        (torch.tensor(1e-2), True, False),
        (1e-2, True, True),
    ):
        net = tiny_net().train()
        params = [net[1].weight, net[1].bias]
        optimizer = optimizer_cls(params, lr=lr, fused=fused)
        if later:
            optimizer.param_groups[0]["lr"] = torch.tensor(1e-2)
        records.append(grata_step(net, params, optimizer, x, aux, pse, 1e-2))
        updated.append(torch.cat([p.detach().flatten() for p in params]))
        assert torch.is_tensor(optimizer.param_groups[0]["lr"]) == (torch.is_tensor(lr) or later)
    for other, record in zip(updated[1:], records[1:]):
        torch.testing.assert_close(other, updated[0], rtol=1e-5, atol=1e-7)
        assert all(torch.is_tensor(v) and v.ndim == 0 for v in vars(record).values())
        assert float(record.lr) == pytest.approx(float(records[0].lr), rel=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_step_never_waits_for_the_gpu():
    """With a tensor learning rate (fused Adam), a GraTa step makes no host-device synchronization."""
    net = tiny_net().cuda().train()
    params = [net[1].weight, net[1].bias]
    optimizer = torch.optim.Adam(params, lr=torch.full((), 1e-2, device="cuda"), fused=True)
    x = torch.randn(2, 1, 8, 8, device="cuda")
    grata_step(net, params, optimizer, x, aux, pse, 1e-2)  # the first step creates Adam's state
    torch.cuda.set_sync_debug_mode("error")
    try:
        record = grata_step(net, params, optimizer, x, aux, pse, 1e-2)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert record.lr.is_cuda and -1 <= float(record.cosine) <= 1
