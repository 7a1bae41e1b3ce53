"""A peer late for the formed group takes the group's result from its reducers (swarm.averaging.late).

Two members average; a third peer, not in the group, fetches every averaged part from its reducer while the round
runs and holds bitwise what the members hold. A part that was never averaged, or whose reducer's round failed,
fails the late peer's fetch with a RoundFailed that names it.
"""
from __future__ import annotations

import asyncio
import secrets

import pytest
import torch
from hivemind.p2p import P2P

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.group import GroupView
from swarm.averaging.late import fetch_group_result
from swarm.collaboration import member_links
from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2
from tests.integration.test_allreduce import DeadReducer, make_layout, random_values, shutdown, start_members

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def group_info(members, shares, timeout) -> swarm_pb2.GroupInfo:
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.TOO_LATE, round_id=secrets.token_bytes(16), shares=shares, timeout=timeout)
    for p in members:
        info.members.add(peer_id=str(p.peer_id), role="trainer", weight=1.0, upload_bps=1e7, download_bps=1e7)
    return info


async def round_with_latecomer(classes, timeout):
    members, services = await start_members(len(classes))
    # a real late peer knows every member's address from the DHT; a bare P2P learns only its initial peers'
    late = await P2P.create(initial_peers=[m for p in members for m in await p.get_visible_maddrs()])
    try:
        layout = make_layout("fp16")
        info = group_info(members, [1 / len(members)] * len(members), timeout)
        values = random_values(len(members), seed=8)
        rounds = []
        for i, (p, cls) in enumerate(zip(members, classes)):
            group = GroupView.from_info(info, str(p.peer_id))
            rounds.append(cls(p, group, layout, layout.flatten(values[i]), chunk_elements=500, sender_timeout=3.0))
            services[i].open(rounds[-1])
        fetched = asyncio.create_task(fetch_group_result(late, info, layout, member_links(info), chunk_elements=500, floor_silence=3.0))
        results = await asyncio.gather(*(r.run() for r in rounds), return_exceptions=True)
        try:
            got = await fetched
        except RoundFailed as e:
            got = e
        for s in services:
            s.close(info.round_id)
        return results, got
    finally:
        await late.shutdown()
        await shutdown(members)


def assert_late_peer_holds_the_result(results, got) -> None:
    assert not any(isinstance(r, BaseException) for r in results), results
    assert not isinstance(got, BaseException), got
    for bucket, mine in zip(results[0], got):
        assert torch.equal(bucket, mine)


def test_a_late_peer_holds_bitwise_the_members_result():
    async def main():
        assert_late_peer_holds_the_result(*await round_with_latecomer([AllReduceRound, AllReduceRound], timeout=20.0))
    asyncio.run(main())


def test_a_part_never_averaged_fails_the_late_peer_naming_it():
    async def main():
        results, got = await round_with_latecomer([AllReduceRound, DeadReducer, AllReduceRound], timeout=4.0)
        assert isinstance(got, RoundFailed) and "part 1" in str(got), got
    asyncio.run(main())


class FailsAfterAveraging(AllReduceRound):
    """A reducer that averages and sends its part, then fails its round (past its deadline, say)."""

    async def _drain_outputs(self):
        raise RoundFailed("failed after averaging (test)")


def test_a_late_peer_does_not_take_a_part_from_a_reducer_whose_round_failed():
    """A reducer serves late peers only the result of a round it stepped with: one that failed there may be a round
    that nobody steps with (chaos: a frozen reducer resumed past the deadline and served a late peer a result that
    no member held). The member that stepped holds both parts: the late peer takes them from it, and holds what it
    stepped with."""
    async def main():
        results, got = await round_with_latecomer([AllReduceRound, FailsAfterAveraging], timeout=20.0)
        assert isinstance(results[1], RoundFailed), results[1]
        assert_late_peer_holds_the_result([results[0]], got)
    asyncio.run(main())


class RefusesLatecomers(AllReduceRound):
    """A reducer that answers every late peer as if its round had failed (dead by then, or at its limit)."""

    async def _serve_latecomer(self, first, requests):
        yield swarm_pb2.PartChunk(error="round failed here")


def test_a_late_peer_takes_a_part_its_reducer_will_not_serve_from_another_member():
    """Issue 14: the late path asked the part's reducer only; a member that stepped holds every part as it took it."""
    async def main():
        results, got = await round_with_latecomer([AllReduceRound, RefusesLatecomers, AllReduceRound], timeout=20.0)
        assert_late_peer_holds_the_result(results, got)
    asyncio.run(main())


