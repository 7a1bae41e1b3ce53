"""How a reducer combines the senders' copies of one chunk: the weighted mean (streaming, one buffer per chunk).

The seam for a robust aggregator (swarm.averaging.robust.CenteredClipReduction has the same interface)."""
from __future__ import annotations

import torch


class Reduction:
    """Streaming weighted mean of one chunk. Subclass to plug in a robust aggregator."""

    def __init__(self, length: int):
        self.length = length
        self.total: torch.Tensor | None = None  # allocated by the first contribution: no zero-filled pass per chunk
        self.weight = 0.0
        self.senders: list[tuple[int | None, float]] = []   # (sender, weight) of each contribution, in order

    def add(self, values: torch.Tensor, weight: float, sender: int | None = None) -> None:
        """`sender`: the member index the values came from (the mean does not need it; a robust reduction does)."""
        if weight > 0:
            if self.total is None:
                self.total = values.to(torch.float32).mul(weight)
            else:
                self.total.add_(values, alpha=weight)
            self.weight += weight
            self.senders.append((sender, weight))

    def mixture(self) -> dict[int, float] | None:
        """sender -> its coefficient in `result()` (a convex combination of the contributions), once it was computed;
        None when a contribution came without its sender. A reducer may send the contributions with these
        coefficients instead of the result (a bundle: swarm.compression.sparse)."""
        if self.weight <= 0 or any(s is None for s, _ in self.senders):
            return None
        return {s: w / self.weight for s, w in self.senders}

    def result(self) -> torch.Tensor | None:
        if self.weight <= 0 or self.total is None:
            return None
        return self.total / self.weight
