"""Error feedback: what a lossy compressor drops from a tensor is carried into the next round, so nothing is lost.

EF-SGD (Seide et al. 2014; Karimireddy et al. 2019), as PowerSGD uses it (Vogels et al. 2019, Algorithm 1).
For each named tensor a peer keeps a residual e (initially 0). Each round:

    m    = x + e              # compensate: this round's input plus what earlier rounds dropped
    sent = compress(m)        # what this peer's message stands for (decompressed locally)
    e    = m - sent           # the new residual

Guarantee (exact up to float rounding): after rounds 1..T, sum(sent_t) + e_T == sum(x_t). The swarm applies
the weighted mean of the members' `sent`, so whatever one round leaves out of a member's input reaches the
model in later rounds. Residuals are local (never sent, never part of the state): a peer that re-syncs its
state calls `reset()`, since its residual refers to parameters it no longer holds.

    ef = ErrorFeedback()
    m = ef.compensate("layer.0", grad)
    sent = low_rank(m)
    ef.update("layer.0", m, sent)
"""
from __future__ import annotations

import torch

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Per-tensor residual buffers (float32, the tensor's shape)."""

    def __init__(self) -> None:
        self._residuals: dict[str, torch.Tensor] = {}

    def compensate(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """x + residual (a new float32 tensor; `x` is not modified)."""
        residual = self._residuals.get(name)
        m = x.detach().to(torch.float32).clone()
        if residual is not None:
            if residual.shape != m.shape:
                raise ValueError(f"error feedback for {name!r}: shape {tuple(m.shape)} differs from {tuple(residual.shape)}")
            m.add_(residual)
        return m

    def update(self, name: str, compensated: torch.Tensor, sent: torch.Tensor) -> None:
        """Keep compensated - sent as the residual of `name`."""
        if compensated.shape != sent.shape:
            raise ValueError(f"error feedback for {name!r}: sent shape {tuple(sent.shape)} differs from {tuple(compensated.shape)}")
        self._residuals[name] = compensated.detach().to(torch.float32) - sent.detach().to(torch.float32)

    def residual(self, name: str) -> torch.Tensor | None:
        return self._residuals.get(name)

    def norm(self) -> float:
        """The L2 norm of all residuals together (for logs: it stays bounded when compression keeps up)."""
        return float(sum(float(r.square().sum()) for r in self._residuals.values()) ** 0.5)

    def reset(self) -> None:
        self._residuals.clear()

    def __len__(self) -> int:
        return len(self._residuals)
