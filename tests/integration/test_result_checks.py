"""Rounds that check results, over real P2P streams: reducers sign what they send, members swap the statements.

An honest group's members all hold the same statement per part and lose nothing. An equivocating reducer (it
sends odd members a noisy part and signs what each got, peers.attack.byzantine) is proven by every honest
member in its first round, each bans it on the proof, and the members that got the minority's bytes do not step.
Each member's p2p identity is its signing key (swarm.net.identity), as in a Node.
"""
from __future__ import annotations

import asyncio
import functools

import pytest
import torch
from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2P
from hivemind.utils.crypto import RSAPrivateKey

from peers.attack.byzantine import byzantine_round_class
from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.bans import BanList
from swarm.averaging.result_exchange import RESULTS_HANDLER, unpack_report
from swarm.averaging.group import GroupView
from swarm.averaging.robust import CenteredClipReduction, StrikeBook
from swarm.averaging.service import AggregateService
from swarm.errors import RoundFailed
from swarm.net.identity import identity_file
from tests.integration.test_allreduce import make_layout, run_round, shutdown
from tests.integration.test_robust_rounds import correlated_values

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROLES, SHARES = ["trainer"] * 4, [0.3, 0.2, 0.3, 0.2]


async def start_signing_members(n: int):
    """n P2P members whose identities are RSA keys this test holds, each with an aggregate service."""
    keys = [RSAPrivateKey() for _ in range(n)]
    members: list[P2P] = []
    try:
        for key in keys:
            with identity_file(key) as path:
                initial = await members[0].get_visible_maddrs() if members else []
                members.append(await P2P.create(initial_peers=initial, identity_path=path, check_if_identity_free=False))
        services = []
        for p in members:
            s = AggregateService(p)
            await s.start()
            services.append(s)
    except BaseException:
        await shutdown(members)
        raise
    return keys, members, services


def signing(base: type, key: RSAPrivateKey) -> type:
    class Signing(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, reduction=CenteredClipReduction, signer=key, **kwargs)

    return Signing


async def honest_signed_round(keys, members, services, seed: int):
    """One round of honest members that sign their parts (fp16); every member must finish it."""
    classes = [signing(AllReduceRound, k) for k in keys]
    rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, correlated_values(4, seed=seed), make_layout("fp16"),
                                      round_class=classes)
    assert not any(isinstance(r, BaseException) for r in results), results
    return rounds, results


def test_an_honest_groups_members_agree_on_every_signed_part_and_lose_nothing():
    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            rounds, results = await honest_signed_round(keys, members, services, seed=3)
            for r in rounds:
                assert sorted(r.results.held) == [0, 1, 2, 3]      # every part came with its reducer's statement
                assert sorted(r.results.reports) == sorted(str(m.peer_id) for m in members if m is not r.p2p)
                assert r.stats.proofs == []
            for other in results[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[0], other))
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_stranger_gets_no_statements_and_leaves_none():
    """The statement swap answers the round's members only: a peer outside the group (in an invite-only run, one
    without an invite: it cannot be a member) that replays a member's report gets an empty answer at once, and
    nothing is recorded in its name."""
    async def main():
        keys, members, services = await start_signing_members(4)
        stranger = await P2P.create(initial_peers=await members[0].get_visible_maddrs())
        try:
            rounds, _ = await honest_signed_round(keys, members, services, seed=4)
            replayed = BytesValue(value=rounds[1].results.report())
            start = asyncio.get_running_loop().time()
            reply = await asyncio.wait_for(stranger.call_protobuf_handler(members[0].peer_id, RESULTS_HANDLER, replayed, BytesValue), 10)
            assert reply.value == b"", "a stranger must not get the member's report"
            assert asyncio.get_running_loop().time() - start < 5.0
            assert str(stranger.peer_id) not in rounds[0].results.reports
            # a member asking the same gets them
            reply = await asyncio.wait_for(members[1].call_protobuf_handler(members[0].peer_id, RESULTS_HANDLER, replayed, BytesValue), 10)
            assert unpack_report(reply.value) is not None and unpack_report(reply.value).digests
        finally:
            await shutdown([*members, stranger])
    asyncio.run(main())


