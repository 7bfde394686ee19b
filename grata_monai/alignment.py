"""The GraTa update: align the pseudo gradient with the auxiliary gradient (Chen et al., AAAI 2025).

One call of :func:`grata_step` is the seven steps of the paper, in order, on a batch ``x``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["StepRecord", "cosine", "dynamic_lr", "grata_step"]

Loss = Callable[[nn.Module, torch.Tensor], torch.Tensor]


@dataclass
class StepRecord:
    """What one update did: the two losses, the gradients' cosine and the learning rate used."""

    aux_loss: float
    pseudo_loss: float
    cosine: float
    lr: float


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine of two gradients, each a list of tensors flattened together."""
    dot = sum((x * y).sum() for x, y in zip(a, b))
    norm_a = torch.sqrt(sum((x * x).sum() for x in a))
    norm_b = torch.sqrt(sum((y * y).sum() for y in b))
    return dot / (norm_a * norm_b + 1e-12)


def dynamic_lr(lr0: float, cos: float) -> float:
    """The paper's learning-rate curve ``lr0 * (cos + 1)^2 / 4``."""
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
        optimizer: the base optimizer (Adam in the paper); its learning rate is overwritten.
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
    theta = [p.detach().clone() for p in params]
    if align:
        with torch.no_grad():
            torch._foreach_add_(params, g_aux, alpha=-perturb_scale)
    # 3. pseudo gradient g_p at theta' (its pseudo-label is predicted at theta' too)
    loss_pse = pseudo_loss(network, x)
    g_pse = reduce(torch.autograd.grad(loss_pse, params))
    # 4. alignment measure
    cos = float(cosine(g_aux, g_pse))
    # 5. restore theta
    with torch.no_grad():
        torch._foreach_copy_(params, theta)
    # 6. dynamic learning rate
    lr = dynamic_lr(lr0, cos) if dynamic else lr0
    # 7. base optimizer step along g_p
    for group in optimizer.param_groups:
        group["lr"] = lr
    for p, g in zip(params, g_pse):
        p.grad = g
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepRecord(loss_aux.item(), loss_pse.item(), cos, lr)
