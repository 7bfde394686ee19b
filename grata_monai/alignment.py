"""The GraTa update: align the pseudo gradient with the auxiliary gradient (Chen et al., AAAI 2025).

One call of :func:`grata_step` is the seven steps of the paper, in order, on a batch ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

from grata_monai.foreach import clones

__all__ = ["StepRecord", "cosine", "dynamic_lr", "grata_step"]

Loss = Callable[[nn.Module, torch.Tensor], torch.Tensor]
T = TypeVar("T", float, torch.Tensor)


@dataclass
class StepRecord:
    """What one update did: the two losses, the gradients' cosine and the learning rate used.

    Each is a 0-dim tensor on the network's device, so an update never waits for the device;
    ``float()`` reads one (``audit.to_host`` reads many at once).
    """

    aux_loss: torch.Tensor
    pseudo_loss: torch.Tensor
    cosine: torch.Tensor
    lr: torch.Tensor


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine of two gradients, each a list of tensors flattened together."""
    a = torch.cat([x.flatten() for x in a])
    b = torch.cat([y.flatten() for y in b])
    # elementwise products, not a matmul, so autocast keeps them in float32
    return (a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt() + 1e-12)


def dynamic_lr(lr0: float, cos: T) -> T:
    """The paper's learning-rate curve ``lr0 * (cos + 1)^2 / 4`` (of a float or a tensor)."""
    return lr0 * (cos + 1.0) ** 2 / 4.0


def grata_step(
    network: nn.Module,
    params: Sequence[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    aux_loss: Loss,
    pseudo_loss: Loss,
    lr0: float,
    perturb_scale: float = 1.0,
    align: bool = True,
    dynamic: bool = True,
    reduce: Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]] | None = None,
) -> StepRecord:
    """One GraTa update of ``params`` (the adapted weights theta) on the test batch ``x``.

    Args:
        network: the network being adapted (its norm layers already configured).
        params: the adapted parameters theta; ``optimizer`` must hold exactly these.
        optimizer: the base optimizer (Adam in the paper); its learning rate is overwritten. Built
            with a tensor learning rate (e.g. fused Adam on CUDA), it gets GraTa's as a tensor,
            so the step never waits for the device; with a float one, the rate is read first.
        x: the test batch.
        aux_loss: L_aux(network, x), entropy by default.
        pseudo_loss: L_pse(network, x), consistency by default.
        lr0: base learning rate.
        perturb_scale: scale of the perturbation theta - scale * g_a (1.0 in the paper).
        align: ablation switch; False takes g_p at theta itself (no perturbation).
        dynamic: ablation switch; False steps with the fixed ``lr0``.
        reduce: averages a gradient across processes (continual adaptation over several ranks);
            applied to g_a and g_p so every rank perturbs, measures and steps identically.
    """
    reduce = reduce or (lambda grads: grads)
    params = list(params)
    # 1. auxiliary gradient g_a at theta
    loss_aux = aux_loss(network, x)
    g_aux = reduce(torch.autograd.grad(loss_aux, params))
    # 2. perturb: theta' = theta - g_a (remember theta)
    theta = clones(params)
    if align:
        with torch.no_grad():
            torch._foreach_add_(params, g_aux, alpha=-perturb_scale)
    # 3. pseudo gradient g_p at theta' (its pseudo-label is predicted at theta' too)
    loss_pse = pseudo_loss(network, x)
    g_pse = reduce(torch.autograd.grad(loss_pse, params))
    # 4. alignment measure
    cos = cosine(g_aux, g_pse).detach()
    # 5. restore theta
    with torch.no_grad():
        torch._foreach_copy_(params, theta)
    # 6. dynamic learning rate
    lr = dynamic_lr(lr0, cos) if dynamic else torch.full_like(cos, lr0)
    # 7. base optimizer step along g_p
    for group in optimizer.param_groups:
        group["lr"] = lr if torch.is_tensor(group["lr"]) else float(lr)
    for p, g in zip(params, g_pse):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepRecord(loss_aux.detach(), loss_pse.detach(), cos, lr)
