"""The hierarchical all-reduce (swarm.averaging.hierarchy) over real P2P streams, several members in one event loop.

A group of 7 with max_group_size 3 splits into 3 subgroups: every member ends with bitwise-identical results equal
to the flat weighted mean, and opens streams only to the reducers of its subgroup and the rest of its column. A
dead column member costs only itself: its subgroup takes the part from another subgroup's reducer of it, and every
other member commits identical results. A late
peer takes the group's result from the subgroups' reducers.
"""
from __future__ import annotations

import asyncio
import secrets

import pytest
import torch

from benchmarks.scale import count_streams
from swarm.averaging.balancing import MemberLink
from swarm.averaging.group import GroupView
from swarm.averaging.hierarchy import ColumnRound, HierarchicalRound, SubgroupRound
from swarm.averaging.late import fetch_group_result
from swarm.averaging.layout import plan_parts
from swarm.averaging.subgroups import plan_hierarchy
from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2
from tests.integration.test_allreduce import SHAPES, expected_mean, make_layout, random_values, shutdown, start_members

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def hierarchical_round(members, services, roles, weights, shares, values, layout, max_group_size=3,
                             classes=None, timeout=60.0):
    ids = tuple(str(p.peer_id) for p in members)
    round_id = secrets.token_bytes(16)
    plan = plan_hierarchy(roles, shares, max_group_size)
    assert plan is not None
    rounds = []
    for i, p in enumerate(members):
        group = GroupView(round_id=round_id, peer_ids=ids, roles=tuple(roles), weights=tuple(weights), shares=tuple(shares),
                          my_index=i, timeout=timeout, max_group_size=max_group_size)
        rounds.append(HierarchicalRound(p, group, layout, None if roles[i] == "aux" else layout.flatten(values[i]), plan,
                                        service=services[i], chunk_elements=500, sender_timeout=3.0, column_silence=3.0,
                                        column_seconds=15.0, round_classes=(classes or {}).get(i, (SubgroupRound, ColumnRound))))
    results = await asyncio.gather(*(r.run() for r in rounds), return_exceptions=True)
    return plan, rounds, results


@pytest.mark.parametrize("codec, tol, roles", [
    ("none", 1e-5, ["trainer"] * 7),
    ("fp16", 4e-3, ["trainer", "client", "aux", "trainer", "trainer", "client", "trainer"]),   # the aux reduces part 0 of its subgroup
])
def test_seven_members_in_subgroups_of_three_hold_the_flat_weighted_mean_bitwise_identically(codec, tol, roles):
    async def main():
        n = len(roles)
        members, services = await start_members(n)
        opened = [count_streams(p) for p in members]
        try:
            layout = make_layout(codec)
            values = random_values(n, seed=7)
            weights = [float(3 * i + 1) for i in range(n)]
            shares = [0.0 if r == "client" else 1.0 for r in roles]
            total = sum(shares)
            shares = [s / total for s in shares]
            plan, rounds, results = await hierarchical_round(members, services, roles, weights, shares, values, layout)
            assert len(plan.subgroups) == 3 and max(len(s) for s in plan.subgroups) <= 3
            assert not any(isinstance(r, BaseException) for r in results), results
            outs = [layout.unflatten(r) for i, r in enumerate(results) if roles[i] != "aux"]
            assert all(r is None for i, r in enumerate(results) if roles[i] == "aux")
            for other in outs[1:]:
                assert all(torch.equal(a, b) for a, b in zip(outs[0], other)), "members must hold bitwise-identical results"
            expected = expected_mean(values, weights, roles)
            for t in range(len(SHAPES)):
                assert torch.allclose(outs[0][t], expected[t], atol=tol, rtol=tol), f"tensor {t}"
            ids = [str(p.peer_id) for p in members]
            for i in range(n):
                subgroup = plan.subgroups[plan.subgroup_of(i)]
                part = plan.part_of(i)
                allowed = {ids[j] for j in subgroup} | ({ids[j] for j in plan.columns[part]} if part is not None else set())
                allowed.discard(ids[i])
                peers = set(opened[i])
                assert peers <= allowed, f"member {i} opened streams outside its subgroup and column"
                assert len(peers) <= len(subgroup) - 1 + len(plan.subgroups) - 1 < n - 1
            assert any(opened), "the rounds opened streams"
        finally:
            await shutdown(members)
    asyncio.run(main())


class DiesBeforeColumn(ColumnRound):
    """A column member whose subgroup has reduced its part, and that then dies before it sends its column anything
    (the test shuts its peer down)."""

    died: asyncio.Event

    def contribute(self) -> None:
        self.died.set()

    async def run(self):
        await asyncio.Event().wait()   # until the test cancels it


