"""Round codecs: how an optimizer's tensors travel through one averaging round, chosen per tensor and per round.

The interface (`RoundCodec`, `RoundContext`, `Averaged`) is in `swarm.compression.round_codec`; the codecs:

- `FixedRoundCodec`: one phase; each tensor keeps its codec from a `CompressionPolicy` (none, fp16, 8-bit).
- `PowerSGDRoundCodec` (`swarm.compression.powersgd`): two phases (the P factors, then the Q factors), error feedback.
- `AutoRoundCodec`: per round, the most precise of fp16, uniform8bit and PowerSGD whose predicted round
  time stays within `budget` x the swarm's compute seconds per epoch.

Consistency. Every member of a round must use the same layouts, so a codec's choices depend only on what
every member holds identically: the group (members, roles, measured bandwidths and LP shares, all from the
leader's GroupInfo), the run's config, and state that every member that stepped shares bitwise. The auto
codec's "compute seconds per epoch" is such state: each trainer adds its own estimate to every round as one
extra exact value, and the weighted mean that comes back (identical on every member that steps) sets the
budget of the next round; a newcomer gets it with the state download (`state_tensors`). Auxiliary peers
never receive averages, so they cannot follow the auto codec: they are refused with a ConfigError.

Every round reports what it chose (`Averaged.codec`, predicted seconds), and the optimizer puts it into
its step report and the peer's metrics line, with the bytes the round moved.
"""
from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch

from swarm.averaging.layout import TensorLayout
from swarm.compression.codecs import Codec, CompressionPolicy, get_codec
from swarm.compression.powersgd import PowerSGDRoundCodec
from swarm.compression.round_codec import (
    Averaged,
    RoundCodec,
    RoundContext,
    encoded_bytes,
    layout_bytes,
    predicted_seconds,
)
from swarm.errors import ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "RoundContext", "Averaged", "RoundCodec", "FixedRoundCodec", "AutoRoundCodec", "make_round_codec",
    "encoded_bytes", "AUTO_CANDIDATES",
]

AUTO_CANDIDATES = ("fp16", "uniform8bit", "powersgd")   # most precise first


def _extended_layout(shapes: Sequence[tuple[int, ...]], codecs: Sequence[Codec], extra_shapes: Sequence[tuple[int, ...]]) -> TensorLayout:
    """`shapes` with their codecs, then `extra_shapes` sent exactly (codec none)."""
    exact = get_codec("none")
    all_codecs = list(codecs) + [exact] * len(extra_shapes)
    return TensorLayout.build(list(shapes) + list(extra_shapes), lambda i, n: all_codecs[i])


class FixedRoundCodec(RoundCodec):
    """One phase; each tensor's codec comes from a CompressionPolicy (what the sync optimizer always did)."""

    def __init__(self, shapes: Sequence[Sequence[int]], policy: CompressionPolicy):
        super().__init__(shapes)
        self.policy = policy
        self.codecs = [policy.codec_for(str(i), _numel(s)) for i, s in enumerate(self.shapes)]
        self.layout = TensorLayout.build(self.shapes, lambda i, n: self.codecs[i])
        self.name = policy.default.name
        self._layouts: dict[tuple, TensorLayout] = {}

    @classmethod
    def from_layout(cls, layout: TensorLayout) -> "FixedRoundCodec":
        """The round codec that sends exactly `layout` (the optimizer's own layout and policy)."""
        codecs = {i: codec for codec, bucket in zip(layout.codecs, layout.buckets) for i in bucket}
        self = cls.__new__(cls)
        RoundCodec.__init__(self, layout.shapes)
        self.policy = None  # type: ignore[assignment]
        self.codecs = [codecs[i] for i in range(len(layout.shapes))]
        self.layout = layout
        self.name = max(zip(layout.bucket_sizes, (c.name for c in layout.codecs)), default=(0, ""))[1]
        self._layouts = {}
        return self

    @property
    def schema(self) -> TensorLayout:
        return self.layout

    def layout_with(self, extra_shapes: Sequence[tuple[int, ...]]) -> TensorLayout:
        key = tuple(extra_shapes)
        if not key:
            return self.layout
        if key not in self._layouts:
            self._layouts[key] = _extended_layout(self.shapes, self.codecs, key)
        return self._layouts[key]

    async def average(self, ctx: RoundContext, tensors, extra=None) -> Averaged:
        extra = list(extra or [])
        layout = self.layout_with([tuple(t.shape) for t in extra])
        n = len(self.shapes)
        local = layout.flatten(list(tensors) + extra) if tensors is not None else None
        averaged = await ctx.phase(layout, local)
        predicted = predicted_seconds(layout_bytes(layout), ctx)
        if averaged is None:
            return Averaged(None, self.name, predicted)
        out = layout.unflatten(averaged)
        return Averaged(out[:n], self.name, predicted, extra=out[n:])


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape)) if len(shape) else 1


