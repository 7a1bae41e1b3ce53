"""How a group larger than its bounded size splits for the hierarchical all-reduce (swarm.averaging.hierarchy): the
partition into subgroups and columns, and the deadline of the round that follows it.

The partition is a pure function of the group's roles, LP shares and `max_group_size`, all of which every member
takes from the leader's GroupInfo, so every member computes the same one (invariant 3) without another message.
Reducing members, fastest first (by the LP's shares: trainers and auxiliaries the LP gave a share; all of them when it
gave nobody one), and then the others (client-mode members, and members the LP gave nothing) are dealt round-robin
over S = max(ceil(N / max_group_size), ceil(sqrt(N))) subgroups: sizes differ by at most one, the fast members and
the client-mode members are spread evenly (when fewer than S members can reduce, S shrinks to their number and
subgroups may exceed the bound). A member opens at most (subgroup size - 1) + (S - 1) streams; S = ceil(sqrt(N)) makes that at most
2 ceil(sqrt(N)) - 2 < 2 sqrt(N), whatever N, where ceil(N / max_group_size) subgroups alone would give a member
max_group_size - 1 + N / max_group_size (18 at N = 64 with the default 16, against 14). Beyond N = max_group_size**2
the bound wins and a member opens about max_group_size + N / max_group_size streams (a third level would be needed). Each
subgroup's P fastest reducing members (P: the fewest any subgroup has) reduce parts 0..P-1 in that order, with the
same boundaries everywhere (part p's share: the column's LP shares summed); the reducers of part p form its column,
so column 0 holds each subgroup's fastest member and gets the largest part. Before the LP's shares ordered them
(session 24), members reduced in index order: on the emulated dedloc-albert (18 peers, 5 subgroups at the default
bound of 16) 5 Mbit/s peers reduced parts as large as 20 Mbit/s ones', and a 10M-value fp16 round took 3.3x the
LP bound.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

from swarm.averaging.balancing import MemberLink
from swarm.averaging.deadlines import RoundLimits, round_limits
from swarm.config import EngineConfig

__all__ = ["DEFAULT_MAX_GROUP_SIZE", "Hierarchy", "plan_hierarchy", "column_limits", "hierarchy_seconds", "derived_id"]

# Above this many members a group averages hierarchically (the argument for the value is beside the config field).
DEFAULT_MAX_GROUP_SIZE: int = EngineConfig.model_fields["max_group_size"].default


@dataclass(frozen=True)
class Hierarchy:
    """The partition of one group: `subgroups[s]` lists member indices (ascending), `columns[p][s]` is the member
    of subgroup s that reduces part p, `part_shares[p]` part p's share of the vector."""

    subgroups: tuple[tuple[int, ...], ...]
    columns: tuple[tuple[int, ...], ...]
    part_shares: tuple[float, ...]

    def subgroup_of(self, member: int) -> int:
        return next(s for s, members in enumerate(self.subgroups) if member in members)

    def part_of(self, member: int) -> int | None:
        """The part `member` reduces in its subgroup, or None."""
        return next((p for p, column in enumerate(self.columns) if member in column), None)


def plan_hierarchy(roles: Sequence[str], shares: Sequence[float], max_group_size: int) -> Hierarchy | None:
    """The partition of a group with these roles and LP shares, or None when the group is small enough to stay flat
    (or cannot be split: fewer than two members can reduce). Deterministic: every member computes the same one."""
    if max_group_size < 2:
        raise ValueError(f"max_group_size must be >= 2, got {max_group_size}")
    n = len(roles)
    share = [max(0.0, float(x)) if math.isfinite(x) else 0.0 for x in shares]
    able = [i for i, role in enumerate(roles) if role != "client"]
    # the LP's shares say who should reduce: members it gave nothing (a slow link) reduce nothing here either, unless
    # it gave nobody anything (no estimates yet); the others fastest first (ties: trainers, then index), so that
    # dealing spreads the fast ones over the subgroups and each column holds members of about the same speed
    if any(share[i] > 0 for i in able):
        able = [i for i in able if share[i] > 0]
    reducing = sorted(able, key=lambda i: (-share[i], roles[i] != "trainer", i))
    reduces = set(reducing)   # once: a comprehension's condition is evaluated per member (10,000 in the model)
    others = [i for i in range(n) if i not in reduces]   # client-mode members, and those: they reduce nothing
    count = min(max(math.ceil(n / max_group_size), math.isqrt(n - 1) + 1), len(reducing))   # isqrt(n-1)+1 = ceil(sqrt(n))
    if n <= max_group_size or count < 2:
        return None
    dealt: list[list[int]] = [[] for _ in range(count)]
    for k, i in enumerate(reducing + others):
        dealt[k % count].append(i)
    subgroups = tuple(tuple(sorted(members)) for members in dealt)
    reducers = [[i for i in members if i in reduces] for members in dealt]   # fastest first in each subgroup
    parts = min(len(r) for r in reducers)
    columns = tuple(tuple(reducers[s][p] for s in range(count)) for p in range(parts))
    totals = [sum(share[i] for i in column) for column in columns]
    part_shares = tuple(t / sum(totals) for t in totals) if sum(totals) > 0 else tuple(1.0 / parts for _ in range(parts))
    return Hierarchy(subgroups=subgroups, columns=columns, part_shares=part_shares)


def derived_id(round_id: bytes, kind: bytes, index: int) -> bytes:
    """The round id of one subgroup's or column's round, derived from the group's (no message of one is taken for another's)."""
    return hashlib.sha256(round_id + kind + index.to_bytes(4, "big")).digest()[:16]


def _column_links(plan: Hierarchy, links: Sequence[MemberLink], p: int) -> list[MemberLink]:
    return [dataclasses.replace(links[i], brings_gradients=True, needs_result=True, can_reduce=True) for i in plan.columns[p]]


def column_limits(plan: Hierarchy, links: Sequence[MemberLink], vector_bytes: int, *, chunk_bytes: int,
                  floor_silence: float, floor_averaging: float) -> RoundLimits:
    """The limits of the slowest column's stage: an all-reduce of its part's bytes over its members' links."""
    slowest: RoundLimits | None = None
    for p, share in enumerate(plan.part_shares):
        column = _column_links(plan, links, p)
        limits = round_limits(math.ceil(vector_bytes * share), column, [1.0 / len(column)] * len(column), chunk_bytes=chunk_bytes,
                              floor_silence=floor_silence, floor_averaging=floor_averaging)
        if slowest is None or limits.averaging > slowest.averaging:
            slowest = limits
    assert slowest is not None
    return slowest


def hierarchy_seconds(flat: RoundLimits, plan: Hierarchy | None, links: Sequence[MemberLink], vector_bytes: int, *,
                      chunk_bytes: int, floor_silence: float, floor_averaging: float) -> float:
    """The group's deadline: the flat round's limit (the subgroup stages move no more than the flat round does),
    plus the column stage's when the group is hierarchical."""
    if plan is None:
        return flat.averaging
    column = column_limits(plan, links, vector_bytes, chunk_bytes=chunk_bytes, floor_silence=floor_silence, floor_averaging=floor_averaging)
    return flat.averaging + column.averaging
