"""Learning-rate schedules keyed on the swarm's global epoch (one epoch = one collaborative optimizer step).

A schedule is a pure function epoch -> multiplier of the base learning rate, so every peer, including
one that just downloaded the state at epoch e, computes the same rate from the epoch alone; nothing
about the schedule needs to be synchronised. Shapes:

- warmup (both): epochs 0 .. W-1 ramp linearly, multiplier (e + 1) / W, so the first step is small
  but not zero and epoch W-1 reaches 1;
- `warmup_linear_decay`: from epoch W the multiplier falls linearly from 1 to `min_ratio` at epoch T;
- `warmup_cosine`: from epoch W it follows a half cosine from 1 to `min_ratio` at epoch T;
- both stay at `min_ratio` from epoch T on.

>>> schedule = warmup_linear_decay(warmup_epochs=4, total_epochs=12)
>>> [round(schedule(e), 3) for e in (0, 3, 4, 8, 12, 100)]
[0.25, 1.0, 1.0, 0.5, 0.0, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["warmup_linear_decay", "warmup_cosine", "apply_lr"]


def _validate(warmup_epochs: int, total_epochs: int, min_ratio: float) -> None:
    if not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
    if not isinstance(total_epochs, int) or total_epochs <= warmup_epochs:
        raise ValueError(f"total_epochs must be an int > warmup_epochs ({warmup_epochs}), got {total_epochs!r}")
    if not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"min_ratio must be in [0, 1], got {min_ratio!r}")


def _make(warmup_epochs: int, total_epochs: int, min_ratio: float, decay: Callable[[float], float]) -> Callable[[int], float]:
    """A schedule with linear warmup, then min_ratio + (1 - min_ratio) * decay(progress), progress in [0, 1]."""
    _validate(warmup_epochs, total_epochs, min_ratio)

    def multiplier(epoch: int) -> float:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if epoch < warmup_epochs:
            return (epoch + 1) / warmup_epochs
        progress = min(1.0, (epoch - warmup_epochs) / (total_epochs - warmup_epochs))
        return min_ratio + (1.0 - min_ratio) * decay(progress)

    return multiplier


def warmup_linear_decay(warmup_epochs: int, total_epochs: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warmup over `warmup_epochs`, then linear decay to `min_ratio` at `total_epochs`, constant after."""
    return _make(warmup_epochs, total_epochs, min_ratio, lambda progress: 1.0 - progress)


def warmup_cosine(warmup_epochs: int, total_epochs: int, min_ratio: float = 0.0) -> Callable[[int], float]:
    """Linear warmup over `warmup_epochs`, then half-cosine decay to `min_ratio` at `total_epochs`, constant after."""
    return _make(warmup_epochs, total_epochs, min_ratio, lambda progress: 0.5 * (1.0 + math.cos(math.pi * progress)))


def apply_lr(optimizer: torch.optim.Optimizer, base_lr: float | Sequence[float], multiplier: float) -> None:
    """Set each param group's lr to base_lr * multiplier (`base_lr` one value, or one per param group)."""
    groups = optimizer.param_groups
    base = [float(base_lr)] * len(groups) if isinstance(base_lr, (int, float)) else [float(b) for b in base_lr]
    if len(base) != len(groups):
        raise ValueError(f"got {len(base)} base learning rates for {len(groups)} param groups")
    if not math.isfinite(multiplier) or multiplier < 0:
        raise ValueError(f"lr multiplier must be a finite number >= 0, got {multiplier!r}")
    for group, lr in zip(groups, base):
        group["lr"] = lr * multiplier
