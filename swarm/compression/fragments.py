"""A round codec for runs that average one fragment of their tensors per epoch (streaming DiLoCo).

The run's tensors are split into F fragments (lists of tensor indices, fixed for the run); the round of
epoch e averages fragment e mod F, through that fragment's own codec (its own error feedback, PowerSGD
factors, auto budget). Every member of a group is at the group's epoch, so every member averages the same
fragment with the same codec, and invariant 5 (the same averaged bytes on every member) holds per fragment.

The schema that matchmaking compares (`FragmentedLayout`) covers all the run's tensors, their codecs and the
split itself: peers that split the model differently, or use another F, never meet in a group.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

from swarm.averaging.layout import TensorLayout
from swarm.compression.round_codec import Averaged, RoundCodec, RoundContext
from swarm.errors import ConfigError

__all__ = ["FragmentedLayout", "FragmentedRoundCodec", "fragment_of_epoch"]


def fragment_of_epoch(epoch: int, fragments: int) -> int:
    """The fragment the round of `epoch` averages: fragment f every F epochs, staggered by f."""
    return epoch % fragments


@dataclass(frozen=True)
class FragmentedLayout(TensorLayout):
    """The run's full layout plus the fragment split; its hash identifies both."""

    fragments: tuple[tuple[int, ...], ...] = ()

    def schema_hash(self) -> bytes:
        return hashlib.sha256(super().schema_hash() + repr(("fragments", self.fragments)).encode()).digest()


class FragmentedRoundCodec(RoundCodec):
    """Averages fragment `epoch mod F` of the run's tensors per round, each fragment through its own codec.

    `fragments[f]` lists the run's tensor indices of fragment f (every index exactly once); `codecs[f]` is
    that fragment's codec, built for those tensors' shapes in that order. A round's tensors are the
    fragment's, in that order."""

    def __init__(self, shapes: Sequence[Sequence[int]], fragments: Sequence[Sequence[int]], codecs: Sequence[RoundCodec]):
        super().__init__(shapes)
        split = tuple(tuple(int(i) for i in f) for f in fragments)
        if len(split) < 1 or len(codecs) != len(split):
            raise ConfigError("a fragmented codec needs one codec per fragment, and at least one fragment")
        if sorted(i for f in split for i in f) != list(range(len(self.shapes))) or not all(split):
            raise ConfigError("fragments must be non-empty and hold every tensor exactly once")
        for f, codec in zip(split, codecs):
            if codec.shapes != [self.shapes[i] for i in f]:
                raise ConfigError("a fragment's codec was built for other shapes than the fragment's tensors")
        self.fragments = split
        self.codecs = list(codecs)
        self.name = self.codecs[0].name
        codec_of = {}
        for f, codec in zip(split, self.codecs):
            layout = codec.schema
            for bucket_codec, bucket in zip(layout.codecs, layout.buckets):
                for local in bucket:
                    if local < len(f):   # a codec's schema may list extra values after its tensors
                        codec_of[f[local]] = bucket_codec
        full = TensorLayout.build(self.shapes, lambda i, n: codec_of[i])
        self._schema = FragmentedLayout(full.shapes, full.codecs, full.buckets, fragments=split)

    @property
    def schema(self) -> TensorLayout:
        return self._schema

    def codec_at(self, epoch: int) -> RoundCodec:
        """The codec of the round of `epoch`."""
        return self.codecs[fragment_of_epoch(epoch, len(self.fragments))]

    def validate(self, tensors: list[torch.Tensor] | None) -> None:
        if tensors is None:
            for codec in self.codecs:
                codec.validate(None)
            return
        shapes = [tuple(t.shape) for t in tensors]
        fitting = [c for c in self.codecs if c.shapes == shapes]
        if not fitting:
            raise ConfigError("the round's tensors are not one fragment of the run's")
        for codec in fitting:
            codec.validate(tensors)

    async def average(self, ctx: RoundContext, tensors: list[torch.Tensor] | None, extra: list[torch.Tensor] | None = None) -> Averaged:
        codec = self.codec_at(ctx.epoch)
        if tensors is not None and [tuple(t.shape) for t in tensors] != codec.shapes:
            raise ConfigError(f"the round of epoch {ctx.epoch} averages fragment {fragment_of_epoch(ctx.epoch, len(self.fragments))}, "
                              "not these tensors")
        return await codec.average(ctx, tensors, extra)

    def predicted_bytes(self) -> int:
        return max(c.predicted_bytes() for c in self.codecs)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"fragment{f}.{key}": t for f, c in enumerate(self.codecs) for key, t in c.state_tensors().items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for f, codec in enumerate(self.codecs):
            prefix = f"fragment{f}."
            codec.load_state_tensors({k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)})

    def reset(self) -> None:
        for codec in self.codecs:
            codec.reset()
