"""Mixed precision for the peer daemon's training loop: autocast fp16/bf16, and a GradScaler for fp16.

`RunConfig.precision`: auto (fp16 with a GradScaler on CUDA, fp32 on CPU), fp32, fp16 or bf16.
Each volunteer picks its own (it changes nothing the swarm averages: gradients are unscaled and
accumulated in fp32 before they leave the peer).

A local step whose gradients overflowed (inf or NaN after unscaling) contributes nothing: the
collaborative optimizer is not called, so neither its gradients nor its samples count, and the
scaler lowers its scale. One peer's overflow therefore never reaches the swarm's average.

    amp = MixedPrecision.from_config("auto", device)
    with amp.autocast():
        loss, n = task.loss(model, batch)
    amp.backward(loss)
    amp.step(opt, samples=n)     # False when the step overflowed and was skipped
    opt.zero_grad()
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any

import torch

from swarm.errors import ConfigError

logger = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}

__all__ = ["MixedPrecision", "PRECISIONS"]


class MixedPrecision:
    def __init__(self, precision: str, device: str):
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
        device_type = torch.device(device).type
        if precision == "auto":
            precision = "fp16" if device_type == "cuda" else "fp32"
        self.precision = precision
        self.device_type = device_type
        self.dtype = DTYPES.get(precision)
        # bf16 has fp32's exponent range: it needs no loss scaling
        self.scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None
        self.skipped_steps = 0

    @classmethod
    def from_config(cls, precision: str, device: str) -> "MixedPrecision":
        return cls(precision, device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, opt: Any, samples: int) -> bool:
        """`opt.step(samples=...)` through the scaler, which skips an overflowed step (no gradients, no samples to
        the swarm) and lowers its scale. Returns whether the step was taken."""
        if self.scaler is None:
            opt.step(samples=samples)
            return True
        scale = self.scaler.get_scale()
        # GradScaler.step returns None when it found inf/NaN and skipped; the collaborative optimizer's step returns
        # a bool (whether a global update was applied) when it was called
        skipped = self.scaler.step(opt, samples=samples) is None
        self.scaler.update()
        if skipped:
            self.skipped_steps += 1
            logger.info("fp16 gradients overflowed: skipped this local step (scale %.0f -> %.0f)", scale, self.scaler.get_scale())
        return not skipped