def test_a_dead_column_member_costs_only_itself_its_subgroup_takes_the_part_from_another_and_all_commit_identically():
    """Its subgroup's members lose the part with their reducer and take the column's result of it from another
    subgroup's reducer of it (SubgroupRound._take_elsewhere): everyone but the dead member steps, bitwise identical."""
    async def main():
        n = 6
        roles = ["trainer"] * n
        members, services = await start_members(n)
        alive = list(members)
        try:
            layout = make_layout("fp16")
            values = random_values(n, seed=11)
            weights = [1.0 + i for i in range(n)]
            shares = [1.0 / n] * n
            plan = plan_hierarchy(roles, shares, 3)
            dead = plan.columns[0][1]   # reduces part 0 in subgroup 1
            dead_subgroup = plan.subgroups[1]
            DiesBeforeColumn.died = asyncio.Event()
            ids = tuple(str(p.peer_id) for p in members)
            round_id = secrets.token_bytes(16)
            tasks = {}
            for i, p in enumerate(members):
                group = GroupView(round_id=round_id, peer_ids=ids, roles=tuple(roles), weights=tuple(weights), shares=tuple(shares),
                                  my_index=i, timeout=40.0, max_group_size=3)
                r = HierarchicalRound(p, group, layout, layout.flatten(values[i]), plan, service=services[i], chunk_elements=500,
                                      sender_timeout=3.0, column_silence=3.0, column_seconds=10.0,
                                      round_classes=(SubgroupRound, DiesBeforeColumn if i == dead else ColumnRound))
                tasks[i] = asyncio.create_task(r.run())
            await asyncio.wait_for(DiesBeforeColumn.died.wait(), 30)
            tasks[dead].cancel()
            await asyncio.gather(tasks.pop(dead), return_exceptions=True)
            services[dead].stop()
            alive.remove(members[dead])
            await members[dead].shutdown()
            results = dict(zip(tasks, await asyncio.gather(*tasks.values(), return_exceptions=True)))
            for i, outcome in results.items():
                assert not isinstance(outcome, BaseException), (i, outcome)
            survivors = [layout.unflatten(r) for i, r in results.items()]
            assert len(survivors) == n - 1 and len(dead_subgroup) > 1   # the dead reducer's subgroup kept a member
            for other in survivors[1:]:
                assert all(torch.equal(a, b) for a, b in zip(survivors[0], other)), "those that step hold identical results"
            # part 0 never got the dead member's subgroup: it is the weighted mean of the other subgroups' members
            kept = [i for i in range(n) if i not in dead_subgroup]
            without = layout.flatten(expected_mean([values[i] for i in kept], [weights[i] for i in kept], roles))
            got = layout.flatten(survivors[0])
            part0 = plan_parts(layout, plan.part_shares, 500)[0]
            assert part0
            for chunk in part0:
                window = slice(chunk.start, chunk.start + chunk.length)
                assert torch.allclose(got[chunk.bucket][window], without[chunk.bucket][window], atol=4e-3), chunk
        finally:
            for s in services:
                s.stop()
            await shutdown(alive)
    asyncio.run(main())


def test_a_late_peer_takes_the_hierarchical_groups_result_bitwise():
    """A peer late for the group fetches each part from one subgroup's reducer of it (swarm.averaging.late)."""
    async def main():
        n = 7
        roles = ["trainer"] * n
        members, services = await start_members(n + 1)
        try:
            layout = make_layout("fp16")
            values = random_values(n, seed=3)
            weights = [1.0 + i for i in range(n)]
            shares = [1.0 / n] * n
            plan, rounds, results = await hierarchical_round(members[:n], services[:n], roles, weights, shares, values, layout)
            assert not any(isinstance(r, BaseException) for r in results), results
            info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, round_id=rounds[0].group.round_id, shares=shares,
                                       timeout=30.0, max_group_size=3)
            for p, w in zip(members[:n], weights):
                info.members.add(peer_id=str(p.peer_id), role="trainer", weight=w, upload_bps=1e7, download_bps=1e7)
            links = [MemberLink(upload_bps=1e7, download_bps=1e7) for _ in range(n)]
            late = await fetch_group_result(members[n], info, layout, links, chunk_elements=500, floor_silence=3.0)
            assert all(torch.equal(a, b) for a, b in zip(late, results[0])), "the late peer holds the group's result bitwise"
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_a_subgroup_that_brings_no_weight_still_receives_the_others_average():
    async def main():
        n = 6
        roles = ["trainer"] * n
        members, services = await start_members(n)
        try:
            layout = make_layout("fp16")
            values = random_values(n, seed=5)
            shares = [1.0 / n] * n
            plan = plan_hierarchy(roles, shares, 3)
            idle = plan.subgroups[2]   # its members bring weight 0 (samples of nothing this round)
            weights = [0.0 if i in idle else 1.0 + i for i in range(n)]
            _, rounds, results = await hierarchical_round(members, services, roles, weights, shares, values, layout)
            assert not any(isinstance(r, BaseException) for r in results), results
            outs = [layout.unflatten(r) for r in results]
            for other in outs[1:]:
                assert all(torch.equal(a, b) for a, b in zip(outs[0], other))
            expected = expected_mean(values, weights, roles)
            for t in range(len(SHAPES)):
                assert torch.allclose(outs[0][t], expected[t], atol=4e-3), f"tensor {t}"
        finally:
            await shutdown(members)
    asyncio.run(main())


