"""Pieces of protobuf's wire format written by hand, for the hot path of the all-reduce: a chunk's bytes are copied
into its message once, and that message is sent as it is.

hivemind's stream writer sends whatever `SerializeToString()` returns, so a `PreSerialized` message (the bytes
protobuf would make, built ahead) passes through it unchanged; the receiver parses it as the ordinary message.
"""
from __future__ import annotations

from typing import Iterable

__all__ = ["varint", "read_varint", "PreSerialized", "bytes_field", "int_field"]


def varint(value: int) -> bytes:
    """A non-negative integer as a protobuf varint."""
    if value < 0:
        raise ValueError(f"varint of a negative value {value}")
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def read_varint(view: memoryview, pos: int) -> tuple[int, int] | None:
    """The varint at `pos` and the position after it; None when it is cut off or longer than protobuf's 10 bytes."""
    value = 0
    for i in range(10):
        if pos + i >= len(view):
            return None
        byte = view[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    return None


def int_field(number: int, value: int) -> bytes:
    """A non-negative integer field (int32, uint32, bool, enum); proto3 leaves a zero out."""
    return bytes((number << 3,)) + varint(value) if value else b""


def bytes_field(number: int, length: int) -> bytes:
    """The tag and length of a bytes field of `length` bytes (its bytes follow); proto3 leaves an empty one out."""
    return bytes((number << 3 | 2,)) + varint(length) if length else b""


class PreSerialized:
    """A message serialized ahead from its pieces (copied together once): what hivemind's writer sends."""

    __slots__ = ("payload",)

    def __init__(self, pieces: Iterable[bytes | memoryview]):
        self.payload = b"".join(pieces)

    def SerializeToString(self, deterministic: bool = False) -> bytes:  # noqa: N802 (protobuf's name)
        return self.payload
