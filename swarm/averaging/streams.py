"""What both ends of an aggregate stream share: the handler's name, a chunk's message serialized once, reading a
peer's stream to its end within a timeout, and closing a stream whose peer is gone without raising."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from swarm.net.protowire import PreSerialized, bytes_field, int_field
from swarm.proto import swarm_pb2

AGGREGATE_HANDLER = "swarm.aggregate"


class ChunkMessage(PreSerialized):
    """`PartChunk(part=part, chunk=chunk, data=data)` as protobuf serializes it, with `data` copied in once (protobuf
    copies it into the message and again into its serialization). A reducer sends one such message to every member.
    It reads like the PartChunk it stands for (`data` is a view into the serialized bytes)."""

    __slots__ = ("part", "chunk", "data")
    error = ""

    def __init__(self, part: int, chunk: int, data: bytes):
        super().__init__((int_field(2, part), int_field(3, chunk), bytes_field(4, len(data)), data))
        self.part, self.chunk = part, chunk
        self.data = memoryview(self.payload)[len(self.payload) - len(data):]


async def drain(requests: AsyncIterator[swarm_pb2.PartChunk], timeout: float) -> None:
    """Read a refused sender's remaining chunks before closing the stream: closing it while the sender still
    writes breaks the sender's pipe, and its transport then drops our refusal unread (a BrokenPipeError
    instead of the reason)."""
    try:
        async with asyncio.timeout(timeout):
            async for _ in requests:
                pass
    except Exception:  # TimeoutError included: a sender that never ends its stream is just closed
        pass


async def close_quietly(stream: AsyncIterator[swarm_pb2.PartChunk]) -> None:
    """Close a reply stream (and with it the request writer) whatever state it is in."""
    try:
        await stream.aclose()  # type: ignore[attr-defined]
    except Exception:
        pass