def test_a_reducer_serves_late_peers_by_bytes_not_by_count_and_refuses_past_its_budget(monkeypatch):
    """At 64 toy peers a small group with many late peers refused them by the hundred at 16 fetches a member, while
    serving all of them cost kilobytes: 40 fetches of a small part are served; with a budget of 2 parts, the third
    is refused, naming the limit."""
    import swarm.averaging.allreduce as allreduce_module
    from swarm.averaging.late import fetch_part
    from swarm.averaging.layout import plan_parts

    async def main():
        members, services = await start_members(2)
        late = await P2P.create(initial_peers=[m for p in members for m in await p.get_visible_maddrs()])
        try:
            layout = make_layout("fp16")
            info = group_info(members, [0.5, 0.5], 20.0)
            values = random_values(2, seed=9)
            rounds = []
            for i, p in enumerate(members):
                rounds.append(AllReduceRound(p, GroupView.from_info(info, str(p.peer_id)), layout, layout.flatten(values[i]),
                                             chunk_elements=500, sender_timeout=3.0))
                services[i].open(rounds[-1])
            results = await asyncio.gather(*(r.run() for r in rounds))
            chunks = plan_parts(layout, [0.5, 0.5], 500)[0]
            server = str(members[0].peer_id)
            for _ in range(40):
                got = await fetch_part(late, layout, chunks, server, 0, info.round_id, 3.0)
                assert torch.equal(torch.cat([v for _, v in got]), torch.cat([results[0][c.bucket][c.start:c.start + c.length] for c in chunks]))
            assert rounds[0]._latecomer_budget() == allreduce_module.LATECOMER_FLOOR_BYTES   # a small vector: the floor
            rounds[0]._latecomer_bytes = 0
            monkeypatch.setattr(rounds[0], "_latecomer_budget", lambda: 2 * rounds[0]._part_wire_bytes(0))
            for _ in range(2):
                await fetch_part(late, layout, chunks, server, 0, info.round_id, 3.0)
            with pytest.raises(RoundFailed, match="at their limit"):
                await fetch_part(late, layout, chunks, server, 0, info.round_id, 3.0)
        finally:
            for s in services:
                s.close(info.round_id)
            await late.shutdown()
            await shutdown(members)
    asyncio.run(main())


def test_no_late_peer_asks_itself():
    from swarm.averaging.late import MAX_SOURCES, part_sources
    members = ["a", "b", "c", "d", "e"]
    assert part_sources(members, 1, "x")[0] == "b" and len(part_sources(members, 1, "x")) == MAX_SOURCES
    assert "b" not in part_sources(members, 1, "b") and part_sources(members, 1, "b")
    assert part_sources(["a", "b"], 1, "b") == ["a"] and part_sources(["b"], 0, "b") == []


def test_a_hierarchical_part_is_asked_of_its_column_from_a_given_subgroup_on_never_mine_nor_myself():
    from swarm.averaging.late import MAX_SOURCES, column_sources
    from swarm.averaging.subgroups import derived_id, plan_hierarchy
    ids = [f"p{i}" for i in range(16)]
    plan = plan_hierarchy(["trainer"] * 16, [1 / 16] * 16, 4)
    assert plan is not None and len(plan.subgroups) == 4
    rid = b"r" * 16
    got = column_sources(plan, ids, 1, rid, "late", start=2)
    assert len(got) == MAX_SOURCES
    for (server, label, round_id), t in zip(got, [2, 3, 0]):   # subgroup 2 first, then the next ones, wrapping
        member = plan.columns[1][t]
        assert server == ids[member] and label == plan.subgroups[t].index(member) and round_id == derived_id(rid, b"subgroup", t)
    me = ids[plan.columns[1][3]]
    mine = column_sources(plan, ids, 1, rid, me, start=3, skip=0, limit=10)
    assert [s for s, _, _ in mine] == [ids[plan.columns[1][t]] for t in (1, 2)]   # neither myself (3) nor the skipped (0)


def test_a_late_collaboration_steps_with_the_group_result_through_its_codec():
    """Collaboration's path for LateForGroup: the one-phase codec averages through the fetched parts."""
    from types import SimpleNamespace

    from swarm.collaboration import Collaboration
    from swarm.compression.policy import FixedRoundCodec
    from swarm.config import EngineConfig
    from swarm.errors import LateForGroup

    async def main():
        members, services = await start_members(2)
        # a real late peer knows every member's address from the DHT; a bare P2P learns only its initial peers'
        late = await P2P.create(initial_peers=[m for p in members for m in await p.get_visible_maddrs()])
        try:
            layout = make_layout("fp16")
            info = group_info(members, [0.5, 0.5], 20.0)
            values = random_values(2, seed=9)
            rounds = [AllReduceRound(p, GroupView.from_info(info, str(p.peer_id)), layout, layout.flatten(values[i]),
                                     chunk_elements=1024, sender_timeout=3.0) for i, p in enumerate(members)]
            for s, r in zip(services, rounds):
                s.open(r)
            collab = Collaboration("run", start=False, config=EngineConfig(chunk_elements=1024))   # the run's chunking
            collab.node = SimpleNamespace(p2p=late)
            codec = FixedRoundCodec.from_layout(layout)
            taking = asyncio.create_task(collab._take_group_result(3, LateForGroup("late", info), codec))
            results = await asyncio.gather(*(r.run() for r in rounds))
            averaged, report = await taking
            for t, mine in zip(layout.unflatten(results[0]), averaged.tensors):
                assert torch.equal(t, mine)
            assert report.group_size == 2 and report.round_id == info.round_id.hex() and collab.rounds == [report]
            for s in services:
                s.close(info.round_id)
        finally:
            await late.shutdown()
            await shutdown(members)
    asyncio.run(main())


class LingersAfterAveraging(AllReduceRound):
    """A reducer whose round goes on well after its part is averaged (its other parts still arriving over a slow
    link, at a real model's size): it serves late peers only once its round is over."""

    async def _drain_outputs(self):
        await asyncio.sleep(10.0)   # past the late peer's silence limit (reply_timeout of 3 s: 8.2 s)
        await super()._drain_outputs()


def test_a_late_peer_waits_out_a_round_longer_than_its_silence_limit():
    """The reducer heartbeats the late peer until its round is over: in the emulated hybrid run at 10M values every
    late peer gave up on "no reply for 32.2s" before the first chunk."""
    async def main():
        assert_late_peer_holds_the_result(*await round_with_latecomer([AllReduceRound, LingersAfterAveraging], timeout=40.0))
    asyncio.run(main())
