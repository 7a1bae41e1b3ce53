"""A peer that reaches the leader after the epoch's group formed is told which group (TOO_LATE naming its members,
shares, round id and deadline), so that it can take the group's result from the reducers (swarm.averaging.late)
instead of failing its round. No network: the join handler is called directly."""
from __future__ import annotations

import asyncio
import secrets
from types import SimpleNamespace

import pytest

from swarm.proto import swarm_pb2
from tests.unit.swarm.test_matchmaking_step_aside import HIGH, ME, FakeTracker, join_request, matchmaker

pytestmark = pytest.mark.timeout(30)


def formed_group(epoch: int) -> swarm_pb2.GroupInfo:
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=epoch, round_id=secrets.token_bytes(16), shares=[1.0], timeout=42.0, leader=ME)
    info.members.add(peer_id=ME, role="trainer", weight=3.0, upload_bps=1e6, download_bps=1e6)
    return info



@pytest.mark.parametrize("local_epoch", [5, 6], ids=["same epoch", "leader stepped since"])
def test_too_late_names_the_formed_group(local_epoch):
    async def scenario():
        tracker = FakeTracker(epoch=5, peers=[ME, HIGH])
        mm = matchmaker(tracker)
        group = formed_group(5)
        mm._gathering(5).formed.set_result(group)
        tracker.local.epoch = local_epoch
        return group, await mm._handle_join(join_request(HIGH, 5), SimpleNamespace(remote_id=HIGH))

    group, reply = asyncio.run(scenario())
    assert reply.status == swarm_pb2.GroupInfo.TOO_LATE
    assert reply.round_id == group.round_id and list(reply.shares) == [1.0] and reply.timeout == 42.0
    assert [m.peer_id for m in reply.members] == [ME]


def test_too_late_without_a_formed_group_names_none():
    async def scenario():
        tracker = FakeTracker(epoch=5, peers=[ME, HIGH])
        mm = matchmaker(tracker)
        tracker.local.epoch = 6   # moved on by a state download: no group of epoch 5 formed here
        return await mm._handle_join(join_request(HIGH, 5), SimpleNamespace(remote_id=HIGH))

    reply = asyncio.run(scenario())
    assert reply.status == swarm_pb2.GroupInfo.TOO_LATE and not reply.round_id and not reply.members
