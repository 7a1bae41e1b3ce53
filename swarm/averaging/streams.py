"""What both ends of an aggregate stream share: the handler's name, the reducer's heartbeat, reading a peer's stream
to its end within a timeout, and closing a stream whose peer is gone without raising."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from swarm.proto import swarm_pb2

AGGREGATE_HANDLER = "swarm.aggregate"


def heartbeat(part: int, chunk: int) -> swarm_pb2.PartChunk:
    """A reducer's "alive, chunk `chunk` not averaged yet": sent at once to a fetch and to a member's first stream, and
    while a member waits for an averaged chunk, so a reducer that waits (for a slow sender, a later stage) is never
    dropped for it, and one that stops them is dead or frozen (see swarm.averaging.allreduce, FETCH_RETRIES)."""
    return swarm_pb2.PartChunk(part=part, chunk=chunk, fetch=True)


def is_heartbeat(reply: swarm_pb2.PartChunk) -> bool:
    return reply.fetch and not (reply.data or reply.resend or reply.error)


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
