"""A late peer takes the formed group's result: the averaged parts, fetched from their reducers.

A peer that reaches matchmaking after the epoch's group formed gets TOO_LATE naming that group
(`LateForGroup`). Instead of failing its round and downloading the whole state, it asks each
reducer of the group for its averaged part (a fetch stream, as members use after a broken reply
stream; the reducer serves peers outside the group up to a budget of bytes a round, allreduce.MAX_LATECOMER_FETCHES).
The bytes are the ones every member decodes, so the late peer steps to bitwise the same
parameters as the group. From a hierarchical group (swarm.averaging.hierarchy) it takes each part
from that part's reducer in one subgroup (chosen by its peer id, so late peers spread over them), and if that one
cannot serve it, from the same part's reducers in the next subgroups (its column: they all hold the same bytes). Its
own values are not in the average (it came too late for that). A member of a hierarchical group whose own subgroup's
reducer of a part died or failed its column takes that part the same way (`fetch_part`, `column_sources`).

A part whose reducer cannot serve it (dead, its round failed there, or at its limit of late peers) is asked of other
members of a flat group in turn, at most MAX_SOURCES in all: a member that stepped holds every part as it took it (the
reducer's bytes, or a backup's when the reducer died mid-round) and serves it whole. A late peer that was itself in
the group (a member whose round failed) never asks itself.

Bounded time: the whole fetch ends within the group's deadline; a member serves a late peer only once its
own round is over, and heartbeats until then; one that sends nothing, not even a heartbeat, for the group's
silence limit, refuses, or sends a wrong chunk fails that source; a part no source gave fails the fetch
(RoundFailed, naming the part and each source's failure); the peer then falls back to what a failed round does.
"""
from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import torch
from hivemind.p2p import P2P, PeerID

from swarm.averaging.balancing import MemberLink
from swarm.averaging.deadlines import reply_timeout, round_limits
from swarm.averaging.layout import Chunk, TensorLayout, plan_parts
from swarm.averaging.streams import AGGREGATE_HANDLER, close_quietly, is_heartbeat
from swarm.averaging.subgroups import Hierarchy, derived_id, plan_hierarchy
from swarm.compression.codecs import decode_checked
from swarm.errors import ProtocolError, RoundFailed
from swarm.net.auth import SwarmAuthorizer
from swarm.proto import swarm_pb2

__all__ = ["fetch_group_result", "fetch_part", "column_sources", "MAX_SOURCES"]

MAX_SOURCES = 3   # members asked for one part: its reducer, then others (a silent one costs a reply limit each)


def part_sources(members: Sequence[str], j: int, me: str, limit: int = MAX_SOURCES) -> list[str]:
    """Who to ask for part j of a flat group: its reducer, then the other members in an order of our own (late peers
    spread over them), never ourselves."""
    others = sorted((m for i, m in enumerate(members) if i != j and m != me),
                    key=lambda m: hashlib.sha256(f"{me}/{j}/{m}".encode()).digest())
    return ([members[j]] if members[j] != me else [])[:limit] + others[: limit - (members[j] != me)]


def column_sources(plan: Hierarchy, ids: Sequence[str], p: int, round_id: bytes, me: str, *, start: int,
                   skip: int | None = None, limit: int = MAX_SOURCES) -> list[tuple[str, int, bytes]]:
    """Who to ask for part p of a hierarchical group: its column's members (every one holds the same bytes of it),
    subgroup `start` first and then the next ones, never subgroup `skip` (mine, whose reducer of it failed) nor
    ourselves; each with the part number it goes by in its subgroup's round and that round's id."""
    count = len(plan.subgroups)
    out = []
    for t in ((start + k) % count for k in range(count)):
        member = plan.columns[p][t]
        if t != skip and ids[member] != me:
            out.append((ids[member], plan.subgroups[t].index(member), derived_id(round_id, b"subgroup", t)))
    return out[:limit]


