"""The partition of a large group for the hierarchical all-reduce (swarm.averaging.subgroups), and its deadline."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from swarm.averaging.balancing import MemberLink
from swarm.averaging.deadlines import round_limits
from swarm.averaging.group import GroupView
from swarm.averaging.matchmaking import Matchmaker, _Gathering, group_problem
from swarm.averaging.progress import ProgressTracker
from swarm.averaging.subgroups import DEFAULT_MAX_GROUP_SIZE, hierarchy_seconds, plan_hierarchy
from swarm.config import EngineConfig
from swarm.errors import ConfigError
from swarm.proto import swarm_pb2
from tests.unit.swarm.test_hostile_input import FakeNode

pytestmark = pytest.mark.timeout(60)


def roles_with(n: int, clients: int = 0, aux: int = 0) -> list[str]:
    """n members: `clients` client-mode and `aux` auxiliary ones interleaved among trainers."""
    roles = ["trainer"] * n
    for k in range(clients):
        roles[(3 * k + 1) % n] = "client"
    for k in range(aux):
        i = next(i for i in range((5 * k + 2) % n, n) if roles[i] == "trainer")
        roles[i] = "aux"
    return roles


def test_a_group_up_to_the_bound_stays_flat():
    for n in (1, 2, 8, 16):
        assert plan_hierarchy(["trainer"] * n, [1.0 / n] * n, 16) is None
    assert plan_hierarchy(["trainer"] * 8, [1 / 8] * 8, DEFAULT_MAX_GROUP_SIZE) is None   # the tests' 8-peer groups


@pytest.mark.parametrize("n, bound, clients, aux", [(7, 3, 0, 0), (7, 3, 2, 1), (17, 16, 3, 0), (64, 16, 10, 4),
                                                    (100, 8, 30, 5), (1000, 16, 200, 10)])
def test_the_partition_covers_everyone_once_within_the_bound_with_clients_spread(n, bound, clients, aux):
    roles = roles_with(n, clients, aux)
    shares = [0.0 if r == "client" else 1.0 for r in roles]
    plan = plan_hierarchy(roles, shares, bound)
    assert plan is not None
    members = sorted(i for s in plan.subgroups for i in s)
    assert members == list(range(n)), "every member in exactly one subgroup"
    sizes = [len(s) for s in plan.subgroups]
    assert max(sizes) <= bound and max(sizes) - min(sizes) <= 1
    client_counts = [sum(roles[i] == "client" for i in s) for s in plan.subgroups]
    assert max(client_counts) - min(client_counts) <= 1, "client-mode members spread evenly"
    # columns: one reducing member per subgroup, each member in at most one column, parts with the same share layout
    for column in plan.columns:
        assert len(column) == len(plan.subgroups)
        assert all(column[s] in plan.subgroups[s] and roles[column[s]] != "client" for s in range(len(column)))
    reducers = [i for c in plan.columns for i in c]
    assert len(reducers) == len(set(reducers))
    assert math.isclose(sum(plan.part_shares), 1.0) and all(share > 0 for share in plan.part_shares)
    # streams a member opens: the other reducers of its subgroup and the rest of its column; at most 2 sqrt(n) while
    # the bound allows subgroups of sqrt(n)
    for i in range(n):
        reduces = plan.part_of(i) is not None
        streams = len(plan.columns) - reduces + (len(plan.subgroups) - 1 if reduces else 0)
        assert streams <= max(sizes) - 1 + len(plan.subgroups) - 1 < n - 1
        if bound >= math.sqrt(n):
            assert streams <= 2 * math.sqrt(n)


def test_the_partition_is_a_function_of_the_group_alone():
    roles = roles_with(40, clients=9, aux=3)
    shares = [0.0 if r == "client" else 1.0 / (40 - 9) for r in roles]
    assert plan_hierarchy(roles, shares, 8) == plan_hierarchy(list(roles), list(shares), 8)
    plan = plan_hierarchy(roles, shares, 8)
    for i in range(40):
        assert i in plan.subgroups[plan.subgroup_of(i)]


def test_too_few_reducers_keep_the_group_flat_or_shrink_the_subgroup_count():
    assert plan_hierarchy(["trainer"] + ["client"] * 9, [1.0] + [0.0] * 9, 3) is None   # one reducer: nothing to split
    plan = plan_hierarchy(["trainer", "trainer"] + ["client"] * 8, [0.5, 0.5] + [0.0] * 8, 3)
    assert plan is not None and len(plan.subgroups) == 2   # every subgroup needs a reducer
    with pytest.raises(ValueError):
        plan_hierarchy(["trainer"] * 4, [0.25] * 4, 1)


def test_part_shares_follow_the_columns_lp_shares_and_zero_shares_fall_back_to_equal_parts():
    roles = ["trainer"] * 6
    plan = plan_hierarchy(roles, [0.3, 0.3, 0.3, 0.05, 0.025, 0.025], 3)
    assert plan is not None and len(plan.columns) == 2
    assert plan.part_shares[0] > plan.part_shares[1]
    assert plan_hierarchy(roles, [0.0] * 6, 3).part_shares == (0.5, 0.5)


def test_the_lp_shares_choose_the_reducers_fast_ones_spread_and_each_column_of_about_one_speed():
    """dedloc-albert's 18: 4 fast, 8 medium, 4 slow trainers (the LP gave the slow ones nothing) and 2 auxiliaries.
    The slow reduce nothing, every subgroup gets a fast member, column 0 holds the fastest and the largest part."""
    roles = ["trainer"] * 16 + ["aux"] * 2
    shares = [0.09] * 4 + [0.05] * 8 + [0.0] * 4 + [0.09] * 2
    total = sum(shares)
    shares = [x / total for x in shares]
    plan = plan_hierarchy(roles, shares, 16)
    assert plan is not None and len(plan.subgroups) == 5
    reducers = {i for column in plan.columns for i in column}
    assert not reducers & set(range(12, 16)), "members the LP gave nothing reduce nothing"
    fast = set(range(4)) | {16, 17}
    assert all(any(i in fast for i in members) for members in plan.subgroups), "every subgroup gets a fast member"
    assert set(plan.columns[0]) <= fast, "column 0: each subgroup's fastest"
    assert list(plan.part_shares) == sorted(plan.part_shares, reverse=True) and plan.part_shares[0] > plan.part_shares[-1]
    sizes = [len(members) for members in plan.subgroups]
    assert max(sizes) - min(sizes) <= 1 and sorted(i for members in plan.subgroups for i in members) == list(range(18))
    # no estimates yet (every share 0): every trainer and auxiliary may reduce, in index order
    even = plan_hierarchy(roles, [0.0] * 18, 16)
    assert even is not None and {i for column in even.columns for i in column} & set(range(12, 16))


def test_the_deadline_of_a_hierarchical_group_adds_its_column_stage():
    n = 20
    links = [MemberLink(upload_bps=1e6, download_bps=1e6) for _ in range(n)]
    shares = [1.0 / n] * n
    flat = round_limits(50_000_000, links, shares, chunk_bytes=2**18, floor_silence=1.0, floor_averaging=1.0)
    plan = plan_hierarchy(["trainer"] * n, shares, 8)
    deadline = hierarchy_seconds(flat, plan, links, 50_000_000, chunk_bytes=2**18, floor_silence=1.0, floor_averaging=1.0)
    assert deadline > flat.averaging
    assert hierarchy_seconds(flat, None, links, 50_000_000, chunk_bytes=2**18, floor_silence=1.0, floor_averaging=1.0) == flat.averaging


def test_the_leader_announces_the_hierarchy_and_its_longer_deadline():
    tracker = ProgressTracker(FakeNode([]), 64, "trainer", lambda: (1.0, 1.0))
    infos = {}
    for bound in (3, 16):
        mm = Matchmaker(SimpleNamespace(peer_id="me"), "run", tracker, schema_hash=b"s", vector_bytes=lambda: 10_000_000,
                        max_group_size=bound)
        g = _Gathering(epoch=1)
        for k in range(7):
            g.requests[f"p{k}"] = swarm_pb2.JoinRequest(peer_id=f"p{k}", role="trainer", weight=1.0, upload_bps=1e6, download_bps=1e6)
        infos[bound] = mm._make_group(g)
    assert infos[3].max_group_size == 3 and infos[16].max_group_size == 0
    assert infos[3].timeout > infos[16].timeout
    view = GroupView.from_info(infos[3], "p2")
    assert view.max_group_size == 3 and group_problem(infos[3]) == ""


def test_a_leaders_bound_of_one_is_unusable():
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=0, timeout=5.0, shares=[0.5, 0.5], max_group_size=1)
    info.members.add(peer_id="a", role="trainer", weight=3.0, upload_bps=1.0, download_bps=1.0)
    info.members.add(peer_id="b", role="trainer", weight=3.0, upload_bps=1.0, download_bps=1.0)
    assert "max group size" in group_problem(info)
    info.max_group_size = 2
    assert group_problem(info) == ""


def test_the_config_bounds_the_group_size():
    assert EngineConfig().max_group_size == DEFAULT_MAX_GROUP_SIZE == 16
    with pytest.raises((ValueError, ConfigError)):
        EngineConfig(max_group_size=1)
