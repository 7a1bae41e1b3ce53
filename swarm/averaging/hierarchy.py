"""Hierarchical exact all-reduce for a group larger than `max_group_size` (DESIGN.md invariant 8).

The matched group (the same member list on every member) is partitioned deterministically into S subgroups
of at most `max_group_size` members (`plan_hierarchy`): reducing members (trainers, then auxiliaries) and then
client-mode members are dealt round-robin, so subgroup sizes differ by at most one and client-mode members are
spread evenly. Every subgroup has P reducers (the fewest any subgroup has); the p-th reducer of each subgroup
reduces part p, and the parts have the same boundaries in every subgroup. The reducers of part p, one per
subgroup, are its column. One round then runs in three stages:

1. reduce-scatter inside each subgroup (`SubgroupRound`, the butterfly of swarm.averaging.allreduce): the
   reducer of part p holds its subgroup's weighted mean of part p;
2. the column of part p all-reduces those partial means (`ColumnRound`, the same butterfly over a vector of
   part p alone), each weighted by its subgroup's total weight: every column member holds the same values,
   each sub-part reduced by exactly one column member;
3. all-gather inside each subgroup: each column member encodes the column's result once and sends the same
   bytes to its subgroup (and decodes them for its own result).

So a member opens streams to the other reducers of its subgroup (at most max_group_size - 1) and, if it is a
reducer, to the rest of its column (S - 1): O(max_group_size + N / max_group_size), not N - 1.

Guarantees:
- Consistency (invariant 5): the column members hold bitwise-identical values of part p (the butterfly's
  guarantee); they run the same codec on the same values, so every member of every subgroup decodes the same
  bytes. Every member that gets every part holds the same vector. For the lossless and fp16 codecs the
  re-encoding adds nothing (they are idempotent); a lossy codec quantizes part p once more.
- Exactness: with every member live, the result is the weighted mean over the whole group, up to the codecs.
  A subgroup's weight in its column is its members' nominal weight: if one of its senders was excluded, that
  subgroup's partial mean (of its survivors) stands for the whole subgroup's weight.
- Bounded time: the round keeps the group's deadline, which the leader computes for the hierarchy
  (swarm.averaging.subgroups.hierarchy_seconds: the flat round's limit plus the column stage's). A subgroup
  member waits for a reducer's reply the column stage's limit longer; a column member waits as much longer for
  the other column members (their subgroups' stage 1 may end later than mine) before it drops a silent one.
- Subgroup, column and member weights are the leader's; a part's column waits for the whole part reduced in
  its subgroup before it starts (store and forward: pipelining it chunk by chunk is not done).
- Robust mode (a signer given): every stage reduces with CenteredClip, and the column runs a flat robust round's
  checks, because each part of the global average is decided there: column members commit to their subgroups'
  partial means, sign their sub-parts, swap the statements (an equivocating column reducer is proven and banned)
  and audit one another from the committed partials (swarm.averaging.audits; the caller hands the column round to
  its Auditor), so a column reducer that lies is caught as a flat round's reducer is. Not checked: a subgroup
  reducer that sends its subgroup other bytes than its column's result (that subgroup alone would diverge; members
  could compare a part's digest with another subgroup's reducer of it), a subgroup reducer's partial mean (it
  enters its column as one committed input, clipped there like any sender), and columns of fewer than
  ROBUST_MIN_TRAINERS members.
- Failures: a member that is not a reducer and dies is excluded from its subgroup's parts, as in a flat
  round. A subgroup reducer that dies costs only itself: in the column the part's other members fail its
  sub-part over to a backup column member (swarm.averaging.failover), so the column's result lacks that
  subgroup's contributions to the part and nothing else; its subgroup's members, whose exchange of the part
  failed, take the column's result from the part's reducer in another subgroup (`SubgroupRound._take_elsewhere`,
  the late peers' fetch: those bytes are what every other subgroup decodes), and step with the same parameters
  as everyone. The subgroup's own failover stays off: a backup could only average the part inside the subgroup,
  which would differ from the others' global part. A column round that fails at its member is taken the same way
  by that member's subgroup (the member itself misses its part and does not step). Sessions 22-23 measured what
  this was worth: 64 peers with 2 kills a minute committed 89.9% and 94.7% of peer-rounds in the runs where kills
  hit subgroup reducers (a dead subgroup reducer cost its whole subgroup the round), 98-100% in the others.
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from typing import Callable, Collection, Sequence

import torch
from hivemind.p2p import P2P
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.commitments import Commitment
from swarm.averaging.group import GroupView
from swarm.averaging.late import column_sources, fetch_part
from swarm.averaging.layout import Chunk, TensorLayout, plan_parts
from swarm.averaging.matchmaking import robust_group_problem
from swarm.averaging.reduction import Reduction
from swarm.averaging.service import AggregateService
from swarm.averaging.subgroups import Hierarchy, derived_id
from swarm.errors import RoundFailed
from swarm.net.auth import SwarmAuthorizer

__all__ = ["HierarchicalRound", "SubgroupRound", "ColumnRound"]

logger = logging.getLogger(__name__)

def _compact(chunks: Sequence[Chunk], layout: TensorLayout) -> tuple[TensorLayout, list[int]]:
    """A layout of one part alone (per bucket, its contiguous range there), and where each bucket's range starts."""
    sizes = [0] * len(layout.codecs)
    starts = [0] * len(layout.codecs)
    for chunk in chunks:
        if sizes[chunk.bucket] == 0:
            starts[chunk.bucket] = chunk.start
        sizes[chunk.bucket] += chunk.length
    compact = TensorLayout(shapes=tuple((n,) for n in sizes), codecs=layout.codecs, buckets=tuple((b,) for b in range(len(sizes))))
    return compact, starts


