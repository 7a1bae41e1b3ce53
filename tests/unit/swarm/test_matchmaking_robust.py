"""Robust mode never averages in a group of several where one bad member cannot be outvoted (fewer than three members
that bring gradients): an honest leader keeps gathering and then refuses to form it, and a member that is handed such
a group by a leader (who may be the bad member) refuses to average in it. No network: the join handler is called
directly, as in test_matchmaking_step_aside."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from swarm.averaging.matchmaking import ROBUST_MIN_TRAINERS, robust_group_problem
from swarm.collaboration import Collaboration
from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2
from tests.unit.swarm.test_matchmaking_step_aside import HIGH, ME, FakeTracker, join_request, matchmaker

pytestmark = pytest.mark.timeout(30)

OTHER = "Qm-z-other"


def lead_with(followers: list[str], min_trainers: int):
    """Lead epoch 5 with these followers' join requests held; the leader's outcome and each follower's reply."""
    async def scenario():
        mm = matchmaker(FakeTracker(epoch=5, peers=[ME, *followers]))
        mm.min_trainers = min_trainers
        joins = [asyncio.create_task(mm._handle_join(join_request(f, 5), SimpleNamespace(remote_id=f))) for f in followers]
        await asyncio.sleep(0.05)
        started = time.monotonic()
        try:
            led: object = await mm._lead(join_request(ME, 5), deadline=time.monotonic() + 5)
        except RoundFailed as e:
            led = e
        return led, [await asyncio.wait_for(j, 5) for j in joins], time.monotonic() - started

    return asyncio.run(scenario())


def test_a_robust_leader_refuses_a_group_of_two_and_tells_its_follower_why():
    led, replies, seconds = lead_with([HIGH], ROBUST_MIN_TRAINERS)
    assert isinstance(led, RoundFailed) and "robust mode needs 3 trainers" in str(led), led
    assert replies[0].status == swarm_pb2.GroupInfo.REJECTED and "robust mode needs 3" in replies[0].reason, replies[0]
    assert seconds >= 0.25, "a short group waits out the gathering (gather_timeout 0.3 s) for trainers still finishing"


def test_a_robust_leader_forms_a_group_of_three_and_a_plain_one_a_group_of_two():
    led, replies, _ = lead_with([HIGH, OTHER], ROBUST_MIN_TRAINERS)
    assert led.status == swarm_pb2.GroupInfo.ACCEPTED and len(led.members) == 3
    assert all(r.status == swarm_pb2.GroupInfo.ACCEPTED for r in replies)
    led, replies, _ = lead_with([HIGH], 1)
    assert led.status == swarm_pb2.GroupInfo.ACCEPTED and len(led.members) == 2, "robust off: two peers average"


def test_a_short_robust_gathering_waits_past_gather_timeout_for_an_expected_trainer_still_missing():
    """Three trainers at the epoch, one of them late by more than the gathering (0.3 s): the leader holds the short
    group for it instead of refusing its follower (who would lead, step aside and miss the next gathering)."""
    async def scenario(late_by: float | None):
        mm = matchmaker(FakeTracker(epoch=5, peers=[ME, HIGH, OTHER]))
        mm.min_trainers = ROBUST_MIN_TRAINERS
        first = asyncio.create_task(mm._handle_join(join_request(HIGH, 5), SimpleNamespace(remote_id=HIGH)))

        async def late():
            await asyncio.sleep(late_by)
            return await mm._handle_join(join_request(OTHER, 5), SimpleNamespace(remote_id=OTHER))

        second = asyncio.create_task(late()) if late_by is not None else None
        started = time.monotonic()
        try:
            led: object = await mm._lead(join_request(ME, 5), deadline=time.monotonic() + 20)
        except RoundFailed as e:
            led = e
        seconds = time.monotonic() - started
        replies = [await asyncio.wait_for(j, 5) for j in (first, second) if j is not None]
        return led, replies, seconds

    led, replies, seconds = asyncio.run(scenario(late_by=1.0))
    assert led.status == swarm_pb2.GroupInfo.ACCEPTED and len(led.members) == 3, led
    assert all(r.status == swarm_pb2.GroupInfo.ACCEPTED for r in replies) and 0.9 <= seconds < 2.0, seconds
    # nobody comes: refused once the follower's request would run out (gather_timeout + request_timeout - 1 s)
    led, replies, seconds = asyncio.run(scenario(late_by=None))
    assert isinstance(led, RoundFailed) and replies[0].status == swarm_pb2.GroupInfo.REJECTED
    assert 4.0 <= seconds < 5.0, seconds


def test_which_groups_robust_mode_refuses():
    assert robust_group_problem(["trainer", "trainer"])
    assert robust_group_problem(["trainer", "trainer", "aux"]), "an auxiliary peer brings no gradient to compare"
    assert robust_group_problem(["trainer", "trainer", "client"]) == "", "a client brings gradients"
    assert robust_group_problem(["trainer"] * 3) == ""
    assert robust_group_problem(["trainer"]) == "", "a group of one steps solo: nobody else's values in it"


