"""Tensor codecs for the all-reduce wire, and the policy that picks one per tensor.

Each codec turns a flat float32 tensor into bytes and back, using hivemind's tensor codecs
(`hivemind.compression`); the bytes are a serialized `hivemind.proto.runtime_pb2.Tensor`, so they
stay wire-compatible with hivemind peers. Guarantees:

- `decode(encode(x))` is a 1-D float32 tensor of `x.numel()` values, and `encode` is deterministic:
  the same tensor gives the same bytes, so a reducer can send one byte string to every member.
- `decode` never trusts its input: bytes that are not a well-formed message of this codec (wrong
  compression type, dtype, shape, buffer length, codebook index) raise `ProtocolError`;
  `decode_checked` also rejects a wrong element count and non-finite values.

Codecs (error on x, per element): "none" exact; "fp16" relative error <= 2**-11 inside the fp16
range (values beyond +-65504 are clamped to it, infinities included); "uniform8bit" 256 uniform
bins over mean +- 3 std, each decoded as its bin's mean (error <= 6 std / 256 inside that range,
larger for outliers); "quantile8bit" 256 bins at approximate quantiles, each decoded as its bin's
mean. "uniform4bit" / "uniform2bit" (swarm.compression.blockquant, a wire format of ours): per block of 64 values a
minimum and a step in fp32 and 4- or 2-bit indices, error <= step / 2 (0.625 and 0.375 bytes per value;
relative L2 error about 0.094 and 0.47 on gaussian data). "sparse" (swarm.compression.sparse): Rice-coded positions and
fp16 (or codebook) values of the non-zeros, exact for fp16 values, or a bundle of such messages with weights (a reducer
sends its inputs back when smaller than their average: `bundle`); it carries top-k messages (swarm.compression.topk)
and is not meant for dense tensors. "blockwise8bit" is left out: hivemind's BLOCKWISE_8BIT needs bitsandbytes (not a dependency).

hivemind 1.1.12's `extract` for the 8-bit codecs fails under the installed NumPy 2.x (`int()` of a
1-element array) and cannot encode an empty tensor, so this module parses that (unchanged) wire format itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from google.protobuf.message import DecodeError
from hivemind.compression import serialize_torch_tensor
from hivemind.proto import runtime_pb2

from swarm.compression import blockquant, sparse
from swarm.errors import ConfigError, ProtocolError
from swarm.net.protowire import bytes_field, read_varint

__all__ = ["Codec", "BlockQuantCodec", "SparseCodec", "CODECS", "get_codec", "CompressionPolicy", "decode_checked"]

_CT = runtime_pb2.CompressionType
_BUFFER_TAG = bytes_field(1, 1)[0]  # a serialized Tensor starts with its buffer, field 1
_DTYPE = "float32"
_FP16_MIN, _FP16_MAX = torch.finfo(torch.float16).min, torch.finfo(torch.float16).max


@dataclass(frozen=True)
class Codec:
    """One wire format for a flat float32 vector: `encode` to bytes, `decode` back (see module docstring)."""

    name: str
    compression_type: int

    def encode(self, flat: torch.Tensor) -> bytes:
        """Serialize a 1-D floating-point CPU tensor (converted to float32) into deterministic bytes."""
        flat = _flat_float32(self.name, flat)
        if flat.numel() == 0 and self._is_8bit:
            # hivemind's quantizers fail on empty input; an empty codebook is the same wire format.
            message = runtime_pb2.Tensor(
                compression=self.compression_type, buffer=np.int64(0).tobytes(), size=[0], dtype=_DTYPE
            )
        elif self.compression_type == _CT.NONE:
            # The bytes hivemind's serialize_torch_tensor makes, copied once from the tensor (a hot path).
            return _tensor_message(flat.numpy(), flat.numel(), _CT.NONE)
        elif self.compression_type == _CT.FLOAT16:
            # hivemind's Float16Compression: clamp to the fp16 range, then cast (about 7x faster done here)
            half = flat.clamp(_FP16_MIN, _FP16_MAX).to(torch.float16)
            return _tensor_message(half.numpy(), flat.numel(), _CT.FLOAT16)
        else:
            message = serialize_torch_tensor(flat, self.compression_type)
        return message.SerializeToString(deterministic=True)

    def payload_bytes(self, numel: int) -> int:
        """Bytes this codec puts on the wire for `numel` values (payload only; the 8-bit codebook counted)."""
        if self.compression_type == _CT.NONE:
            return 4 * numel
        if self.compression_type == _CT.FLOAT16:
            return 2 * numel
        return numel + 8 + 4 * 256

    def decode(self, data: bytes, numel: int | None = None) -> torch.Tensor:
        """Parse bytes made by `encode` into a fresh, writable 1-D float32 tensor; raise ProtocolError on garbage.

        `numel`, when given, is the count the caller expects; codecs whose messages could claim more values than
        their bytes hold check it before allocating (the others leave it to `decode_checked`)."""
        message, buffer = _parse_tensor_message(self.name, data)
        if message.compression != self.compression_type:
            raise ProtocolError(
                f"{self.name}: expected compression {_CT.Name(self.compression_type)}, got {message.compression}"
            )
        if message.dtype != _DTYPE or len(message.size) != 1:
            raise ProtocolError(f"{self.name}: expected a 1-D {_DTYPE} tensor, got {message.dtype!r} {list(message.size)}")
        numel = int(message.size[0])
        if self._is_8bit:
            return _extract_8bit(self.name, bytes(buffer), numel)
        half = self.compression_type == _CT.FLOAT16
        itemsize = 2 if half else 4
        if len(buffer) != numel * itemsize:
            raise ProtocolError(f"{self.name}: buffer holds {len(buffer)} bytes, expected {numel * itemsize}")
        # a writable copy, converted by torch (numpy's float16 conversion is about 8x slower)
        values = torch.from_numpy(np.frombuffer(buffer, dtype=np.float16 if half else np.float32).copy())
        return values.to(torch.float32) if half else values

    @property
    def _is_8bit(self) -> bool:
        return self.compression_type in (_CT.UNIFORM_8BIT, _CT.QUANTILE_8BIT)


def _tensor_message(payload: np.ndarray, numel: int, compression: int) -> bytes:
    """The bytes `runtime_pb2.Tensor(buffer=payload, size=[numel], dtype="float32", compression=...)` serializes to,
    with the payload copied once (protobuf would copy it three times: tobytes, the message, its serialization)."""
    rest = runtime_pb2.Tensor(size=[numel], dtype=_DTYPE, compression=compression).SerializeToString(deterministic=True)
    return b"".join((bytes_field(1, payload.nbytes), memoryview(payload).cast("B"), rest))  # the buffer is field 1


def _parse_tensor_message(name: str, data: bytes) -> tuple[runtime_pb2.Tensor, memoryview]:
    """A runtime_pb2.Tensor message and a view of its buffer (field 1). When the buffer is the first field (as hivemind and
    `_tensor_message` write it) it is not copied: only the small fields after it go through protobuf."""
    view = memoryview(data)
    message = runtime_pb2.Tensor()
    try:
        if len(view) >= 2 and view[0] == _BUFFER_TAG:
            header = read_varint(view, 1)
            if header is None:
                raise ProtocolError(f"{name}: malformed length in tensor message")
            length, start = header
            end = start + length
            if end > len(view):
                raise ProtocolError(f"{name}: buffer of {length} bytes overruns a {len(view)}-byte message")
            message.ParseFromString(view[end:])
            if message.buffer:
                raise ProtocolError(f"{name}: tensor message holds two buffers")
            return message, view[start:end]
        message.ParseFromString(data)
    except (DecodeError, ValueError, TypeError) as e:
        raise ProtocolError(f"{name}: undecodable tensor message ({e})") from None
    return message, memoryview(message.buffer)


def _extract_8bit(name: str, buffer: bytes, numel: int) -> torch.Tensor:
    """Parse hivemind's 8-bit layout: int64 codebook size k, k float32 codebook values, numel uint8 indices."""
    if len(buffer) < 8:
        raise ProtocolError(f"{name}: buffer too short for a codebook header ({len(buffer)} bytes)")
    k = int(np.frombuffer(buffer, dtype=np.int64, count=1)[0])
    if not 0 <= k <= 256 or len(buffer) != 8 + 4 * k + numel or (numel > 0 and k == 0):
        raise ProtocolError(f"{name}: codebook of {k} entries and {len(buffer)} bytes do not fit {numel} values")
    codebook = torch.from_numpy(np.frombuffer(buffer, dtype=np.float32, offset=8, count=k).copy())
    indices = torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8, offset=8 + 4 * k, count=numel).astype(np.int64))
    if numel > 0 and int(indices.max()) >= k:
        raise ProtocolError(f"{name}: codebook index {int(indices.max())} out of range {k}")
    return codebook[indices]


