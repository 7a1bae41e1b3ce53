"""A formed group as one member sees it: members, roles, LP shares and round id, identical on every member (built
from the leader's GroupInfo)."""
from __future__ import annotations

from dataclasses import dataclass

from swarm.errors import RoundFailed
from swarm.proto import swarm_pb2


@dataclass(frozen=True)
class GroupView:
    """What this member needs from the leader's GroupInfo."""

    round_id: bytes
    peer_ids: tuple[str, ...]
    roles: tuple[str, ...]
    weights: tuple[float, ...]
    shares: tuple[float, ...]
    my_index: int
    timeout: float
    max_group_size: int = 0   # above it the round is hierarchical (swarm.averaging.hierarchy); 0: flat

    @classmethod
    def from_info(cls, info: swarm_pb2.GroupInfo, my_peer_id: str) -> "GroupView":
        ids = tuple(m.peer_id for m in info.members)
        if my_peer_id not in ids:
            raise RoundFailed("this peer is not in the group it was given")
        return cls(
            round_id=info.round_id,
            peer_ids=ids,
            roles=tuple(m.role for m in info.members),
            weights=tuple(m.weight for m in info.members),
            shares=tuple(info.shares),
            my_index=ids.index(my_peer_id),
            timeout=info.timeout,
            max_group_size=info.max_group_size,
        )

    @classmethod
    def observed(cls, info: swarm_pb2.GroupInfo) -> "GroupView":
        """The group as a peer outside it sees it (my_index -1): a late peer that only takes the group's result."""
        return cls(
            round_id=info.round_id,
            peer_ids=tuple(m.peer_id for m in info.members),
            roles=tuple(m.role for m in info.members),
            weights=tuple(m.weight for m in info.members),
            shares=tuple(info.shares),
            my_index=-1,
            timeout=info.timeout,
            max_group_size=info.max_group_size,
        )

    def brings(self, i: int) -> bool:
        return self.roles[i] != "aux"

    def needs(self, i: int) -> bool:
        return self.roles[i] != "aux"