def group(*roles: str) -> swarm_pb2.GroupInfo:
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=5, leader="Qm-bad-leader", timeout=10.0)
    for i, role in enumerate(roles):
        info.members.add(peer_id=f"Qm-{i}", role=role, weight=1.0)
    return info


def test_a_robust_member_refuses_a_group_of_two_formed_by_another_leader():
    mm = matchmaker(FakeTracker(epoch=5, peers=[ME, HIGH]))
    robust = SimpleNamespace(robust=True, config=SimpleNamespace(robust="on"), matchmaker=mm)
    with pytest.raises(RoundFailed, match="robust mode needs 3 trainers.*leader d-leader"):
        Collaboration._check_robust_group(robust, 5, group("trainer", "trainer"))
    Collaboration._check_robust_group(robust, 5, group("trainer", "trainer", "trainer"))   # no error
    Collaboration._check_robust_group(SimpleNamespace(robust=False, config=SimpleNamespace(robust="off"), matchmaker=mm), 5,
                                      group("trainer", "trainer"))
    # auto: the group averages with the plain mean instead (a new open run's first two volunteers train together)
    Collaboration._check_robust_group(SimpleNamespace(robust=True, config=SimpleNamespace(robust="auto"), matchmaker=mm), 5,
                                      group("trainer", "trainer"))


def test_a_follower_refused_by_a_robust_short_leader_follows_the_next_candidate():
    """Two halves that each refuse a group of two (one bans a peer the other does not) must not stall: the follower
    refused for a robust-short group tries the next leader candidate in the same attempt, and joins its group of
    three; a later attempt starts from the lowest candidate again."""
    low, mid, me = "QmAAow", "QmBBid", "QmZZme"   # base58, sorted: low leads first, then mid
    asked = []

    class P2P:
        peer_id = me

        async def call_protobuf_handler(self, peer, handler, request, reply_type):
            asked.append(peer.to_base58())
            if peer.to_base58() == low:
                return swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.REJECTED, epoch=5, leader=low,
                                           reason=robust_group_problem(["trainer", "trainer"]))
            info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=5, leader=mid, timeout=10.0,
                                       round_id=b"r" * 16, shares=[1 / 3] * 3)
            for pid in (mid, "QmCCther", me):
                info.members.add(peer_id=pid, role="trainer", weight=1.0, upload_bps=1e6, download_bps=1e6)
            return info

    from swarm.averaging.matchmaking import Matchmaker
    mm = Matchmaker(P2P(), "run", FakeTracker(epoch=5, peers=[low, mid, me]), schema_hash=b"s", gather_timeout=0.3)
    mm.peer_id, mm.min_trainers = me, ROBUST_MIN_TRAINERS
    group = asyncio.run(mm.form_group(join_request(me, 5), deadline=time.monotonic() + 5))
    assert asked == [low, mid] and group.leader == mid and len(group.members) == 3
    assert low not in mm._failed.get(5, set()), "the next attempt asks the lowest candidate again (late peers converge)"


def test_a_member_refusing_a_short_group_passes_its_leader_over():
    mm = matchmaker(FakeTracker(epoch=5, peers=[ME, HIGH]))
    with pytest.raises(RoundFailed):
        Collaboration._check_robust_group(SimpleNamespace(robust=True, config=SimpleNamespace(robust="on"), matchmaker=mm), 5,
                                          group("trainer", "trainer"))
    assert "Qm-bad-leader" in mm._failed[5] and "Qm-bad-leader" not in mm._candidates(5)


def test_a_member_refuses_a_group_whose_leader_changed_its_weight():
    """It would sign that weight in its commitment (swarm.averaging.claims): a leader must not make it claim more."""
    me = SimpleNamespace(peer_id="Qm-1")
    Collaboration._check_my_weight(me, 5, group("trainer", "trainer", "trainer"), 1.0)   # as asked: no error
    with pytest.raises(RoundFailed, match="gives me weight 1.0, I asked for 64.0.*leader"):
        Collaboration._check_my_weight(me, 5, group("trainer", "trainer", "trainer"), 64.0)


@pytest.mark.parametrize("roles, robust", [(("trainer", "trainer"), False), (("trainer", "aux", "trainer"), False),
                                           (("trainer",) * 3, True), (("trainer", "trainer", "aux", "trainer"), True)])
def test_robust_auto_averages_a_group_too_small_to_outvote_with_the_plain_mean(roles, robust):
    from swarm.averaging.group import GroupView
    from swarm.collaboration import GroupPhases

    collab = SimpleNamespace(robust=True, short_groups=0)
    view = GroupView(round_id=bytes(16), peer_ids=tuple(f"Qm-{i}" for i in range(len(roles))), roles=roles,
                     weights=(1.0,) * len(roles), shares=(1.0 / len(roles),) * len(roles), my_index=0, timeout=10.0)
    assert GroupPhases(collab, view, 5, []).robust is robust
    assert collab.short_groups == (0 if robust else 1)
    assert GroupPhases(SimpleNamespace(robust=False, short_groups=0), view, 5, []).robust is False


def test_robust_mode_is_auto_by_default_so_open_runs_are_robust():
    from swarm.config import EngineConfig

    assert EngineConfig().robust == "auto"
    assert Collaboration("run", start=False).robust is True
