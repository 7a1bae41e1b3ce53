"""Top-k sparsification with error feedback: each member sends only its k largest values per tensor, the rest waits.

SparseLoCo (Sarfi et al. 2025) on the butterfly all-reduce (`swarm.averaging.allreduce`), one phase per round.
For each tensor of at least `min_numel` values, with k = ceil(fraction x numel):

    m_i    = x_i + e_i                    # error feedback (swarm.compression.error_feedback): input plus residual
    sent_i = topk(m_i, k), values quantized: value_bits=2 -> sign x {lo, hi}, the mean magnitudes of the
             smaller and the larger half of the k values (4 levels, SparseLoCo's 2-bit values);
             value_bits=16 -> the values rounded to fp16
    update = weighted mean of sent_i      # the all-reduce (swarm.compression.sparse); by default only its top
    e_i    = m_i - sent_i x [update != 0] # on commit only: what the update left out stays

What goes on the wire. The all-reduce splits the vector into parts, one per reducer. A member sends
each reducer the non-zeros of its sent_i in that part (Rice-coded positions, about log2(1/k) + 2 bits each,
plus a codebook of the fp16 levels and 2-bit indices: 1.15 bytes per sent value at k = 2%; a part that spans
several tensors, whose levels differ, needs log2(4 x tensors)-bit indices: 1.28 bytes at 2 tensors, ~1.65 at 11).
What the reducer sends back (`sparse_result`, engine.topk_result):

- "topk" (the default; gTop-k, Shi et al. 2019): the top of the average, as many non-zeros as its largest input has
  (codec "sparse-topk"), its values in fp16 or, where few distinct ones (sums of the members' levels times their
  weights), a codebook. The average of n top-k messages has up to n x k non-zeros, so without this each member
  receives about n messages a round, with it one to three. What the reducer leaves out is not lost: every member puts
  its own sent values back into its residual where the round's update is zero (e_i = m_i - sent_i x [update != 0]),
  so the members' residuals, weighted as the average weighs them, hold exactly what the update left out of the
  average (up to the fp16 rounding of the values kept), and it is sent again next round. Where the exact answer (a
  bundle, below) costs less than twice the top, the reducer sends it (SparseCodec.bundle_preference: what the top
  leaves out arrives a round late). Measured as the table below (2%, one 2**17-value tensor, 2-bit values), bytes
  per value the reducer sends back: n = 3: 0.031 (exact: 0.069), 8: 0.041 (0.185), 18: 0.053 (0.416), 32: 0.058
  (0.739); a member's send and receive together at 18 members: 0.076 against 0.439, 5.8x less. What it costs in
  quality (benchmarks/outer_codecs.py, DiLoCo on an MLP teacher, 30 outer steps, outer lr 1 without momentum): at
  equal k, +12% loss at 3 members and +19% at 8 (updates a round late); at equal bytes, even at 3 members (exact
  with k = 1%: 0.088 bytes per value, loss within 2%) and 6-8% lower at 8 (exact with k = 0.5% or 1%).
- "exact": the smaller of two exact answers: the members' messages themselves with their weights (a bundle, which
  every member averages itself in float64, so bitwise identically), or their average, a dense part with at most
  n x k non-zeros whose values need fp16. This is SparseLoCo's all-gather of the members' messages, relayed by the
  reducers. Measured, bytes per value of the vector (fp32 all-reduce: 4 up + 4 back), 2-bit values, one
  2**17-value tensor, independent gaussian inputs, unequal weights (`wire_round` in benchmarks/outer_codecs.py):

    k     member sends   reducer sends back (n = 2 / 3 / 4 / 8)
    1%    0.013 (310x)   0.026 / 0.039 / 0.052 / 0.104
    2%    0.023 (174x)   0.046 / 0.069 / 0.093 / 0.185
    3%    0.033 (123x)   0.065 / 0.098 / 0.130 / 0.261

  Where the members' top-k positions coincide (strongly correlated inputs) their average has few more non-zeros
  than one message and the reducer sends it instead. With "topk" too the bundle goes when it is smaller (small
  groups of correlated members): it is the whole average, nothing is left out.

Error feedback at work (tests/unit/swarm/test_topk.py, and measured on independent inputs, 2-bit
values): the part of the inputs' sum not yet sent, ||sum x - sum sent|| / ||sum x||, is 0.72 after
10 rounds and 0.40 after 50 at k = 2% (0.83 / 0.55 at 1%, 0.64 / 0.32 at 3%), for gaussian inputs and
for pseudo-gradients of a small MLP alike; a single round's own relative error is 0.93 (2-bit values
add almost nothing to it: 0.925 against 0.925 with fp16 values).

Guarantees. The sparse codec is exact on what a member sends (its values are fp16 numbers), so
e_i holds exactly what this member's message left out (and what of it a sparse result left out), and over rounds
the updates plus the members' residuals, weighted as the average weighs them, equal the weighted inputs (up to float
rounding): nothing a member computed is lost, only delayed. The residual
changes only in `Averaged.commit()`: a round that fails leaves it as it was, and the retry
(same inputs) sends the same values. Every member that steps decodes the same reducer bytes, so the
update is bitwise identical on all of them. Tensors below `min_numel` (biases, norms) and tensors
where k would be >= numel/4 travel with their CompressionPolicy codec (fp16 by default: SMALL_TENSORS), without
error feedback.
Residuals are local: `reset()` (after a state download) forgets them.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from swarm.averaging.layout import TensorLayout
from swarm.compression.codecs import CompressionPolicy, get_codec
from swarm.compression.error_feedback import ErrorFeedback
from swarm.compression.round_codec import (
    Averaged,
    RoundCodec,
    RoundContext,
    encoded_bytes,
    predicted_seconds,
)

__all__ = ["TopKRoundCodec", "select_topk", "VALUE_BITS"]

VALUE_BITS = (2, 16)
# The tensors too small for top-k (biases, norms) travel in fp16 by default, not exactly: on a small model they are
# most of a top-k message otherwise (ALBERT tiny: 6,370 such values, 25 KB in fp32, against 13 KB for the top-k of
# its 452,608 others), and fp16 rounding of an outer pseudo-gradient measured +0.0% of fp32 (benchmarks/README.md,
# outer-gradient codecs)
SMALL_TENSORS = CompressionPolicy(default="fp16", small_tensor_codec="fp16")
# Tensors of fewer values keep SMALL_TENSORS' codec: at k = 2% a tensor of 1024 values sends 21 of them a round, and
# its residual carries the rest; norms and biases of the hidden size (128-768 in ALBERT) stay dense. It was 4096,
# which left ALBERT tiny's 4000-value output bias dense: 8 KB of a 28 KB message
MIN_NUMEL = 2**10
_FP16_MAX = float(torch.finfo(torch.float16).max)


def select_topk(m: torch.Tensor, k: int, value_bits: int = 2) -> torch.Tensor:
    """The dense tensor that keeps m's k largest-magnitude values, quantized (module docstring), zeros elsewhere.

    Its values are fp16 numbers, so the sparse codec carries it exactly."""
    if value_bits not in VALUE_BITS:
        raise ValueError(f"top-k values are sent with {VALUE_BITS} bits, got {value_bits}")
    flat = m.reshape(-1).to(torch.float32)
    k = max(0, min(int(k), flat.numel()))
    out = torch.zeros_like(flat)
    if k == 0:
        return out.view(m.shape)
    idx = torch.topk(flat.abs(), k, sorted=False).indices
    values = flat[idx].clamp(-_FP16_MAX, _FP16_MAX)
    if value_bits == 16:
        out[idx] = values.to(torch.float16).to(torch.float32)
        return out.view(m.shape)
    magnitudes = values.abs()
    ordered = torch.sort(magnitudes).values
    half = k // 2
    lo = _fp16(ordered[:half].mean()) if half else _fp16(ordered.mean())
    hi = _fp16(ordered[half:].mean())
    levels = torch.where(magnitudes >= (lo + hi) / 2, hi, lo)
    out[idx] = torch.sign(values) * levels
    return out.view(m.shape)


def _fp16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).to(torch.float32)


class TopKRoundCodec(RoundCodec):
    """One-phase rounds of top-k messages with error feedback. See the module docstring."""

    name = "topk"

    def __init__(self, shapes: Sequence[Sequence[int]], fraction: float = 0.02, value_bits: int = 2,
                 policy: CompressionPolicy | None = None, *, min_numel: int = MIN_NUMEL, sparse_result: bool = True):
        super().__init__(shapes)
        if not 0 < fraction <= 1:
            raise ValueError(f"top-k fraction must be in (0, 1], got {fraction}")
        if value_bits not in VALUE_BITS:
            raise ValueError(f"top-k values are sent with {VALUE_BITS} bits, got {value_bits}")
        self.fraction = float(fraction)
        self.value_bits = value_bits
        self.policy = policy or SMALL_TENSORS
        self.k: dict[int, int] = {}
        for i, shape in enumerate(self.shapes):
            numel = _numel(shape)
            k = math.ceil(self.fraction * numel)
            if numel >= min_numel and 4 * k < numel:
                self.k[i] = k
        self.sparse_result = bool(sparse_result)
        sparse, exact = get_codec("sparse-topk" if self.sparse_result else "sparse"), get_codec("none")
        self._codecs = [sparse if i in self.k else self.policy.codec_for(str(i), _numel(s)) for i, s in enumerate(self.shapes)]
        self._schema = TensorLayout.build(self.shapes, lambda i, n: self._codecs[i])
        self._exact = exact
        self._layouts: dict[tuple, TensorLayout] = {}
        self.ef = ErrorFeedback()

    @property
    def schema(self) -> TensorLayout:
        return self._schema

    def layout_with(self, extra_shapes: Sequence[tuple[int, ...]]) -> TensorLayout:
        """The schema's tensors, then `extra_shapes` sent exactly (codec none)."""
        key = tuple(extra_shapes)
        if key not in self._layouts:
            codecs = self._codecs + [self._exact] * len(key)
            self._layouts[key] = TensorLayout.build(list(self.shapes) + list(key), lambda i, n: codecs[i])
        return self._layouts[key]

    def predicted_bytes(self) -> int:
        """A member's message: per sent value a Rice-coded position (about log2(1 / fraction) + 2 bits, an upper
        estimate) and its value (fp16, or a codebook index: 2 bits for one tensor's 4 levels, log2(4 x tensors) where
        a part spans several tensors, whose levels differ), plus each tensor's header, Rice parameter and codebook."""
        index = min(12, max(2, math.ceil(math.log2(4 * max(1, len(self.k)))))) / 8
        per_value = (math.log2(1 / self.fraction) + 2) / 8 + (index if self.value_bits == 2 else 2)
        sparse = sum(int(per_value * k) + 34 for k in self.k.values())
        rest = sum(encoded_bytes(c, _numel(s)) for i, (c, s) in enumerate(zip(self._codecs, self.shapes)) if i not in self.k)
        return sparse + rest

    def compression_ratio(self) -> float:
        """fp32 bytes of the tensors over the bytes of one member's message."""
        return 4 * sum(_numel(s) for s in self.shapes) / max(1, self.predicted_bytes())

    def predict(self, ctx) -> float:
        return predicted_seconds(self.predicted_bytes(), ctx)

    async def average(self, ctx: RoundContext, tensors, extra=None) -> Averaged:
        extra = list(extra or [])
        layout = self.layout_with([tuple(t.shape) for t in extra])
        n = len(self.shapes)
        predicted = self.predict(ctx)
        if tensors is None:   # auxiliary: reduces its part, brings and receives nothing
            await ctx.phase(layout, None)
            return Averaged(None, self.name, predicted)
        compensated = {i: self.ef.compensate(str(i), tensors[i]) for i in self.k}
        sent = {i: select_topk(m, self.k[i], self.value_bits) for i, m in compensated.items()}
        local = [sent[i] if i in self.k else tensors[i] for i in range(n)] + extra
        averaged = await ctx.phase(layout, layout.flatten(local))
        assert averaged is not None
        out = layout.unflatten(averaged)
        if self.sparse_result:   # my values the update left out go back to my residual
            sent = {i: v * (out[i] != 0) for i, v in sent.items()}
        return Averaged(out[:n], self.name, predicted, extra=out[n:], commit=ResidualCommit(self.ef, compensated, sent))

    def reset(self) -> None:
        self.ef.reset()


class ResidualCommit:
    """What a committed round keeps of its inputs: each tensor's new residual (compensated - what of it the update
    holds: sent, or with a sparse result the sent values where the update is not zero)."""

    def __init__(self, ef: ErrorFeedback, compensated: dict[int, torch.Tensor], sent: dict[int, torch.Tensor]):
        self.ef, self.compensated, self.sent = ef, compensated, sent

    def __call__(self) -> None:
        for i, m in self.compensated.items():
            self.ef.update(str(i), m, self.sent[i])


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1