class SubgroupRound(AllReduceRound):
    """Stages 1 and 3 on one subgroup member: a reducer's part is not averaged here but handed to its column
    (`partial`, `partial_ready`); its outputs come from the column (`publish`) or fail (`fail_part`)."""

    relays_results = False

    def __init__(self, *args, partial: list[torch.Tensor] | None = None, starts: Sequence[int] = (), **kwargs):
        super().__init__(*args, **kwargs)
        self.partial, self.starts = partial, list(starts)
        self.partial_ready = asyncio.Event()
        self.no_contributions = False
        # part j -> the column members of other subgroups to ask for it when my subgroup's reducer of it fails
        # (server, part number there, round id there; swarm.averaging.late.column_sources), set by HierarchicalRound
        self.elsewhere: dict[int, list[tuple[str, int, bytes]]] = {}

    async def _take_elsewhere(self, lost: list[int]) -> list[int]:
        """A part my subgroup's reducer did not give me (it died, or its column failed there) is the column's result,
        which every other column member sends its own subgroup as the same bytes: take it from one of them. My
        contribution to it is lost with the reducer; what I step with is what the other subgroups step with."""
        outcomes = await asyncio.gather(*(self._take_from_column(j) for j in lost), return_exceptions=True)
        still = []
        for j, outcome in zip(lost, outcomes):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                self._lost[j] = f"{self._lost.get(j, '?')}; other subgroups: {outcome}"
                still.append(j)
            else:
                self.stats.recovered_parts.append(j)
        return still

    async def _take_from_column(self, j: int) -> None:
        chunks = self.parts[j]
        failures = []
        for server, label, source_round in self.elsewhere.get(j, []):
            try:
                got = await fetch_part(self.p2p, self.layout, chunks, server, label, source_round, self.sender_timeout, self.authorizer)
            except RoundFailed as e:
                failures.append(str(e))
                continue
            hasher = hashlib.sha256()
            for chunk, (data, values) in zip(chunks, got):
                self.stats.bytes_received += len(data)
                self._store_result(chunk, values)
                hasher.update(data)
            self._held[j] = [data for data, _ in got]   # whole now: late peers may ask me for it
            if self.hash_parts:
                self._part_hashers[j] = hasher
            logger.info("round %s: part %d taken from another subgroup's reducer of it (%s)", self.group.round_id.hex()[:8], j, server[-8:])
            return
        raise RoundFailed("; ".join(failures) or "no other subgroup to ask")

    def _try_finalize(self) -> None:
        """Reduce each chunk of my part whose live senders have all arrived into `partial`; once all are, it is ready."""
        if self._retired.is_set() or self.partial_ready.is_set():
            return
        live = self._expected - self._failed
        for k, chunk in enumerate(self.parts[self.group.my_index]):
            if self._reductions[k] is None or not live <= self._arrived[k]:
                continue
            averaged = self._reductions[k].result()
            if averaged is None:
                self.no_contributions = True
            elif self.partial is not None:
                start = chunk.start - self.starts[chunk.bucket]
                self.partial[chunk.bucket][start : start + chunk.length] = averaged
            self._count_clipping(getattr(self._reductions[k], "clipped_share", {}), chunk.length)
            self._reductions[k] = None  # type: ignore[call-overload]
        if all(r is None for r in self._reductions):
            self.partial_ready.set()

    def publish(self, values: list[torch.Tensor]) -> None:
        """The column's result of my part: encode each chunk once, send those bytes, keep what they decode to."""
        for k, chunk in enumerate(self.parts[self.group.my_index]):
            start = chunk.start - self.starts[chunk.bucket]
            codec = self.layout.codecs[chunk.bucket]
            averaged = values[chunk.bucket][start : start + chunk.length]
            data = codec.encode(averaged)
            self._outputs[k] = data
            self._store_result(chunk, averaged if codec.name == "none" else codec.decode(data))
            self._output_ready[k].set()

    def fail_part(self) -> None:
        """My part cannot be had: my subgroup's members are told at once (and miss it)."""
        for k, ready in enumerate(self._output_ready):
            if self._outputs[k] is None:
                self._outputs[k] = b""
            ready.set()


