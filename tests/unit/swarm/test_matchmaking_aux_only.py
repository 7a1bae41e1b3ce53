"""Auxiliary peers alone never form a group: they have nothing to average. Such a group (shares all 0) once formed at
an epoch answered every trainer of that epoch "formed without you" for as long as it stood, and a trainer that cannot
take a late result (streaming DiLoCo) failed each attempt: on emulated dedloc-albert the swarm stayed at one epoch for
the whole run. No network: the join handler is called directly (as in test_matchmaking_step_aside)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from swarm.averaging.matchmaking import group_problem
from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2
from tests.unit.swarm.test_matchmaking_step_aside import HIGH, ME, FakeTracker, join_request, matchmaker

OTHER = "Qm-z-other"

pytestmark = pytest.mark.timeout(30)


def aux_request(peer_id: str, epoch: int) -> swarm_pb2.JoinRequest:
    request = join_request(peer_id, epoch)
    request.role, request.weight = "aux", 0.0
    return request


def test_an_auxiliary_leader_with_only_auxiliary_followers_forms_no_group():
    async def scenario():
        tracker = FakeTracker(epoch=5, peers=[ME, HIGH])
        tracker.role = "aux"
        mm = matchmaker(tracker)
        follower = asyncio.create_task(mm._handle_join(aux_request(HIGH, 5), SimpleNamespace(remote_id=HIGH)))
        await asyncio.sleep(0.05)
        with pytest.raises(RoundFailed, match="no member brings gradients"):
            await mm._lead(aux_request(ME, 5), deadline=time.monotonic() + 5)
        return await asyncio.wait_for(follower, 5), mm

    reply, mm = asyncio.run(scenario())
    assert reply.status == swarm_pb2.GroupInfo.REJECTED and "no member brings gradients" in reply.reason
    assert mm._formed_without(5) is None and 5 not in mm._gatherings, "the epoch is open again for its trainers"


def test_a_group_in_which_nobody_reduces_is_refused_by_its_members():
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.TOO_LATE, epoch=5, timeout=10.0, shares=[0.0, 0.0], round_id=b"r" * 16)
    info.members.add(peer_id="Qm-a", role="aux", weight=0.0)
    info.members.add(peer_id="Qm-b", role="aux", weight=0.0)
    assert group_problem(info) == "nobody reduces"
    info.shares[0] = 1.0
    assert group_problem(info) == ""


def test_a_leader_whose_trainer_is_not_ready_does_not_close_a_gathering_of_auxiliary_peers_alone():
    """The leader's own trainer is still on its micro-batch; two auxiliary peers asked. When the gathering time is up
    the leader gathers anew (NOT_LEADER, "gathering again") instead of forming a group in which nobody brings
    gradients: such a group answered the trainers "already formed" for the rest of the epoch (emulated dedloc-albert,
    streaming DiLoCo: one epoch in 150 s)."""
    async def scenario():
        mm = matchmaker(FakeTracker(epoch=5, peers=[ME, HIGH, OTHER]))
        joins = [asyncio.create_task(mm._handle_join(aux_request(p, 5), SimpleNamespace(remote_id=p))) for p in (HIGH, OTHER)]
        return await asyncio.wait_for(asyncio.gather(*joins), 5), mm

    replies, mm = asyncio.run(scenario())
    assert all(r.status == swarm_pb2.GroupInfo.NOT_LEADER and r.reason == "gathering again" for r in replies), replies
    assert 5 not in mm._gatherings, "the epoch gathers anew"
