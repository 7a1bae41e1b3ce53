"""What both ends of an aggregate stream share: the handler's name, the reducer's heartbeat, reading a peer's stream
to its end within a timeout, a member's own stream to a reducer with a time limit per reply (ReplyStream), telling a
dial that failed from other errors, and closing a stream whose peer is gone without raising."""
from __future__ import annotations

import asyncio
from typing import AsyncIterator

from hivemind.p2p import P2P, P2PHandlerError, PeerID
from hivemind.p2p.p2p_daemon_bindings.utils import P2PDaemonError

from swarm.proto import swarm_pb2

AGGREGATE_HANDLER = "swarm.aggregate"


def heartbeat(part: int, chunk: int) -> swarm_pb2.PartChunk:
    """A reducer's "alive, chunk `chunk` not averaged yet": sent at once on a member's stream (first stream or fetch),
    and while the member waits for an averaged chunk, so that the member tells a reducer that is waiting (for a slow
    sender, a later stage) from one that is dead or frozen within the silence limit, not the reply limit
    (swarm.averaging.allreduce.HEARTBEAT_SLACK)."""
    return swarm_pb2.PartChunk(part=part, chunk=chunk, fetch=True)


def dial_failed(e: BaseException) -> bool:
    """Whether opening a stream failed because our p2pd could not dial the peer (connection refused, dial backoff after
    such a failure, a dial timeout): the peer is gone or unreachable from here, now. Not a peer our p2pd knows no
    address of (`routing: not found`, swarm.averaging.matchmaking.unroutable), nor a stream that broke once open."""
    return isinstance(e, P2PDaemonError) and "failed to dial" in str(e)


def is_heartbeat(reply: swarm_pb2.PartChunk) -> bool:
    return reply.fetch and not (reply.data or reply.resend or reply.error)


async def drain(requests: AsyncIterator, timeout: float) -> None:
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


class ReplyStream:
    """A member's aggregate stream to a reducer: its requests written by a task of its own, its replies read with a
    time limit each.

    Not hivemind's iterate_protobuf_handler, for two reasons that matter to delivery confirmation
    (swarm.averaging.allreduce: a member keeps its request stream open until it holds the reducer's part, then says
    so): hivemind's reply iterator reports the reducer's end-of-stream only once the request writer is done (a reducer
    that cut the stream looked silent for a reply limit), and a read cancelled by a timeout cancels the request writer
    (the last word could not go out). Here the reducer's end shows at once, a timed-out read goes on in the background,
    and only close() ends the writer."""

    _END = object()

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: AsyncIterator[swarm_pb2.PartChunk]):
        self._reader, self._writer = reader, writer
        self._writing = asyncio.create_task(self._write(requests))
        self._pending: asyncio.Future | None = None

    @classmethod
    async def open(cls, p2p: P2P, peer: PeerID, requests: AsyncIterator[swarm_pb2.PartChunk]) -> "ReplyStream":
        _, reader, writer = await p2p.call_binary_stream_handler(peer, AGGREGATE_HANDLER)
        return cls(reader, writer, requests)

    async def _write(self, requests: AsyncIterator[swarm_pb2.PartChunk]) -> None:
        async for request in requests:
            await P2P.send_protobuf(request, self._writer)
        await P2P.send_protobuf(P2P.END_OF_STREAM, self._writer)

    async def _read(self):
        try:
            reply, error = await P2P.receive_protobuf(swarm_pb2.PartChunk, self._reader)   # size-capped: swarm.net.wire
        except asyncio.IncompleteReadError:   # the reducer closed the stream (or its connection broke)
            return self._END
        if error is not None:
            raise P2PHandlerError(f"the reducer's handler failed: {error.message}")
        return reply

    async def next(self, timeout: float) -> swarm_pb2.PartChunk:
        """The next reply; asyncio.TimeoutError after `timeout` s (the read goes on), StopAsyncIteration at the end."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._read())
        done, _ = await asyncio.wait({self._pending}, timeout=timeout)
        if not done:
            raise asyncio.TimeoutError
        read, self._pending = self._pending, None
        reply = read.result()
        if reply is self._END:
            self._pending = read   # every later read ends too
            raise StopAsyncIteration
        return reply

    async def close(self) -> None:
        """End the read in flight and the request writer, and close the stream; never raises."""
        for task in (self._pending, self._writing):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (self._pending, self._writing) if t is not None), return_exceptions=True)
        self._pending = None
        try:
            self._writer.close()
        except Exception:
            pass
