"""A peer whose micro-batch outlasted the epoch's gathering finds the group that formed without it.

With a real model a micro-batch can take 20 s: the others gather, average and step to the next epoch meanwhile.
The late peer then no longer sees them as candidates of its epoch; it used to lead a group of one ("alone"), fail the
round and download the whole state. Now it asks the peers it averaged with that are one epoch ahead first, and any
member of the formed group (not only its leader) names the group, so the late peer takes its result from the reducers.
No network here: fake tracker and transport, as in test_matchmaking_step_aside.
"""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

import swarm.averaging.matchmaking as module
from swarm.averaging.matchmaking import LateForGroup, Matchmaker
from swarm.averaging.progress import SwarmView
from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2
from tests.unit.swarm.test_matchmaking_step_aside import FakeTracker, join_request, record

pytestmark = pytest.mark.timeout(30)

LOW, ME, HIGH = "Qm-a-low", "Qm-m-me", "Qm-z-high"


class TrustingTracker(FakeTracker):
    def __init__(self, epoch: int, records, trusted):
        self.local = SimpleNamespace(epoch=epoch, training=False)   # never answers a call (swarm.averaging.calls)
        self.view = SwarmView(epoch=max(r.epoch for r in records), peers=tuple(records), fetched_at=time.monotonic())
        self._trusted = set(trusted)

    def trusted(self):
        return self._trusted


def formed_group() -> swarm_pb2.GroupInfo:
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=5, leader=LOW, shares=[0.5, 0.5], timeout=5.0,
                               round_id=b"r" * 16)
    info.members.add(peer_id=LOW, role="trainer", weight=1.0)
    info.members.add(peer_id=HIGH, role="trainer", weight=1.0)
    return info


def run_form_group(mm: Matchmaker, call) -> tuple[list[str], object]:
    calls: list[str] = []

    async def recording(peer, handler, request, reply_type):
        calls.append(str(peer))
        return await call(str(peer), request)

    mm.p2p = SimpleNamespace(peer_id=mm.peer_id, call_protobuf_handler=recording)
    original = module.PeerID
    module.PeerID = SimpleNamespace(from_base58=lambda s: s)
    try:
        try:
            outcome = asyncio.run(mm.form_group(join_request(mm.peer_id, 5), deadline=time.monotonic() + 3))
        except (LateForGroup, RoundFailed) as e:
            outcome = e
    finally:
        module.PeerID = original
    return calls, outcome


def late_peer(trusted) -> Matchmaker:
    tracker = TrustingTracker(5, [record(LOW, 6), record(HIGH, 6), record(ME, 5)], trusted)
    mm = Matchmaker(SimpleNamespace(peer_id=ME), "run", tracker, schema_hash=b"s", gather_timeout=0.2)
    mm.peer_id = ME
    return mm


def test_a_late_peer_asks_the_peers_ahead_and_takes_the_formed_group():
    mm = late_peer(trusted={LOW, HIGH})
    assert mm._candidates(5)[:2] == [LOW, HIGH], "peers one epoch ahead that averaged with us come first"

    async def answer(peer, request):   # the leader forgot the gathering; the follower HIGH kept the group it joined
        if peer == LOW:
            return swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.TOO_LATE, epoch=5, reason="swarm is at epoch 6")
        late = formed_group()
        late.status = swarm_pb2.GroupInfo.TOO_LATE
        return late

    calls, outcome = run_form_group(mm, answer)
    assert calls == [LOW, HIGH]
    assert isinstance(outcome, LateForGroup) and outcome.group.round_id == b"r" * 16


def test_strangers_ahead_are_not_asked_first():
    """An epoch claim of a peer that never averaged with us puts nobody in front of the epoch's own candidates."""
    mm = late_peer(trusted=set())
    assert mm._ahead(5) == []
    assert mm._candidates(5) == [ME]


def test_a_follower_names_the_group_it_joined_to_a_late_asker():
    async def scenario():
        tracker = FakeTracker(epoch=5, peers=[LOW, ME])
        mm = Matchmaker(SimpleNamespace(peer_id=ME), "run", tracker, schema_hash=b"s", gather_timeout=0.2)
        mm.peer_id = ME

        async def call(peer, handler, request, reply_type):
            return formed_group()

        mm.p2p = SimpleNamespace(peer_id=ME, call_protobuf_handler=call)
        original = module.PeerID
        module.PeerID = SimpleNamespace(from_base58=lambda s: s)
        try:
            joined = await mm.form_group(join_request(ME, 5), deadline=time.monotonic() + 3)
        finally:
            module.PeerID = original
        tracker.local.epoch = 6   # we stepped
        return joined, await mm._handle_join(join_request(HIGH, 5), SimpleNamespace(remote_id=HIGH))

    joined, reply = asyncio.run(scenario())
    assert joined.status == swarm_pb2.GroupInfo.ACCEPTED
    assert reply.status == swarm_pb2.GroupInfo.TOO_LATE and reply.round_id == b"r" * 16
    assert [m.peer_id for m in reply.members] == [LOW, HIGH]