def test_robust_mode_checks_the_columns_a_lying_column_reducer_is_caught_by_its_audit_and_honest_ones_are_not():
    """With a signer, each column commits to its subgroups' partial means and signs its sub-parts: a column member
    that adds noise to its sub-part (consistently, so every subgroup steps with it) is found by another column
    member's audit from the committed partials; the honest column reducers' audits find nothing."""
    from peers.attack.byzantine import byzantine_round_class
    from swarm.averaging.auditor import Auditor
    from swarm.averaging.audits import PartAudit, audit_part
    from swarm.averaging.bans import BanList
    from swarm.averaging.robust import CenteredClipReduction
    from tests.integration.test_result_checks import start_signing_members
    from tests.integration.test_robust_rounds import correlated_values

    async def main():
        n = 7
        roles = ["trainer"] * n
        keys, members, services = await start_signing_members(n)
        try:
            layout = make_layout("fp16")
            values = correlated_values(n, seed=13)
            weights = [1.0 + i for i in range(n)]
            shares = [1.0 / n] * n
            plan = plan_hierarchy(roles, shares, 3)
            assert plan is not None and all(len(column) == 3 for column in plan.columns)
            liar = plan.columns[0][1]   # reduces part 0 in subgroup 1, and sub-part 1 of part 0's column
            auditors = []
            for m in members:
                a = Auditor(m, BanList(), audits_per_part=0.0)   # no audits drawn: the test asks for the ones it checks
                await a.start()
                auditors.append(a)
            ids = tuple(str(p.peer_id) for p in members)
            round_id = secrets.token_bytes(16)
            rounds = []
            for i, p in enumerate(members):
                group = GroupView(round_id=round_id, peer_ids=ids, roles=tuple(roles), weights=tuple(weights), shares=tuple(shares),
                                  my_index=i, timeout=60.0, max_group_size=3)
                column_class = byzantine_round_class("lying_reducer", ColumnRound) if i == liar else ColumnRound
                rounds.append(HierarchicalRound(p, group, layout, layout.flatten(values[i]), plan, service=services[i], chunk_elements=500,
                                                sender_timeout=3.0, column_silence=3.0, column_seconds=15.0, reduction=CenteredClipReduction,
                                                round_classes=(SubgroupRound, column_class), signer=keys[i],
                                                keep_contribution=auditors[i].store.put_contribution))
            results = await asyncio.gather(*(r.run() for r in rounds), return_exceptions=True)
            assert not any(isinstance(r, BaseException) for r in results), results
            for a, r in zip(auditors, rounds):
                if r.column is not None:   # a member that reduces no part has no column
                    a.after_round(r.column, stepped=True)
            column = [rounds[i].column for i in plan.columns[0]]
            assert all(c is not None and c.results is not None and c.signer is not None for c in column)
            for auditor in (0, 2):   # the liar's column peers audit every other sub-part of part 0
                c = column[auditor]
                known = {x.digest(): x for x in [*c.commitments.values(), *(x for x, _ in c.contributions.values())]}
                for j in range(3):
                    if j == auditor:
                        continue
                    layout_j = [(c.layout.codecs[k.bucket].name, k.length) for k in c.parts[j]]
                    case = PartAudit(c.results.held[j], layout_j, c.part_bytes(j),
                                     {i: [c.group.peer_ids[i]] for i in range(3) if i != auditor}, commitments=known)
                    finding = await audit_part(members[plan.columns[0][auditor]], auditors[plan.columns[0][auditor]].store, case)
                    if j == 1:
                        assert finding.verdict == "lied", finding
                    else:
                        assert finding.verdict == "honest" and finding.distance < 0.01, finding
        finally:
            for s in services:
                s.stop()
            await shutdown(members)
    asyncio.run(main())
