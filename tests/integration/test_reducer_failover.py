"""A reducer lost mid-round costs its part's delay, not the round (swarm.averaging.failover).

Real P2P members on loopback. A reducer is killed (its P2P shut down) during its all-gather or before its
reduce; the others still commit, with bitwise-identical results:
- killed mid-all-gather with no member holding its whole part: the backup averages the part again from the
  survivors' contributions (the dead reducer's left out), and everyone takes the backup's bytes;
- killed mid-all-gather after one member got the whole part: the backup relays that member's copy of the
  reducer's bytes (the dead reducer's contribution stays in);
- dead before its reduce: the backup averages the part from the survivors.
"""
from __future__ import annotations

import asyncio
import contextlib
import secrets

import pytest
import torch

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.failover import backups
from swarm.averaging.group import GroupView
from tests.integration.test_allreduce import expected_mean, make_layout, random_values, shutdown, start_members

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


class DiesMidAllGather(AllReduceRound):
    """A reducer that sends `stop_after` averaged chunks of its part to each member (all of them to member `whole_to`,
    if set), then sends nothing more and sets `died`: the test then kills it."""

    stop_after = 2
    whole_to: int | None = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.died = asyncio.Event()
        self._done_streams: set[str] = set()

    async def serve(self, first, requests, remote):
        me = self.group.my_index
        if first.fetch or first.part != me:   # a member's retry after the kill: the reducer is gone
            await self._retired.wait()
            return
        whole = self.whole_to is not None and str(remote) == self.group.peer_ids[self.whole_to]
        limit = len(self.parts[me]) if whole else self.stop_after
        sent = 0
        async with contextlib.aclosing(super().serve(first, requests, remote)) as replies:
            async for reply in replies:
                if sent == limit:
                    break
                yield reply
                sent += 1
        self._done_streams.add(str(remote))
        if len(self._done_streams) == sum(1 for i in range(len(self.group.peer_ids)) if i != me and self.group.needs(i)):
            self.died.set()
        await self._retired.wait()   # silent until killed


async def failover_round(n: int, dead: int, *, mid_all_gather: bool, whole_to: int | None = None, seed: int = 0):
    """Run a round of n trainers in which member `dead` dies; returns (survivors' rounds, their results, values, layout)."""
    members, services = await start_members(n)
    try:
        layout = make_layout("fp16")
        values = random_values(n, seed=seed)
        ids = tuple(str(p.peer_id) for p in members)
        round_id = secrets.token_bytes(16)
        weights = tuple(float(i + 1) for i in range(n))
        shares = tuple([1.0 / n] * n)
        if not mid_all_gather:   # dead before the round: it never reduces nor sends anything
            await members[dead].shutdown()
        rounds: dict[int, AllReduceRound] = {}
        for i, p in enumerate(members):
            if i == dead and not mid_all_gather:
                continue
            cls = DiesMidAllGather if i == dead else AllReduceRound
            group = GroupView(round_id=round_id, peer_ids=ids, roles=("trainer",) * n, weights=weights, shares=shares, my_index=i, timeout=40.0)
            r = cls(p, group, layout, layout.flatten(values[i]), chunk_elements=500, sender_timeout=3.0)
            if i == dead:
                r.whole_to = whole_to
            services[i].open(r)
            rounds[i] = r
        tasks = {i: asyncio.create_task(r.run()) for i, r in rounds.items()}
        if mid_all_gather:
            await asyncio.wait_for(rounds[dead].died.wait(), 30)
            # its contributions to the other parts are in (their averages came back): only its own part is at stake
            await asyncio.wait_for(asyncio.gather(*(rounds[dead]._settled[j].wait() for j in range(n) if j != dead)), 30)
            tasks[dead].cancel()
            await asyncio.gather(tasks.pop(dead), return_exceptions=True)
            await members[dead].shutdown()
            services[dead].stop()
            rounds.pop(dead)
        results = dict(zip(tasks, await asyncio.gather(*tasks.values(), return_exceptions=True)))
        for i in rounds:
            services[i].close(round_id)
        return rounds, results, values, layout, weights
    finally:
        for s in services:
            s.stop()
        await shutdown([p for i, p in enumerate(members) if mid_all_gather or i != dead])


def part_range(round_: AllReduceRound, j: int):
    return [(c.bucket, c.start, c.length) for c in round_.parts[j]]


def check_survivors_agree(rounds, results, values, layout, weights, dead, *, in_own_part: bool, in_others: bool):
    """Every survivor holds bitwise the same result; each part is the weighted mean with or without the dead member's
    contribution (`in_own_part`: in its own part, relayed; `in_others`: in the other parts, sent before it died)."""
    assert not any(isinstance(r, BaseException) for r in results.values()), results
    outs = list(results.values())
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other)), "survivors must hold bitwise-identical results"
    n = len(values)
    roles = ["trainer"] * n
    everyone = [t.reshape(-1) for t in layout.flatten(expected_mean(values, weights, roles))]
    survivors = [i for i in range(n) if i != dead]
    without = [t.reshape(-1) for t in layout.flatten(expected_mean([values[i] for i in survivors], [weights[i] for i in survivors], roles[:-1]))]
    some = next(iter(rounds.values()))
    dead_chunks = set(part_range(some, dead))
    for j in range(n):
        for bucket, start, length in part_range(some, j):
            want = everyone if (in_own_part if j == dead else in_others) else without
            got = outs[0][bucket][start : start + length]
            assert torch.allclose(got, want[bucket][start : start + length], atol=2e-3), f"part {j} chunk at {start}"
    assert dead_chunks, "the dead reducer had a part"


@pytest.mark.parametrize("n", [3, 5])
def test_a_reducer_killed_mid_all_gather_is_replaced_by_a_backup_and_the_others_commit(n):
    async def main():
        dead = 1
        rounds, results, values, layout, weights = await failover_round(n, dead, mid_all_gather=True, seed=n)
        check_survivors_agree(rounds, results, values, layout, weights, dead, in_own_part=False, in_others=True)
        for r in rounds.values():
            assert r.stats.recovered_parts == [dead] and r.stats.missing_parts == []
        backup = backups(("trainer",) * n, dead)[0]
        assert len({tuple(r.stats.part_hashes.items()) for r in rounds.values()}) == 1, "every survivor holds the same part bytes"
        assert backup == 0
    asyncio.run(main())


@pytest.mark.parametrize("n", [3, 5])
def test_a_dead_reducers_part_held_whole_by_one_member_is_relayed_to_the_others(n):
    async def main():
        dead, whole_to = 1, n - 1
        rounds, results, values, layout, weights = await failover_round(n, dead, mid_all_gather=True, whole_to=whole_to, seed=10 + n)
        check_survivors_agree(rounds, results, values, layout, weights, dead, in_own_part=True, in_others=True)
        assert rounds[whole_to].stats.recovered_parts == []   # it got the part from the reducer itself
        for i, r in rounds.items():
            if i != whole_to:
                assert r.stats.recovered_parts == [dead]
        assert len({tuple(r.stats.part_hashes.items()) for r in rounds.values()}) == 1
    asyncio.run(main())


@pytest.mark.parametrize("n", [3, 5])
def test_a_reducer_dead_before_its_reduce_is_replaced_by_a_backup_and_the_others_commit(n):
    async def main():
        dead = 1
        rounds, results, values, layout, weights = await failover_round(n, dead, mid_all_gather=False, seed=20 + n)
        check_survivors_agree(rounds, results, values, layout, weights, dead, in_own_part=False, in_others=False)
        for r in rounds.values():
            assert r.stats.recovered_parts == [dead]
    asyncio.run(main())

