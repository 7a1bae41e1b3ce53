"""LARS: layer-wise adaptive rate scaling (You, Gitman and Ginsburg 2017, "Large Batch Training of
Convolutional Networks", Algorithm 1), the optimizer SwAV and SimCLR pretrain with.

For each parameter tensor w with gradient g, at a step with learning rate lr:

    local_lr = trust_coefficient * ||w|| / (||g|| + weight_decay * ||w||)   (1 if ||w|| or ||g|| is 0)
    v = momentum * v + lr * local_lr * (g + weight_decay * w)
    w = w - v

(with `nesterov`, w = w - (momentum * v + lr * local_lr * (g + weight_decay * w))). The momentum
buffer starts at zero. Tensors that are excluded (by default every tensor with ndim <= 1: biases and
normalisation weights; or any param group with `lars_exclude=True`) take a plain momentum-SGD step,
with neither weight decay nor adaptation: local_lr = 1 and v = momentum * v + lr * g.

Guarantees: plain per-tensor ops in a fixed order (no foreach / fused kernels), so equal inputs on
equal hardware give bitwise-equal parameters and state; the state is only tensors (`momentum_buffer`),
so a swarm's state download carries it.

>>> model = torch.nn.Linear(4, 2)
>>> opt = Lars(model.parameters(), lr=0.1, weight_decay=1e-6)
>>> model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .grads import closure_loss, dense_grads

__all__ = ["Lars", "lars_param_groups"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def lars_param_groups(named_params: Iterable[tuple[str, torch.nn.Parameter]]) -> list[dict[str, Any]]:
    """Two groups: adapted weights, and excluded biases/norm parameters (ndim <= 1), flagged `lars_exclude`."""
    adapted, excluded = [], []
    for _, p in named_params:
        if p.requires_grad:
            (excluded if p.ndim <= 1 else adapted).append(p)
    groups = [{"params": adapted, "lars_exclude": False}, {"params": excluded, "lars_exclude": True}]
    return [g for g in groups if g["params"]]


class Lars(torch.optim.Optimizer):
    """The LARS optimizer (Algorithm 1 of You et al. 2017); see the module docstring for the exact rule.

    `exclude_1d`: tensors with ndim <= 1 skip weight decay and adaptation (unless their group sets
    `lars_exclude` explicitly, which wins either way).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
        nesterov: bool = False,
        exclude_1d: bool = True,
    ) -> None:
        _check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0, f"Lars: lr must be a finite number >= 0, got {lr!r}")
        _check(isinstance(momentum, (int, float)) and 0.0 <= momentum < 1.0, f"Lars: momentum must be in [0, 1), got {momentum!r}")
        _check(isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay) and weight_decay >= 0,
               f"Lars: weight_decay must be >= 0, got {weight_decay!r}")
        _check(isinstance(trust_coefficient, (int, float)) and math.isfinite(trust_coefficient) and trust_coefficient > 0,
               f"Lars: trust_coefficient must be > 0, got {trust_coefficient!r}")
        _check(isinstance(nesterov, bool), f"Lars: nesterov must be a bool, got {nesterov!r}")
        _check(not nesterov or momentum > 0, "Lars: nesterov needs momentum > 0")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        nesterov=nesterov, exclude_1d=exclude_1d)
        super().__init__(params, defaults)

    @staticmethod
    def excluded(group: dict[str, Any], p: torch.Tensor) -> bool:
        """Whether `p` skips weight decay and adaptation."""
        flag = group.get("lars_exclude")
        if flag is not None:
            return bool(flag)
        return bool(group["exclude_1d"]) and p.ndim <= 1

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Apply one LARS update to every parameter with a gradient; returns the closure's loss if given."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            lr, momentum, weight_decay = group["lr"], group["momentum"], group["weight_decay"]
            for p, grad in dense_grads(group, "Lars"):
                if self.excluded(group, p):
                    update = grad.clone()
                else:
                    weight_norm = p.norm()
                    grad_norm = grad.norm()
                    denominator = grad_norm + weight_decay * weight_norm
                    local_lr = torch.where(
                        (weight_norm > 0) & (grad_norm > 0),
                        group["trust_coefficient"] * weight_norm / denominator,
                        torch.ones_like(weight_norm),
                    )
                    update = grad.add(p, alpha=weight_decay) if weight_decay != 0 else grad.clone()
                    update.mul_(local_lr)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.mul_(momentum).add_(update, alpha=lr)
                if group["nesterov"]:
                    p.sub_(buf * momentum + update * lr)
                else:
                    p.sub_(buf)
        return loss
