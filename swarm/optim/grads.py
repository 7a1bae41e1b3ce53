"""What every optimizer step here starts with: the closure's loss, and the parameters that have a dense gradient."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["closure_loss", "dense_grads"]


def closure_loss(closure: Callable[[], Any] | None) -> Any:
    """torch's step contract: evaluate the closure (with autograd on, although the step itself runs without) or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def dense_grads(group: dict[str, Any], optimizer: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, gradient) for the parameters of `group` that have a gradient; sparse gradients are refused."""
    for p in group["params"]:
        if p.grad is None:
            continue
        if p.grad.is_sparse:
            raise RuntimeError(f"{optimizer} does not support sparse gradients")
        yield p, p.grad