async def fetch_part(p2p: P2P, layout: TensorLayout, chunks: Sequence[Chunk], server: str, label: int, source_round: bytes,
                     silence: float, authorizer: SwarmAuthorizer | None = None) -> list[tuple[bytes, torch.Tensor]]:
    """One averaged part from one member that holds it (its reducer, a holder, or in a hierarchical group a column
    member of another subgroup), under round `source_round` where it goes by part `label`: each chunk's bytes and
    what they decode to. RoundFailed naming the member when it does not serve it; each wait has the reply limit of
    `silence`, and heartbeats (its round not over yet) keep the stream open, so the caller bounds the whole fetch."""
    async def requests():
        msg = swarm_pb2.PartChunk(round_id=source_round, part=label, chunk=0, sender=str(p2p.peer_id), fetch=True)
        if authorizer is not None:
            authorizer.sign_message(msg, p2p.peer_id)
        yield msg

    got: list[tuple[bytes, torch.Tensor]] = []
    stream = None
    try:
        stream = await asyncio.wait_for(
            p2p.iterate_protobuf_handler(PeerID.from_base58(server), AGGREGATE_HANDLER, requests(), swarm_pb2.PartChunk),
            reply_timeout(silence))
        for k, chunk in enumerate(chunks):
            reply = await asyncio.wait_for(anext(stream), reply_timeout(silence))
            while is_heartbeat(reply):   # the holder is alive and its round not over yet
                reply = await asyncio.wait_for(anext(stream), reply_timeout(silence))
            if reply.error:
                raise RoundFailed(f"{server[-8:]}: {reply.error}")
            if reply.chunk != k or reply.part != label:
                raise ProtocolError(f"{server[-8:]} sent chunk {reply.part}/{reply.chunk}, expected {label}/{k}")
            data = reply.data   # protobuf copies a bytes field at each access
            got.append((data, decode_checked(layout.codecs[chunk.bucket], data, chunk.length)))
    except (StopAsyncIteration, asyncio.TimeoutError) as e:
        why = "stream ended early" if isinstance(e, StopAsyncIteration) else f"no reply for {reply_timeout(silence):.1f}s"
        raise RoundFailed(f"{server[-8:]}: {why}") from None
    except ProtocolError as e:
        raise RoundFailed(str(e)) from e
    except (RoundFailed, asyncio.CancelledError):
        raise
    except Exception as e:  # a reset or refused stream
        raise RoundFailed(f"{server[-8:]}: {type(e).__name__}: {e}") from e
    finally:
        if stream is not None:
            await close_quietly(stream)
    return got


async def fetch_group_result(p2p: P2P, info: swarm_pb2.GroupInfo, layout: TensorLayout, links: Sequence[MemberLink], *,
                             chunk_elements: int, floor_silence: float, round_id: bytes | None = None,
                             authorizer: SwarmAuthorizer | None = None) -> list[torch.Tensor]:
    """The averaged buckets of the group `info` (a formed group this peer is not in), fetched from its reducers.

    `round_id`: the phase's id (default the group's); `links`: the members' links, for the silence limit."""
    round_id = round_id or info.round_id
    parts = plan_parts(layout, list(info.shares), chunk_elements)
    # part j: who may serve it, each with the part number it goes by there and the round id it is served under
    me = str(p2p.peer_id)
    ids = [m.peer_id for m in info.members]
    sources = [[(server, j, round_id) for server in part_sources(ids, j, me)] for j in range(len(ids))]
    plan = plan_hierarchy([m.role for m in info.members], list(info.shares), info.max_group_size) if info.max_group_size else None
    if plan is not None:   # a hierarchical group: any subgroup's reducer of a part serves it; spread late peers over them
        parts = plan_parts(layout, list(plan.part_shares), chunk_elements)
        s = int.from_bytes(hashlib.sha256(me.encode()).digest()[:4], "big") % len(plan.subgroups)
        sources = [column_sources(plan, ids, p, round_id, me, start=s) for p in range(len(plan.columns))]
    silence = round_limits(layout.wire_bytes(), links, list(info.shares), chunk_bytes=layout.chunk_bytes(chunk_elements),
                           floor_silence=floor_silence, floor_averaging=info.timeout).silence
    result = [torch.empty(size, dtype=torch.float32) for size in layout.bucket_sizes]
    waiting = {j for j, chunks in enumerate(parts) if chunks}   # parts not fetched yet

    async def take_part(j: int) -> None:
        failures = []
        for server, label, source_round in sources[j]:
            try:
                got = await fetch_part(p2p, layout, parts[j], server, label, source_round, silence, authorizer)
            except RoundFailed as e:
                failures.append(str(e))
                continue
            for chunk, (_, values) in zip(parts[j], got):
                result[chunk.bucket][chunk.start : chunk.start + chunk.length] = values
            waiting.discard(j)
            return
        raise RoundFailed(f"part {j}: " + ("; ".join(failures) or "nobody to ask but ourselves"))

    try:
        async with asyncio.timeout(info.timeout):
            try:
                async with asyncio.TaskGroup() as tasks:   # a part that fails cancels (and awaits) the others
                    for j, chunks in enumerate(parts):
                        if chunks:
                            tasks.create_task(take_part(j))
            except* RoundFailed as failed:
                raise RoundFailed("late for the group, and its result could not be fetched: "
                                  + "; ".join(str(e) for e in failed.exceptions)) from None
    except TimeoutError:
        detail = ", ".join(f"part {j} from {'/'.join(server[-8:] for server, _, _ in sources[j])}" for j in sorted(waiting))
        raise RoundFailed(f"late for the group, and its result was not fetched within {info.timeout:.1f}s: still waiting for {detail}") from None
    return result
