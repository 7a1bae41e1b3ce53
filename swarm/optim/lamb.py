"""LAMB: layer-wise adaptive large-batch optimizer (You et al. 2019, "Large Batch Optimization for Deep Learning", Algorithm 2).

For each parameter tensor x with gradient g, at step t:

    m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
    m_hat = m / (1 - beta1^t)              v_hat = v / (1 - beta2^t)        (if bias_correction)
    r = m_hat / (sqrt(v_hat) + eps) + weight_decay * x
    x = x - lr * phi(||x||) / ||r|| * r,   phi(z) = min(max(z, 0), clamp_value)

with trust ratio phi(||x||) / ||r|| taken as 1 when either norm is 0 (a freshly zeroed layer still
moves). The trust ratio makes each layer's step proportional to its weight norm, which is what lets
DeDLOC-style runs take very large batches. Guarantees: plain per-tensor ops in a fixed order (no
foreach / fused kernels), so equal inputs on equal hardware give bitwise-equal parameters and state.

>>> model = torch.nn.Linear(4, 2)
>>> opt = Lamb(model.parameters(), lr=1e-3, weight_decay=0.01)
>>> model(torch.randn(8, 4)).pow(2).mean().backward(); opt.step()
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from .grads import closure_loss, dense_grads

__all__ = ["Lamb"]


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


class Lamb(torch.optim.Optimizer):
    """The LAMB optimizer (Algorithm 2 of You et al. 2019); see the module docstring for the exact rule."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        clamp_value: float = 10.0,
        bias_correction: bool = True,
    ) -> None:
        _check(isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0, f"Lamb: lr must be a finite number >= 0, got {lr!r}")
        _check(len(betas) == 2, f"Lamb: betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            _check(0.0 <= beta < 1.0, f"Lamb: betas[{i}] must be in [0, 1), got {beta!r}")
        _check(math.isfinite(eps) and eps > 0, f"Lamb: eps must be a finite number > 0, got {eps!r}")
        _check(math.isfinite(weight_decay) and weight_decay >= 0, f"Lamb: weight_decay must be >= 0, got {weight_decay!r}")
        _check(clamp_value > 0, f"Lamb: clamp_value must be > 0, got {clamp_value!r}")
        _check(isinstance(bias_correction, bool), f"Lamb: bias_correction must be a bool, got {bias_correction!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            clamp_value=clamp_value,
            bias_correction=bias_correction,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Apply one LAMB update to every parameter with a gradient; returns the closure's loss if given."""
        loss = closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p, grad in dense_grads(group, "Lamb"):
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"]
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]

                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                if group["bias_correction"]:
                    m_hat = exp_avg / (1 - beta1**step)
                    v_hat = exp_avg_sq / (1 - beta2**step)
                else:
                    m_hat, v_hat = exp_avg, exp_avg_sq
                update = m_hat / v_hat.sqrt().add_(group["eps"])
                if group["weight_decay"] != 0:
                    update.add_(p, alpha=group["weight_decay"])

                weight_norm = p.norm()
                update_norm = update.norm()
                phi = weight_norm.clamp(0, group["clamp_value"])
                trust_ratio = torch.where(
                    (weight_norm > 0) & (update_norm > 0), phi / update_norm, torch.ones_like(weight_norm)
                )
                p.add_(update.mul_(trust_ratio), alpha=-group["lr"])
        return loss
