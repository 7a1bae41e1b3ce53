"""A member that is slow but keeps sending stays in the round when the limits follow the work.

Three members on loopback; one uplink is paced (each chunk it sends waits PACE seconds), as a volunteer on a slow
link would be. The configured floors (sender silence FLOOR_SILENCE < PACE, averaging FLOOR_AVERAGING < the slow
member's whole upload) are the kind of constants that used to drop it. With the limits from
swarm.averaging.deadlines, computed from the vector size and the slow member's measured rate, the round completes
with every member, and every member holds the same exact mean. The same round under the bare floors fails: so the
test can tell the two apart.
"""
from __future__ import annotations

import asyncio

import pytest
import torch

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.balancing import MemberLink
from swarm.averaging.deadlines import round_limits
from swarm.averaging.group import GroupView
from swarm.averaging.layout import TensorLayout
from swarm.compression.codecs import get_codec
from swarm.errors import RoundFailed
from tests.integration.test_allreduce import shutdown, start_members

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHUNK = 500                  # values per chunk (fp32: 2000 bytes)
VALUES = 4000
PACE = 1.2                   # seconds the slow member waits before each chunk it sends
FLOOR_SILENCE, FLOOR_AVERAGING = 1.0, 3.0
SHARES = (0.0, 0.5, 0.5)     # the slow member reduces nothing (as the LP would have it)


class PacedUplink:
    """A P2P whose outgoing streams deliver one message per `pace` seconds: a slow link that still sends."""

    def __init__(self, p2p, pace: float):
        self.p2p, self.pace = p2p, pace

    @property
    def peer_id(self):
        return self.p2p.peer_id

    def iterate_protobuf_handler(self, peer, name, requests, output_type):
        async def paced():
            async for message in requests:
                await asyncio.sleep(self.pace)
                yield message
        return self.p2p.iterate_protobuf_handler(peer, name, paced(), output_type)

    async def call_binary_stream_handler(self, peer, name):   # a member's own streams (swarm.averaging.streams.ReplyStream)
        info, reader, writer = await self.p2p.call_binary_stream_handler(peer, name)
        return info, reader, PacedWriter(writer, self.pace)


class PacedWriter:
    """A stream writer that holds each message (hivemind writes one, then drains) for `pace` seconds before sending."""

    def __init__(self, writer, pace: float):
        self.writer, self.pace, self.held = writer, pace, []

    def write(self, data) -> None:
        self.held.append(bytes(data))

    async def drain(self) -> None:
        await asyncio.sleep(self.pace)
        for data in self.held:
            self.writer.write(data)
        self.held.clear()
        await self.writer.drain()

    def close(self) -> None:
        self.writer.close()


def slow_member_links() -> list[MemberLink]:
    # what the slow member's estimator measured: two streams of one 2000-byte chunk per PACE seconds
    slow = 2 * CHUNK * 4 / PACE
    return [MemberLink(upload_bps=slow, download_bps=1e7)] + [MemberLink(upload_bps=1e7, download_bps=1e7)] * 2


async def paced_round(members, services, silence: float, averaging: float):
    layout = TensorLayout.build([(VALUES,)], lambda i, n: get_codec("none"))
    values = [torch.randn(VALUES, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    ids = tuple(str(p.peer_id) for p in members)
    round_id = bytes(range(16))
    rounds = []
    for i, p in enumerate(members):
        group = GroupView(round_id=round_id, peer_ids=ids, roles=("trainer",) * 3, weights=(1.0,) * 3, shares=SHARES,
                          my_index=i, timeout=averaging)
        r = AllReduceRound(PacedUplink(p, PACE) if i == 0 else p, group, layout, [values[i]], chunk_elements=CHUNK,
                           sender_timeout=silence)
        services[i].open(r)
        rounds.append(r)
    try:
        results = await asyncio.gather(*(r.run() for r in rounds), return_exceptions=True)
    finally:
        for s in services:
            s.close(round_id)
    return rounds, results, sum(values) / 3


def test_a_slow_but_sending_member_completes_the_round_with_limits_from_the_work():
    limits = round_limits(VALUES * 4, slow_member_links(), SHARES, chunk_bytes=CHUNK * 4,
                          floor_silence=FLOOR_SILENCE, floor_averaging=FLOOR_AVERAGING)
    # the work needs more than the floors: PACE per chunk, and 8 chunks paced on two streams
    assert limits.silence > PACE > FLOOR_SILENCE and limits.averaging > 4 * PACE > FLOOR_AVERAGING

    async def main():
        members, services = await start_members(3)
        try:
            rounds, results, mean = await paced_round(members, services, limits.silence, limits.averaging)
            assert not any(isinstance(r, BaseException) for r in results), results
            assert all(not r.stats.excluded for r in rounds), [r.stats.excluded for r in rounds]
            for result in results:
                assert torch.equal(result[0], results[0][0])
            assert torch.allclose(results[0][0], mean, atol=1e-6)
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_the_same_round_under_the_bare_floors_drops_the_slow_member():
    async def main():
        members, services = await start_members(3)
        try:
            rounds, results, _ = await paced_round(members, services, FLOOR_SILENCE, FLOOR_AVERAGING)
            slow = str(members[0].peer_id)
            assert any(isinstance(r, RoundFailed) for r in results) or any(slow in r.stats.excluded for r in rounds), results
        finally:
            await shutdown(members)
    asyncio.run(main())
