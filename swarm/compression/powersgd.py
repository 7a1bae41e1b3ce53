"""PowerSGD: rank-r compression of the averaged matrices, with error feedback and a warm-started Q.

Vogels, Karimireddy and Jaggi, "PowerSGD: Practical Low-Rank Gradient Compression for Distributed
Optimization" (NeurIPS 2019), Algorithms 1 and 2, on the generic weighted all-reduce. For each tensor of
at least two dimensions, seen as an n x m matrix M (first dimension x the rest) with r < min(n, m):

    M_i  = x_i + e_i                  # error feedback: this member's input plus its residual
    P_i  = M_i Q                      # Q (m x r) is the warm start: last round's averaged Q
    P    = weighted mean of P_i       # phase 1 of the round (all-reduce)
    P^   = orthogonalize(P)           # Gram-Schmidt; identical on every member (same bytes in, same code)
    Q_i  = M_i^T P^
    Q    = weighted mean of Q_i       # phase 2 of the round, among the same members
    update = P^ Q^T                   # identical on every member: the weighted mean of P^ P^T M_i
    e_i  = M_i - P^ Q_i^T             # what this member's message left out (local decompression)

Since the update is the weighted mean of the members' local decompressions P^ Q_i^T, the residuals hold
exactly what the round dropped: for each member, sum of sent + residual == sum of inputs, so nothing is
lost over time. A matrix of rank <= r comes back exactly (up to float rounding). Factors travel as fp32
("none": the mean of the factors is then exact); tensors that are 1-D, small or would not shrink at least
`min_ratio` times keep their CompressionPolicy codec and travel in phase 1. Both phases use the same group
(one matchmaking): a member that fails phase 1 does not step, and the others exclude it from phase 2 within
`sender_timeout`. Q starts from a seeded random matrix, the same on every peer, and is part of the state
that a newcomer downloads, so its first round uses the swarm's Q.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from swarm.averaging.layout import TensorLayout
from swarm.compression.codecs import Codec, CompressionPolicy, get_codec
from swarm.compression.error_feedback import ErrorFeedback
from swarm.compression.round_codec import (
    Averaged,
    RoundCodec,
    RoundContext,
    layout_bytes,
    predicted_seconds,
)

__all__ = ["orthogonalize", "PowerSGDRoundCodec", "matrix_shape", "low_rank_round"]


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The n x m view of a tensor: its first dimension by the product of the others."""
    return int(shape[0]), int(math.prod(shape[1:]))


