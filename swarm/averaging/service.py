"""The `swarm.aggregate` stream handler: routes each incoming stream to the round it names, refuses what is not
for an open round (or not authorized) at once, and drains a refused stream before closing it."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2P, P2PContext

from swarm.averaging.allreduce import FINISHED_GRACE, AllReduceRound
from swarm.averaging.result_exchange import RESULTS_HANDLER, unpack_report
from swarm.averaging.streams import AGGREGATE_HANDLER, drain, heartbeat
from swarm.net.auth import SwarmAuthorizer
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

HEARTBEAT_EVERY = 1.0   # seconds between heartbeats to a member whose round has not opened here yet (below any silence floor)

class AggregateService:
    """Registers the aggregate handler once and dispatches each stream to its round by round id."""

    def __init__(self, p2p: P2P, wait_for_round: float = 10.0, authorizer: SwarmAuthorizer | None = None):
        self.p2p = p2p
        self.wait_for_round = wait_for_round
        self.authorizer = authorizer  # invite-only runs: a stream whose first chunk is not authorized is refused
        self._rounds: dict[bytes, asyncio.Future[AllReduceRound]] = {}
        self._finished: dict[bytes, tuple[AllReduceRound, float]] = {}  # round id -> (round, kept until)

    async def start(self) -> None:
        await self.p2p.add_protobuf_handler(AGGREGATE_HANDLER, self._handle, swarm_pb2.PartChunk, stream_input=True, stream_output=True)
        await self.p2p.add_protobuf_handler(RESULTS_HANDLER, self._handle_results, BytesValue)

    def _slot(self, round_id: bytes) -> asyncio.Future[AllReduceRound]:
        if round_id not in self._rounds:
            self._rounds[round_id] = asyncio.get_running_loop().create_future()
            while len(self._rounds) > 64:  # forget the oldest rounds
                old = next(iter(self._rounds))
                self._rounds.pop(old).cancel()
        return self._rounds[round_id]

    def open(self, round_: AllReduceRound) -> None:
        """Route the round's incoming streams to it; it signs its own streams with this node's authorizer."""
        if round_.authorizer is None:
            round_.authorizer = self.authorizer
        slot = self._slot(round_.group.round_id)
        if not slot.done():
            slot.set_result(round_)

    def close(self, round_id: bytes) -> None:
        """The round is over: refuse new contributions, but answer fetches of its part for FINISHED_GRACE s."""
        slot = self._rounds.pop(round_id, None)
        if slot is None:
            return
        if not slot.done():
            slot.cancel()
        elif not slot.cancelled():
            round_ = slot.result()
            round_.retire()
            now = time.monotonic()
            self._finished = {k: v for k, v in self._finished.items() if v[1] > now}
            self._finished[round_id] = (round_, now + FINISHED_GRACE)
            while len(self._finished) > 16:
                self._finished.pop(next(iter(self._finished)))

    def stop(self) -> None:
        """Retire every round: their streams still waiting for chunks end at once (answering "part not averaged")."""
        for round_id in list(self._rounds):
            self.close(round_id)
        for round_, _ in self._finished.values():
            round_.retire()
        self._finished.clear()

    async def _handle_results(self, request: BytesValue, context: P2PContext) -> BytesValue:
        """A member's result report for a round (swarm.averaging.result_exchange): kept, and answered with mine once
        my parts are in (at most wait_for_round seconds); an empty answer for a round I do not know or do not check."""
        report = unpack_report(request.value)
        if report is None or len(report.round_id) != 16:
            return BytesValue()
        round_id = report.round_id
        finished = self._finished.get(round_id)
        try:
            round_ = finished[0] if finished is not None else await asyncio.wait_for(asyncio.shield(self._slot(round_id)), self.wait_for_round)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            return BytesValue()
        check = round_.results
        if check is None or str(context.remote_id) not in round_.group.peer_ids:
            # only the round's members swap statements: they were admitted by matchmaking (invites checked there), so
            # a stranger (an uninvited peer included) learns nothing and holds no handler open for wait_for_round
            return BytesValue()
        check.offer(str(context.remote_id), report)
        try:
            await asyncio.wait_for(check.ready.wait(), self.wait_for_round)
        except asyncio.TimeoutError:
            pass
        return BytesValue(value=check.answer(report))

    async def _handle(self, requests: AsyncIterator[swarm_pb2.PartChunk], context: P2PContext) -> AsyncIterator[swarm_pb2.PartChunk]:
        try:
            first = await asyncio.wait_for(anext(requests), self.wait_for_round)
        except (StopAsyncIteration, asyncio.TimeoutError):
            return
        problem = self.authorizer.check_message(first, context.remote_id) if self.authorizer is not None else None
        if problem is not None:
            logger.info("refused an aggregate stream from %s: %s", str(context.remote_id)[-8:], problem)
            yield swarm_pb2.PartChunk(error=f"unauthorized: {problem}")
            await drain(requests, self.wait_for_round)
            return
        if len(first.round_id) != 16:
            yield swarm_pb2.PartChunk(error="bad round id")
            await drain(requests, self.wait_for_round)
            return
        if not first.fetch:   # a member's first stream of a round: alive, at once (allreduce.HEARTBEAT_SLACK)
            yield heartbeat(first.part, first.chunk)
        finished = self._finished.get(first.round_id)
        if finished is not None and finished[1] > time.monotonic():
            if not first.fetch:
                yield swarm_pb2.PartChunk(error="unknown or finished round")
                await drain(requests, self.wait_for_round)
                return
            async for reply in self._served(finished[0], first, requests, context.remote_id):
                yield reply
            return
        slot, waited = self._slot(first.round_id), 0.0
        round_ = None
        while round_ is None and waited < self.wait_for_round:   # the member may be ahead of me: wait, and heartbeat
            step = min(HEARTBEAT_EVERY, self.wait_for_round - waited)
            try:
                round_ = await asyncio.wait_for(asyncio.shield(slot), step)
            except asyncio.TimeoutError:
                waited += step
                if not first.fetch and waited < self.wait_for_round:
                    yield heartbeat(first.part, first.chunk)
            except asyncio.CancelledError:
                break
        if round_ is None:
            yield swarm_pb2.PartChunk(error="unknown or finished round")
            await drain(requests, self.wait_for_round)
            return
        async for reply in self._served(round_, first, requests, context.remote_id):
            yield reply

    async def _served(self, round_: AllReduceRound, first: swarm_pb2.PartChunk, requests: AsyncIterator[swarm_pb2.PartChunk],
                      remote) -> AsyncIterator[swarm_pb2.PartChunk]:
        """The round's replies to one stream. A round that refuses a stream (an error as its last word) returns without
        reading the sender's end-of-stream; closing the stream then resets it and can destroy the refusal in flight
        (the sender reads a bare end, no reason: a "bad fetch" lost so failed a CI run), so drain it first."""
        last = None
        async for reply in round_.serve(first, requests, remote):
            last = reply
            yield reply
        if last is not None and last.error:
            await drain(requests, self.wait_for_round)