def test_an_equivocating_reducer_is_proven_and_banned_by_every_honest_member_in_its_first_round():
    async def main():
        keys, members, services = await start_signing_members(4)
        try:
            layout = make_layout("fp16")
            liar = str(members[0].peer_id)
            classes = [signing(byzantine_round_class("equivocating_reducer", AllReduceRound), keys[0])] + [
                signing(AllReduceRound, k) for k in keys[1:]]
            rounds, results = await run_round(members, services, ROLES, [1.0] * 4, SHARES, correlated_values(4, seed=5), layout,
                                              round_class=classes)
            # members 1 and 3 (odd) got the noisy part, member 2 and the liar itself the honest one: a tie, broken by the
            # digest; whoever holds the bytes not chosen does not step, the others hold identical results
            stepped = [i for i in (1, 2, 3) if not isinstance(results[i], BaseException)]
            failed = [i for i in (1, 2, 3) if isinstance(results[i], BaseException)]
            assert stepped and failed, results
            for i in failed:
                assert isinstance(results[i], RoundFailed) and "equivocated" in str(results[i])
            for i in stepped[1:]:
                assert all(torch.equal(a, b) for a, b in zip(results[stepped[0]], results[i]))
            for i in (1, 2, 3):
                bans = BanList()
                assert bans.accuse(rounds[i].stats.proofs) == [liar]
                assert bans.banned == {liar}
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_huge_sender_is_banned_by_every_honest_reducer_within_three_rounds_and_nobody_honest_is():
    """Each honest reducer bans, on its own observation, a sender whose contributions were absurd in two rounds
    (swarm.averaging.robust.StrikeBook.banned), as Collaboration does after each round; a sign flip is struck
    and excluded, never banned."""
    from tests.integration.test_robust_rounds import _class_for

    async def main():
        keys, members, services = await start_signing_members(5)
        try:
            layout = make_layout("none")   # 1e30 reaches the reducers
            ids = [str(m.peer_id) for m in members]
            huge, flip = ids[1], ids[4]
            books, bans = [StrikeBook() for _ in members], [BanList() for _ in members]
            banned_in = {}
            for round_no in range(1, 4):
                classes = []
                for i, key in enumerate(keys):
                    base = _class_for("huge" if i == 1 else "sign_flip") if i in (1, 4) else AllReduceRound
                    classes.append(functools.partial(signing(base, key), excluded=books[i].excluded() | bans[i].banned))
                rounds, results = await run_round(members, services, ["trainer"] * 5, [1.0] * 5, [0.3, 0.0, 0.4, 0.3, 0.0],
                                             correlated_values(5, seed=round_no), layout, round_class=_Classes(classes))
                for i in (0, 2, 3):
                    assert not isinstance(results[i], BaseException), results[i]
                    assert torch.isfinite(torch.cat([t.reshape(-1) for t in results[i]])).all()
                for i, (r, book) in enumerate(zip(rounds, books)):
                    book.record(r.stats.clipped_share)
                    for peer in bans[i].observe(book.banned()):
                        banned_in.setdefault(i, {})[peer] = round_no
            for i in (0, 2, 3):   # the honest reducers
                assert bans[i].banned == {huge}, (i, bans[i].banned)
                assert banned_in[i][huge] <= 3
                assert flip in books[i].excluded()
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_round_that_checks_results_survives_a_reducer_killed_mid_all_gather():
    from tests.integration.test_reducer_failover import DiesMidAllGather

    async def main():
        keys, members, services = await start_signing_members(3)
        try:
            layout = make_layout("fp16")
            classes = [signing(AllReduceRound, keys[0]), signing(DiesMidAllGather, keys[1]), signing(AllReduceRound, keys[2])]
            ids = tuple(str(p.peer_id) for p in members)
            round_id, values = bytes(range(16)), correlated_values(3, seed=11)
            rounds = []
            for i, (p, cls) in enumerate(zip(members, classes)):
                group = GroupView(round_id=round_id, peer_ids=ids, roles=("trainer",) * 3, weights=(1.0,) * 3,
                                  shares=(1 / 3,) * 3, my_index=i, timeout=40.0)
                r = cls(p, group, layout, layout.flatten(values[i]), chunk_elements=500, sender_timeout=3.0)
                services[i].open(r)
                rounds.append(r)
            tasks = [asyncio.create_task(r.run()) for r in rounds]
            await asyncio.wait_for(rounds[1].died.wait(), 30)
            await asyncio.wait_for(asyncio.gather(*(rounds[1]._settled[j].wait() for j in (0, 2))), 30)
            tasks[1].cancel()
            await asyncio.gather(tasks[1], return_exceptions=True)
            services[1].stop()
            await members.pop(1).shutdown()
            results = await asyncio.gather(tasks[0], tasks[2], return_exceptions=True)
            assert not any(isinstance(r, BaseException) for r in results), results
            assert all(torch.equal(a, b) for a, b in zip(*results))
            for r in (rounds[0], rounds[2]):
                assert r.stats.recovered_parts == [1] and r.stats.proofs == []
                assert sorted(r.results.held) == [0, 2]   # the backup's part carries no statement
        finally:
            await shutdown(members)   # the killed member was taken out of the list once shut down
    asyncio.run(main())


class _Classes(list):
    """run_round indexes round_class per member unless it is a type: partials are callables, not types."""
