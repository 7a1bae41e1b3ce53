"""The round-codec interface: what a run mode's tensors become in one averaging round, and what comes back.

A `RoundCodec` turns the tensors an optimizer averages (gradients, DiLoCo pseudo-gradients) into one or
more phases of the generic weighted all-reduce (`swarm.averaging.allreduce`) and back. The collaboration forms the
group once (matchmaking), then runs the codec's `average` against it (`Collaboration.submit_round`): each
`await ctx.phase(layout, local)` is one all-reduce among the same members, the first under the group's round
id and later ones under ids derived from it. The codecs themselves live in `swarm.compression.policy`
(fixed per-tensor codecs, auto) and `swarm.compression.powersgd`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Sequence

import torch

from swarm.averaging.balancing import MemberLink, round_seconds
from swarm.averaging.group import GroupView
from swarm.averaging.layout import TensorLayout
from swarm.compression.codecs import Codec

__all__ = ["RoundContext", "Averaged", "RoundCodec", "encoded_bytes", "layout_bytes", "predicted_seconds"]

PhaseRunner = Callable[[TensorLayout, "list[torch.Tensor] | None"], Awaitable["list[torch.Tensor] | None"]]


@dataclass
class RoundContext:
    """What a codec's `average` sees of the round: the group (identical on every member) and its phases."""

    group: GroupView
    links: list[MemberLink]          # the members' measured links and roles, from the leader's GroupInfo
    phase: PhaseRunner               # one all-reduce among the group; returns the averaged buckets (None for aux)
    epoch: int = 0


@dataclass
class Averaged:
    """What a codec's `average` gives back: the averaged tensors (None for auxiliary peers) and what it did."""

    tensors: list[torch.Tensor] | None
    codec: str
    predicted_seconds: float = float("nan")
    extra: list[torch.Tensor] | None = None      # averaged extra values (exact), in the order given
    commit: Callable[[], None] = field(default=lambda: None, repr=False)  # make the codec's state changes permanent


def encoded_bytes(codec: Codec, numel: int) -> int:
    """Bytes a codec puts on the wire for `numel` values (payload only; the 8-bit codebook counted)."""
    return codec.payload_bytes(numel)


def layout_bytes(layout: TensorLayout) -> int:
    return sum(encoded_bytes(c, n) for c, n in zip(layout.codecs, layout.bucket_sizes))


def predicted_seconds(vector_bytes: int, ctx: RoundContext) -> float:
    """The LP bound of one phase of `vector_bytes` with the group's shares and measured links."""
    try:
        return round_seconds(vector_bytes, ctx.links, ctx.group.shares)
    except ValueError:
        return float("inf")


class RoundCodec(abc.ABC):
    """Averages a fixed list of tensors (shapes known at construction) through one round."""

    name: str

    def __init__(self, shapes: Sequence[Sequence[int]]):
        self.shapes = [tuple(int(d) for d in s) for s in shapes]

    @property
    @abc.abstractmethod
    def schema(self) -> TensorLayout:
        """A layout that identifies the run's tensors and codec choice for matchmaking (same on every peer)."""

    def validate(self, tensors: list[torch.Tensor] | None) -> None:
        """Refuse, before any round starts, what this codec cannot average (a ConfigError)."""

    @abc.abstractmethod
    async def average(self, ctx: RoundContext, tensors: list[torch.Tensor] | None, extra: list[torch.Tensor] | None = None) -> Averaged:
        """The round's work against the formed group `ctx`: average `tensors` (None for an auxiliary peer) and
        `extra` (small, averaged exactly), in one or more `ctx.phase` all-reduces.

        It must not change the codec's state until `Averaged.commit()` is called, so a round that fails in a
        later phase leaves everything as it was (the optimizer retries with the same inputs)."""

    def predicted_bytes(self) -> int:
        """What one member's share of the round roughly weighs (for the auto codec's comparison)."""
        return layout_bytes(self.schema)

    def predict(self, ctx: RoundContext) -> float:
        return predicted_seconds(self.predicted_bytes(), ctx)

    # state that every member holds identically (in the state download) and local state
    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def reset(self) -> None:
        """Forget local state (error feedback) after a state download."""