@dataclass(frozen=True)
class BlockQuantCodec(Codec):
    """`bits`-bit block-wise uniform quantization (swarm.compression.blockquant)."""

    bits: int = 4
    block: int = 64

    def encode(self, flat: torch.Tensor) -> bytes:
        return blockquant.encode(_flat_float32(self.name, flat), self.bits, self.block)

    def decode(self, data: bytes, numel: int | None = None) -> torch.Tensor:
        return blockquant.decode(data, self.bits, self.block, self.name, numel)

    def payload_bytes(self, numel: int) -> int:
        return blockquant.payload_bytes(numel, self.bits, self.block)


@dataclass(frozen=True)
class SparseCodec(Codec):
    """Non-zeros as positions and fp16 values (swarm.compression.sparse); its size depends on the values, not only their count.

    `sparse_result`: a reducer sends back the top of the average, no more non-zeros than its largest input
    (`reduce_result`), not the whole average (swarm.compression.topk explains where the rest goes), unless the exact
    answer (a bundle of its inputs) is less than `bundle_preference` times as large: what the top leaves out comes a
    round late, which costs more than it saves where it saves less than half."""

    sparse_result: bool = False
    bundle_preference: float = 1.0

    def reduce_result(self, averaged: torch.Tensor, inputs: list[bytes]) -> torch.Tensor:
        """What a reducer's result for a chunk stands for, given the inputs it averaged (their encoded bytes): the
        average itself, or with `sparse_result` its largest values, as many as the input with the most non-zeros has."""
        if not self.sparse_result or not inputs:
            return averaged
        return sparse.top_values(averaged, max(sparse.nonzeros(data, self.name) for data in inputs))

    def encode(self, flat: torch.Tensor) -> bytes:
        return sparse.encode(_flat_float32(self.name, flat))

    def decode(self, data: bytes, numel: int | None = None) -> torch.Tensor:
        return sparse.decode(data, self.name, numel)

    def bundle(self, parts, numel: int) -> bytes:
        """(weight, encoded bytes) of each input -> one message that decodes to their weighted mean (sparse.bundle)."""
        return sparse.bundle(parts, numel)

    def payload_bytes(self, numel: int) -> int:
        return 2 * numel   # the dense bound; a top-k sender's message is far smaller (swarm.compression.topk predicts it)


