"""The all-reduce's layout: which tensors go into which bucket (one codec each), and how each bucket splits into
the reducers' parts (in proportion to their LP shares) and the parts into chunks, the unit that is sent, reduced and
sent back. Every member computes the same plan from the same group, so nothing about it is negotiated."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from swarm.averaging.balancing import split_sizes
from swarm.compression.codecs import Codec

DEFAULT_CHUNK_ELEMENTS = 2**17


# A reducer sends a chunk back only once every sender's copy of it is in, so a part sent as one chunk is
# store-and-forward: its averaged values leave after the slowest sender's last byte. Parts are therefore cut
# into at least PIPELINE_DEPTH chunks (down to MIN_CHUNK_ELEMENTS values each), so that outputs stream while
# inputs still arrive. (With many peers and a modest vector every part is about one default chunk: on an
# emulated 12-peer swarm with 4 MB vectors the model puts the difference at 9.3 s against 6.5 s.)
PIPELINE_DEPTH = 8


MIN_CHUNK_ELEMENTS = 2**12


@dataclass(frozen=True)
class TensorLayout:
    """Tensors grouped into flat buckets by codec; the same for every member of a run."""

    shapes: tuple[tuple[int, ...], ...]
    codecs: tuple[Codec, ...]                 # one per bucket
    buckets: tuple[tuple[int, ...], ...]      # tensor indices per bucket

    @classmethod
    def build(cls, shapes: Sequence[Sequence[int]], codec_for: Callable[[int, int], Codec]) -> "TensorLayout":
        """`codec_for(tensor_index, numel)` gives each tensor's codec; tensors sharing a codec share a bucket."""
        by_codec: dict[str, list[int]] = {}
        codecs: dict[str, Codec] = {}
        for i, shape in enumerate(shapes):
            codec = codec_for(i, int(np.prod(shape)) if len(shape) else 1)
            by_codec.setdefault(codec.name, []).append(i)
            codecs[codec.name] = codec
        names = sorted(by_codec)
        return cls(
            shapes=tuple(tuple(int(d) for d in s) for s in shapes),
            codecs=tuple(codecs[n] for n in names),
            buckets=tuple(tuple(by_codec[n]) for n in names),
        )

    @property
    def bucket_sizes(self) -> list[int]:
        return [sum(self.numel(i) for i in bucket) for bucket in self.buckets]

    def wire_bytes(self) -> int:
        """Bytes of the whole vector as the codecs send it: what a round's time limits are computed for."""
        return sum(codec.payload_bytes(n) for codec, n in zip(self.codecs, self.bucket_sizes))

    def chunk_bytes(self, chunk_elements: int) -> int:
        """Bytes of the largest chunk the codecs send (a round's silence limit allows for one on each stream)."""
        return max((codec.payload_bytes(min(n, chunk_elements)) for codec, n in zip(self.codecs, self.bucket_sizes)), default=0)

    def numel(self, i: int) -> int:
        return int(np.prod(self.shapes[i])) if self.shapes[i] else 1

    def schema_hash(self) -> bytes:
        import hashlib

        text = repr((self.shapes, [c.name for c in self.codecs], self.buckets))
        return hashlib.sha256(text.encode()).digest()

    def flatten(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return [
            torch.cat([tensors[i].detach().reshape(-1).float().cpu() for i in bucket]) if bucket else torch.zeros(0)  # the wire is CPU
            for bucket in self.buckets
        ]

    def unflatten(self, flats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out: list[torch.Tensor | None] = [None] * len(self.shapes)
        for bucket, flat in zip(self.buckets, flats):
            offset = 0
            for i in bucket:
                n = self.numel(i)
                out[i] = flat[offset : offset + n].view(self.shapes[i])
                offset += n
        return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Chunk:
    bucket: int
    start: int
    length: int


def chunk_length(part_size: int, chunk_elements: int) -> int:
    """Values per chunk of a part: at most `chunk_elements`, and small enough for PIPELINE_DEPTH chunks a part
    (but not below MIN_CHUNK_ELEMENTS, nor below `chunk_elements` when that is smaller)."""
    return max(1, min(chunk_elements, max(MIN_CHUNK_ELEMENTS, -(-part_size // PIPELINE_DEPTH))))


def plan_parts(layout: TensorLayout, shares: Sequence[float], chunk_elements: int) -> list[list[Chunk]]:
    """For each member (part index), the ordered chunks of the vector it reduces (the same on every member)."""
    parts: list[list[Chunk]] = [[] for _ in shares]
    for b, size in enumerate(layout.bucket_sizes):
        offset = 0
        for j, part_size in enumerate(split_sizes(size, shares)):
            end = offset + part_size
            step = chunk_length(part_size, chunk_elements)
            for start in range(offset, end, step):
                parts[j].append(Chunk(b, start, min(step, end - start)))
            offset = end
    return parts