class AutoRoundCodec(RoundCodec):
    """Per round, the most precise candidate whose predicted time fits `budget` x compute seconds per epoch.

    `compute_seconds()` is this peer's estimate of the swarm's compute time per epoch (it rides along in every
    round as one exact value; the weighted mean that comes back is the agreed figure for the next round). Until a
    figure is agreed (the first round of a run), the first candidate is used.
    """

    name = "auto"

    def __init__(self, candidates: dict[str, RoundCodec], budget: float, compute_seconds: Callable[[], float]):
        if not candidates:
            raise ConfigError("compression auto needs at least one candidate codec")
        super().__init__(next(iter(candidates.values())).shapes)
        self.candidates = candidates
        self.budget = float(budget)
        self.compute_seconds = compute_seconds
        self.agreed_compute_seconds: float | None = None
        auto = Codec("auto", -1)   # never encodes: it only names the schema
        self._schema = TensorLayout.build(self.shapes, lambda i, n: auto)

    @property
    def schema(self) -> TensorLayout:
        return self._schema

    def choose(self, ctx: RoundContext) -> tuple[str, float]:
        """The codec for this round and its predicted seconds (deterministic in the group and agreed state)."""
        predictions = {name: codec.predict(ctx) for name, codec in self.candidates.items()}
        if self.agreed_compute_seconds is None or not math.isfinite(self.agreed_compute_seconds):
            first = next(iter(self.candidates))
            return first, predictions[first]
        limit = self.budget * self.agreed_compute_seconds
        for name, seconds in predictions.items():
            if seconds <= limit:
                return name, seconds
        fastest = min(predictions, key=lambda n: predictions[n])
        return fastest, predictions[fastest]

    def validate(self, tensors) -> None:
        if tensors is None:
            raise ConfigError("compression auto cannot run on an auxiliary peer (it never receives the agreed budget)")

    async def average(self, ctx: RoundContext, tensors, extra=None) -> Averaged:
        self.validate(tensors)
        estimate = float(self.compute_seconds())
        own = torch.tensor([estimate if math.isfinite(estimate) and estimate > 0 else 0.0], dtype=torch.float32)
        name, predicted = self.choose(ctx)
        result = await self.candidates[name].average(ctx, tensors, list(extra or []) + [own])
        agreed = float(result.extra[-1][0]) if result.extra else float("nan")
        logger.debug("epoch %d: auto codec %s (predicted %.3fs, budget %.3fs)", ctx.epoch, name, predicted,
                     self.budget * (self.agreed_compute_seconds or float("nan")))
        return Averaged(result.tensors, name, predicted, extra=(result.extra or [])[:-1],
                        commit=AgreedCommit(self, result.commit, agreed))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for name, codec in self.candidates.items():
            out.update(codec.state_tensors())
        if self.agreed_compute_seconds is not None:
            out["codec.auto.compute_seconds"] = torch.tensor([self.agreed_compute_seconds], dtype=torch.float64)
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for codec in self.candidates.values():
            codec.load_state_tensors(tensors)
        value = tensors.get("codec.auto.compute_seconds")
        self.agreed_compute_seconds = float(value.reshape(-1)[0]) if value is not None and value.numel() else None

    def reset(self) -> None:
        for codec in self.candidates.values():
            codec.reset()


class AgreedCommit:
    """The auto codec's commit: the chosen codec's own, then the agreed compute seconds for the next round."""

    def __init__(self, codec: AutoRoundCodec, inner: Callable[[], None], agreed: float):
        self.codec, self.inner, self.agreed = codec, inner, agreed

    def __call__(self) -> None:
        self.inner()
        if self.agreed > 0:
            self.codec.agreed_compute_seconds = self.agreed


def make_round_codec(
    shapes: Sequence[Sequence[int]], compression: str, *, rank: int = 4, budget: float = 0.25,
    compute_seconds: Callable[[], float] = lambda: float("nan"), policy: CompressionPolicy | None = None,
    topk_fraction: float = 0.02, topk_value_bits: int = 2, topk_result: str = "topk",
) -> RoundCodec:
    """The round codec for an EngineConfig.compression name (a codec, "powersgd", "topk" or "auto")."""
    if compression == "topk":
        from swarm.compression.topk import TopKRoundCodec

        return TopKRoundCodec(shapes, topk_fraction, topk_value_bits, policy, sparse_result=topk_result == "topk")

    if compression == "powersgd":
        return PowerSGDRoundCodec(shapes, rank=rank, policy=policy or CompressionPolicy(default="fp16"))
    if compression == "auto":
        candidates: dict[str, RoundCodec] = {}
        for name in AUTO_CANDIDATES:
            if name == "powersgd":
                candidates[name] = PowerSGDRoundCodec(shapes, rank=rank, policy=CompressionPolicy(default="fp16"))
            else:
                candidates[name] = FixedRoundCodec(shapes, CompressionPolicy(default=name))
        return AutoRoundCodec(candidates, budget, compute_seconds)
    return FixedRoundCodec(shapes, policy or CompressionPolicy(default=compression))
