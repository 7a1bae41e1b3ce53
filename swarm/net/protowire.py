"""Pieces of protobuf's wire format written by hand, for the all-reduce's hot path: the tensor codecs copy a chunk's
values into its message once and read them back in place (swarm.compression.codecs)."""
from __future__ import annotations

__all__ = ["varint", "read_varint", "bytes_field"]


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


def bytes_field(number: int, length: int) -> bytes:
    """The tag and length of a bytes field of `length` bytes (its bytes follow); proto3 leaves an empty one out."""
    return bytes((number << 3 | 2,)) + varint(length) if length else b""