def orthogonalize(p: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Orthonormal columns spanning p's column space (modified Gram-Schmidt in float64).

    A column that is (numerically) in the span of the earlier ones becomes zero instead of amplified noise,
    so P^ P^T stays a projection onto span(p) when p has rank < r. Deterministic: the same input gives the
    same bits on the same software."""
    q = p.to(torch.float64).clone()
    norms = q.norm(dim=0)
    for j in range(q.shape[1]):
        col = q[:, j]
        for k in range(j):
            col -= (q[:, k] @ col) * q[:, k]
        norm = col.norm()
        if norm <= eps * max(float(norms[j]), 1e-30) or norm == 0:
            col.zero_()
        else:
            col /= norm
    return q.to(torch.float32)


def _initial_q(m: int, rank: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(m, rank, generator=gen, dtype=torch.float32)


class PowerSGDRoundCodec(RoundCodec):
    """Two-phase rounds: P factors (and the uncompressed tensors), then Q factors. See the module docstring."""

    name = "powersgd"

    def __init__(self, shapes: Sequence[Sequence[int]], rank: int = 4, policy: CompressionPolicy | None = None,
                 *, min_ratio: float = 2.0, min_numel: int = 2**12, seed: int = 0):
        super().__init__(shapes)
        if rank < 1:
            raise ValueError("PowerSGD rank must be >= 1")
        self.rank = rank
        self.policy = policy or CompressionPolicy(default="fp16")
        self.low_rank: list[int] = []
        for i, shape in enumerate(self.shapes):
            if len(shape) < 2:
                continue
            n, m = matrix_shape(shape)
            if n * m >= min_numel and rank < min(n, m) and rank * (n + m) * min_ratio <= n * m:
                self.low_rank.append(i)
        self.rest = [i for i in range(len(self.shapes)) if i not in set(self.low_rank)]
        self.q = {i: _initial_q(matrix_shape(self.shapes[i])[1], rank, seed * 100003 + i) for i in self.low_rank}
        self.ef = ErrorFeedback()
        exact = get_codec("none")
        self._rest_codecs = [self.policy.codec_for(str(i), _numel(self.shapes[i])) for i in self.rest]
        self._p_shapes = [(matrix_shape(self.shapes[i])[0], rank) for i in self.low_rank]
        self._q_shapes = [(matrix_shape(self.shapes[i])[1], rank) for i in self.low_rank]
        self.layout_q = TensorLayout.build(self._q_shapes, lambda i, n: exact)
        self._layouts_p: dict[tuple, TensorLayout] = {}
        auto = Codec("powersgd", -1)   # never encodes: it only names the schema
        self._schema = TensorLayout.build(self.shapes, lambda i, n: auto if i in set(self.low_rank) else self._rest_codec(i))

    def _rest_codec(self, i: int):
        return self._rest_codecs[self.rest.index(i)]

    @property
    def schema(self) -> TensorLayout:
        return self._schema

    def layout_p(self, extra_shapes: Sequence[tuple[int, ...]] = ()) -> TensorLayout:
        """Phase 1: the P factors (exact), the other tensors with their codecs, then the extra values (exact)."""
        key = tuple(extra_shapes)
        if key not in self._layouts_p:
            exact = get_codec("none")
            shapes = self._p_shapes + [self.shapes[i] for i in self.rest] + list(key)
            codecs = [exact] * len(self._p_shapes) + self._rest_codecs + [exact] * len(key)
            self._layouts_p[key] = TensorLayout.build(shapes, lambda i, n: codecs[i])
        return self._layouts_p[key]

    def predict(self, ctx: RoundContext) -> float:
        return predicted_seconds(layout_bytes(self.layout_p()), ctx) + predicted_seconds(layout_bytes(self.layout_q), ctx)

    def predicted_bytes(self) -> int:
        return layout_bytes(self.layout_p()) + layout_bytes(self.layout_q)

    def compression_ratio(self) -> float:
        """fp32 bytes of the tensors over the bytes of one round (both phases)."""
        return 4 * sum(_numel(s) for s in self.shapes) / max(1, self.predicted_bytes())

    async def average(self, ctx: RoundContext, tensors, extra=None) -> Averaged:
        extra = list(extra or [])
        layout_p = self.layout_p([tuple(t.shape) for t in extra])
        k = len(self.low_rank)
        predicted = self.predict(ctx)
        if tensors is None:   # auxiliary: reduce shares of both phases, bring and receive nothing
            await ctx.phase(layout_p, None)
            await ctx.phase(self.layout_q, None)
            return Averaged(None, self.name, predicted)
        ms = {i: self.ef.compensate(str(i), tensors[i].reshape(matrix_shape(self.shapes[i]))) for i in self.low_rank}
        ps = [ms[i] @ self.q[i] for i in self.low_rank]
        averaged = await ctx.phase(layout_p, layout_p.flatten(ps + [tensors[i] for i in self.rest] + extra))
        assert averaged is not None
        out_p = layout_p.unflatten(averaged)
        p_hats = [orthogonalize(p) for p in out_p[:k]]
        qs = [ms[i].t() @ p_hat for i, p_hat in zip(self.low_rank, p_hats)]
        averaged_q = await ctx.phase(self.layout_q, self.layout_q.flatten(qs))
        assert averaged_q is not None
        q_bars = self.layout_q.unflatten(averaged_q)
        result: list[torch.Tensor | None] = [None] * len(self.shapes)
        for i, p_hat, q_bar in zip(self.low_rank, p_hats, q_bars):
            result[i] = (p_hat @ q_bar.t()).reshape(self.shapes[i])
        for j, i in enumerate(self.rest):
            result[i] = out_p[k + j]
        residual_updates = [(i, ms[i], p_hat @ q.t()) for i, p_hat, q in zip(self.low_rank, p_hats, qs)]
        new_q = {i: q_bar.clone() for i, q_bar in zip(self.low_rank, q_bars)}

        def commit() -> None:
            for i, m, sent in residual_updates:
                self.ef.update(str(i), m, sent)
            self.q.update(new_q)

        return Averaged(result, self.name, predicted, extra=out_p[k + len(self.rest):], commit=commit)  # type: ignore[arg-type]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"codec.powersgd.q.{i}": q.clone() for i, q in self.q.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for i in self.low_rank:
            q = tensors.get(f"codec.powersgd.q.{i}")
            if q is not None and tuple(q.shape) == tuple(self.q[i].shape) and bool(torch.isfinite(q).all()):
                self.q[i] = q.to(torch.float32).clone()

    def reset(self) -> None:
        self.ef.reset()


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


def low_rank_round(ms: Sequence[torch.Tensor], weights: Sequence[float], q: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """One PowerSGD round of several members' n x m matrices, in one process (reference and tests).

    Returns the update (identical for all), each member's local decompression P^ Q_i^T, and the averaged Q."""
    total = float(sum(weights))
    p = sum(w * (m @ q) for m, w in zip(ms, weights)) / total
    p_hat = orthogonalize(p)
    qs = [m.t() @ p_hat for m in ms]
    q_bar = sum(w * qi for qi, w in zip(qs, weights)) / total
    return p_hat @ q_bar.t(), [p_hat @ qi.t() for qi in qs], q_bar