def _flat_float32(name: str, flat: torch.Tensor) -> torch.Tensor:
    if flat.dim() != 1:
        raise ValueError(f"codec {name!r} encodes 1-D tensors, got shape {tuple(flat.shape)}")
    if not flat.is_floating_point():
        raise ValueError(f"codec {name!r} encodes floating-point tensors, got {flat.dtype}")
    return flat.detach().to(device="cpu", dtype=torch.float32).contiguous()


CODECS: dict[str, Codec] = {
    "none": Codec("none", _CT.NONE),
    "fp16": Codec("fp16", _CT.FLOAT16),
    "uniform8bit": Codec("uniform8bit", _CT.UNIFORM_8BIT),
    "quantile8bit": Codec("quantile8bit", _CT.QUANTILE_8BIT),
    "uniform4bit": BlockQuantCodec("uniform4bit", -4, bits=4),     # not hivemind formats: no compression type
    "uniform2bit": BlockQuantCodec("uniform2bit", -2, bits=2),
    "sparse": SparseCodec("sparse", -16),
    "sparse-topk": SparseCodec("sparse-topk", -17, sparse_result=True, bundle_preference=2.0),
}
# codecs of top-k rounds only (swarm.compression.topk): they would send a dense tensor as fp16 plus positions
TOPK_ONLY = frozenset({"sparse", "sparse-topk"})


def get_codec(name: str) -> Codec:
    """The codec registered under `name`; an unknown name raises ConfigError listing the valid ones."""
    try:
        return CODECS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"unknown codec {name!r}; valid codecs: {', '.join(sorted(CODECS))}") from None


class CompressionPolicy:
    """Which codec each named tensor gets: an exact-name override, else by size (small tensors stay precise).

    >>> policy = CompressionPolicy(default="uniform8bit")
    >>> policy.codec_for("encoder.layer.0.bias", 768).name, policy.codec_for("embeddings", 3_000_000).name
    ('none', 'uniform8bit')
    """

    def __init__(
        self,
        default: str = "fp16",
        small_tensor_codec: str = "none",
        small_tensor_threshold: int = 2**14,
        overrides: Mapping[str, str] | None = None,
    ) -> None:
        if small_tensor_threshold < 0:
            raise ConfigError(f"small_tensor_threshold must be >= 0, got {small_tensor_threshold}")
        self.default = get_codec(default)
        self.small_tensor_codec = get_codec(small_tensor_codec)
        self.small_tensor_threshold = small_tensor_threshold
        self.overrides = {key: get_codec(value) for key, value in (overrides or {}).items()}

    def codec_for(self, name: str, numel: int) -> Codec:
        """The codec for tensor `name` of `numel` elements: override, else small codec when numel < threshold."""
        if name in self.overrides:
            return self.overrides[name]
        return self.small_tensor_codec if numel < self.small_tensor_threshold else self.default


def decode_checked(codec: Codec, data: bytes, expected_numel: int) -> torch.Tensor:
    """Decode bytes a peer sent; raise ProtocolError unless they are `expected_numel` finite float32 values."""
    tensor = codec.decode(data, expected_numel)
    if tensor.numel() != expected_numel:
        raise ProtocolError(f"{codec.name}: peer sent {tensor.numel()} values, expected {expected_numel}")
    if tensor.numel() and not _all_finite(tensor):
        raise ProtocolError(f"{codec.name}: peer sent non-finite values")
    return tensor


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every value is finite. A finite sum proves it (NaN and inf propagate into a sum) at about a third of
    `aminmax`'s cost; only a sum that overflowed or met a non-finite value is looked at closer."""
    if math.isfinite(tensor.sum().item()):
        return True
    low, high = torch.aminmax(tensor)  # NaN propagates into both and inf shows at an end: 10x isfinite().all()
    return math.isfinite(low.item()) and math.isfinite(high.item())
