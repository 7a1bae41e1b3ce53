"""A banned peer (swarm.averaging.bans) never gets into a group: its join request is refused, and it is neither a
candidate leader nor waited for. No network: the join handler and the candidate lists are called directly."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from swarm.proto import swarm_pb2
from tests.unit.swarm.test_matchmaking_step_aside import HIGH, LOW, ME, FakeTracker, join_request, matchmaker

pytestmark = pytest.mark.timeout(30)


def test_a_banned_peers_join_request_is_refused_and_an_unbanned_ones_is_not():
    async def scenario(banned: set[str]):
        mm = matchmaker(FakeTracker(epoch=5, peers=[ME, HIGH]))
        mm.banned = banned
        try:
            return await asyncio.wait_for(mm._handle_join(join_request(HIGH, 5), SimpleNamespace(remote_id=HIGH)), 0.5)
        except asyncio.TimeoutError:   # held until the group forms
            return None

    reply = asyncio.run(scenario({HIGH}))
    assert reply.status == swarm_pb2.GroupInfo.REJECTED and "banned" in reply.reason
    reply = asyncio.run(scenario(set()))
    assert reply is None or reply.status != swarm_pb2.GroupInfo.REJECTED, reply


def test_a_banned_peer_is_neither_a_candidate_leader_nor_waited_for():
    mm = matchmaker(FakeTracker(epoch=5, peers=[LOW, ME, HIGH]))
    assert mm._candidates(5)[0] == LOW and mm._lower_leader(5) == LOW and LOW in mm._expected(5)
    mm.banned.add(LOW)
    assert LOW not in mm._candidates(5) and mm._lower_leader(5) is None and LOW not in mm._expected(5)
