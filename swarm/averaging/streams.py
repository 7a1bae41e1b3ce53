"""What both ends of an aggregate stream share: the handler's name, reading a peer's stream to its end within a
timeout, and closing a stream whose peer is gone without raising."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from swarm.proto import swarm_pb2

AGGREGATE_HANDLER = "swarm.aggregate"


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