class ColumnRound(AllReduceRound):
    """Stage 2 on one column member: the butterfly over part p's vector; its own partial mean joins (`contribute`)
    only once its subgroup has reduced it, while the others' partials may already arrive."""

    stall_from_start = False   # made with the hierarchy's round, run once my subgroup's stage is done

    def __init__(self, *args, **kwargs):
        self._joined = False
        super().__init__(*args, **kwargs)

    def _add_own(self) -> None:
        pass   # `contribute` adds it

    def contribute(self) -> None:
        self._joined = True
        super()._add_own()
        self._try_finalize()

    def _try_finalize(self) -> None:
        if self._joined:
            super()._try_finalize()

    async def _watch_absent_senders(self) -> None:
        await asyncio.sleep(self.reply_slack)   # the other subgroups' stage 1 may take that much longer than mine
        await super()._watch_absent_senders()


class HierarchicalRound:
    """One member's side of a hierarchical round: `await run()` returns the averaged buckets (None for aux), like
    AllReduceRound.run. It opens its subgroup's and column's rounds on `service` and closes them when done."""

    def __init__(self, p2p: P2P, group: GroupView, layout: TensorLayout, local: Sequence[torch.Tensor] | None, plan: Hierarchy, *,
                 service: AggregateService, chunk_elements: int, sender_timeout: float, column_silence: float,
                 column_seconds: float, reduction: type[Reduction] = Reduction, authorizer: SwarmAuthorizer | None = None,
                 excluded: Collection[str] = (), round_classes: tuple[type[SubgroupRound], type[ColumnRound]] = (SubgroupRound, ColumnRound),
                 signer: RSAPrivateKey | None = None, keep_contribution: Callable[[Commitment, int, list[bytes]], None] | None = None):
        self.group, self.plan, self.service = group, plan, service
        me = group.my_index
        s = plan.subgroup_of(me)
        members = plan.subgroups[s]
        part_chunks = plan_parts(layout, plan.part_shares, chunk_elements)
        parts: list[list[Chunk]] = []
        sub_shares: list[float] = []
        for i in members:
            p = plan.part_of(i)
            parts.append(part_chunks[p] if p is not None else [])
            sub_shares.append(plan.part_shares[p] if p is not None else 0.0)
        sub_group = GroupView(round_id=derived_id(group.round_id, b"subgroup", s), peer_ids=tuple(group.peer_ids[i] for i in members),
                              roles=tuple(group.roles[i] for i in members), weights=tuple(group.weights[i] for i in members),
                              shares=tuple(sub_shares), my_index=members.index(me), timeout=group.timeout)
        self.part = plan.part_of(me)
        mine = part_chunks[self.part] if self.part is not None else []
        compact, starts = _compact(mine, layout)
        partial = [torch.zeros(n) for n in compact.bucket_sizes] if mine else None
        sub_class, column_class = round_classes
        self.sub = sub_class(p2p, sub_group, layout, local, chunk_elements=chunk_elements, sender_timeout=sender_timeout,
                             reduction=reduction, authorizer=authorizer, excluded=excluded, parts=parts, partial=partial, starts=starts)
        self.sub.reply_slack = column_seconds
        # each part my subgroup's reducer may fail me on, from the same column's members elsewhere (spread by my id)
        if len(plan.subgroups) > 1:
            spread = s + 1 + int.from_bytes(hashlib.sha256(group.peer_ids[me].encode()).digest()[:4], "big") % (len(plan.subgroups) - 1)
            self.sub.elsewhere = {members.index(column[s]): column_sources(plan, group.peer_ids, p, group.round_id, group.peer_ids[me],
                                                                           start=spread % len(plan.subgroups), skip=s)
                                  for p, column in enumerate(plan.columns) if column[s] != me}
        self.column: ColumnRound | None = None
        if partial is not None:
            assert self.part is not None
            column = plan.columns[self.part]
            weights = tuple(sum(group.weights[i] for i in plan.subgroups[t] if group.brings(i)) for t in range(len(column)))
            column_group = GroupView(round_id=derived_id(group.round_id, b"column", self.part), peer_ids=tuple(group.peer_ids[i] for i in column),
                                     roles=("trainer",) * len(column), weights=weights, shares=(1.0 / len(column),) * len(column),
                                     my_index=column.index(me), timeout=column_seconds)
            # robust mode's checks run in the column, where each part of the global average is decided: its members
            # commit to their subgroups' partial means, sign their sub-parts and swap the statements, and may audit
            # one another from the committed partials (Auditor.after_round on `column`): a column reducer that lies
            # is caught as a flat round's reducer is. Not in a column too short to outvote one member.
            checked = signer is not None and not robust_group_problem(list(column_group.roles))
            self.column = column_class(p2p, column_group, compact, partial, chunk_elements=chunk_elements, sender_timeout=column_silence,
                                       reduction=reduction, authorizer=authorizer, excluded=excluded,
                                       signer=signer if checked else None, keep_contribution=keep_contribution if checked else None)
            self.column.reply_slack = column_seconds   # stage 1 of the slowest subgroup
        self.stats = self.sub.stats

    async def _column_stage(self) -> None:
        """Stage 2 for my part: once my subgroup has reduced it, all-reduce it with my column, then send it (stage 3)."""
        column, sub = self.column, self.sub
        assert column is not None
        try:
            await sub.partial_ready.wait()
            if sub.no_contributions and column.group.weights[column.group.my_index] > 0:
                # its senders failed: zeros with the subgroup's weight would bias the part (with weight 0 they count for nothing)
                raise RoundFailed("my part has no contributions in my subgroup")
            column.contribute()
            remaining = self._deadline - asyncio.get_running_loop().time()
            column.group = dataclasses.replace(column.group, timeout=max(0.1, remaining))
            values = await column.run()
            assert values is not None
            sub.publish(values)
        except RoundFailed as e:
            logger.warning("round %s: the column of part %s failed: %s", self.group.round_id.hex()[:8], self.part, e)
            sub.fail_part()
        except BaseException:
            sub.fail_part()
            raise
        finally:
            for name in ("bytes_sent", "bytes_received", "streams", "refetches", "resent_chunks"):
                setattr(sub.stats, name, getattr(sub.stats, name) + getattr(column.stats, name))
            sub.stats.excluded.extend(column.stats.excluded)
            sub.stats.proofs.extend(column.stats.proofs)   # a column reducer's two signed statements: it equivocated
            sub.stats.bad_data.extend(p for p in column.stats.bad_data if p not in sub.stats.bad_data)

    async def run(self) -> list[torch.Tensor] | None:
        self._deadline = asyncio.get_running_loop().time() + self.group.timeout
        rounds = [self.sub] + ([self.column] if self.column is not None else [])
        for round_ in rounds:
            self.service.open(round_)
        stage = asyncio.create_task(self._column_stage()) if self.column is not None else None
        try:
            return await self.sub.run()   # it waits for my own part, which the column stage publishes or fails
        finally:
            if stage is not None:   # done unless my subgroup's round ended early (its deadline): then it ends too
                stage.cancel()
                await asyncio.gather(stage, return_exceptions=True)
            for round_ in rounds:
                self.service.close(round_.group.round_id)
