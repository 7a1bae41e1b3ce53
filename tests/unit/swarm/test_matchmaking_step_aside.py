"""A leader that sees a lower trainer at the epoch before forming its group hands the gathering over.

Two newcomers whose records had not spread could each lead a group for one epoch, and the two groups would commit
it to different parameters (seen in tests/chaos with newcomers joining at once). No network here: the matchmaker runs
against a tracker whose view the test sets, and its join handler is called directly.
"""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from swarm.averaging.matchmaking import Matchmaker
from swarm.averaging.progress import SwarmView
from swarm.net.records import ProgressRecord
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(30)

LOW, ME, HIGH = "Qm-a-low", "Qm-m-me", "Qm-z-high"


def record(peer_id: str, epoch: int) -> ProgressRecord:
    return ProgressRecord(peer_id=peer_id, epoch=epoch, samples=0, samples_per_second=1.0, role="trainer",
                          upload_bps=1e6, download_bps=1e6, time=time.time(), training=True)


class FakeTracker:
    role = "trainer"

    def __init__(self, epoch: int, peers: list[str]):
        self.local = SimpleNamespace(epoch=epoch, training=False)   # never answers a call (swarm.averaging.calls)
        self.set_view(epoch, peers)

    def set_view(self, epoch: int, peers: list[str]) -> None:
        self.view = SwarmView(epoch=epoch, peers=tuple(record(p, epoch) for p in peers), fetched_at=time.monotonic())

    async def refresh(self) -> SwarmView:
        self.view = SwarmView(epoch=self.view.epoch, peers=self.view.peers, fetched_at=time.monotonic())
        return self.view

    def poke(self) -> None:
        pass

    def vouch(self, peer_ids) -> None:
        self.vouched = set(peer_ids)

    def trusted(self):
        return None


def matchmaker(tracker: FakeTracker) -> Matchmaker:
    mm = Matchmaker(SimpleNamespace(peer_id=ME), "run", tracker, schema_hash=b"s", gather_timeout=0.3)
    mm.peer_id = ME
    return mm


def join_request(peer_id: str, epoch: int) -> swarm_pb2.JoinRequest:
    return swarm_pb2.JoinRequest(run_id="run", peer_id=peer_id, epoch=epoch, schema_hash=b"s", role="trainer", weight=1.0)


def test_a_leader_that_sees_a_lower_trainer_before_forming_hands_over():
    async def scenario():
        tracker = FakeTracker(epoch=5, peers=[ME, HIGH])
        mm = matchmaker(tracker)
        context = SimpleNamespace(remote_id=HIGH)
        follower = asyncio.create_task(mm._handle_join(join_request(HIGH, 5), context))
        await asyncio.sleep(0.05)
        tracker.set_view(5, [LOW, ME, HIGH])  # the newcomer's record arrives while we gather
        led = await mm._lead(join_request(ME, 5), deadline=time.monotonic() + 5)
        reply = await asyncio.wait_for(follower, 5)
        return mm, led, reply

    mm, led, reply = asyncio.run(scenario())
    assert led is None, "the leader must not form a group once a lower trainer is at the epoch"
    assert reply.status == swarm_pb2.GroupInfo.NOT_LEADER and reply.leader == LOW, "followers are told whom to follow"
    assert mm._candidates(5)[0] == LOW


def test_the_lowest_trainer_forms_the_group():
    async def scenario():
        tracker = FakeTracker(epoch=5, peers=[ME, HIGH])
        mm = matchmaker(tracker)
        follower = asyncio.create_task(mm._handle_join(join_request(HIGH, 5), SimpleNamespace(remote_id=HIGH)))
        await asyncio.sleep(0.05)
        led = await mm._lead(join_request(ME, 5), deadline=time.monotonic() + 5)
        return led, await asyncio.wait_for(follower, 5)

    led, reply = asyncio.run(scenario())
    assert led is not None and led.status == swarm_pb2.GroupInfo.ACCEPTED
    assert [m.peer_id for m in led.members] == [ME, HIGH]
    assert reply.round_id == led.round_id


def test_a_refusal_naming_another_leader_makes_it_a_candidate():
    tracker = FakeTracker(epoch=5, peers=[ME, HIGH])
    mm = matchmaker(tracker)
    mm.peer_id = HIGH  # we are the follower now; ME leads in our view but stepped aside for LOW, whom we do not see

    calls = []

    async def call(peer, handler, request, reply_type):
        calls.append(str(peer))
        if str(peer) == ME:
            return swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.NOT_LEADER, epoch=5, leader=LOW)
        info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=5, leader=LOW, shares=[1.0, 0.0], timeout=5.0)
        info.members.add(peer_id=LOW, role="trainer", weight=1.0)
        info.members.add(peer_id=ME, role="trainer", weight=1.0)
        return info

    mm.p2p = SimpleNamespace(peer_id=HIGH, call_protobuf_handler=call)
    import swarm.averaging.matchmaking as module
    original = module.PeerID
    module.PeerID = SimpleNamespace(from_base58=lambda s: s)
    try:
        reply = asyncio.run(mm.form_group(join_request(HIGH, 5), deadline=time.monotonic() + 5))
    finally:
        module.PeerID = original
    assert calls[:2] == [ME, LOW]
    assert reply.status == swarm_pb2.GroupInfo.ACCEPTED and reply.leader == LOW
