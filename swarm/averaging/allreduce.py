"""Butterfly all-reduce over hivemind P2P streams (reduce-scatter, then all-gather), pipelined by chunk.

The vector to average is a set of tensors grouped into buckets by codec (TensorLayout).
Each bucket is split among the group's reducers in proportion to their LP shares; member
j reduces part j. Every member that brings values opens one bidirectional stream to each
other reducer: it streams its chunks of that part, and the reducer streams back each
averaged chunk as soon as every live sender's copy of it has arrived. So upload and
download overlap, and a peer with no share receives results while it is still sending.

Guarantees:
- Consistency: a reducer encodes each averaged chunk once and sends the same bytes to every
  member; it also decodes those bytes for its own result. Every member that receives all
  parts therefore holds a bitwise-identical averaged vector. (With the sparse codec those bytes may be the chunk's
  inputs with their coefficients in the average, when smaller: a bundle, decoded the same way everywhere.)
- Bounded time: the round ends by its deadline. Both limits follow the work
  (swarm.averaging.deadlines): a sender whose stream delivers no chunk for `sender_timeout` (the
  silence limit, from the chunk size and the group's measured links) is excluded from the chunks
  not yet averaged (the weights renormalise); a slow sender that keeps delivering stays.
- A lost reducer costs its part's delay, not the round (swarm.averaging.failover): the members that lack its
  part take it from a backup, which relays the reducer's bytes when some member holds them whole and else
  averages the part again from the members' contributions; every member that asked takes the backup's bytes.
  A reducer taken for dead while alive hands its part over if it has not stepped (`hand_over`), and it steps
  with its part only once every member that needs it said it holds it, or is gone (delivery confirmation,
  `_await_deliveries`: a member's last word on its request stream, `received` or `gave_up`, the latter making
  the reducer hand over); a member whose process stood still for a reply limit does not step
  (swarm.averaging.stall_watch). A part that cannot be had
  even so makes the round raise RoundFailed for the members that miss it (they do not step), naming each
  missing part and why.
- Late peers (outside the group) take a reducer's part only once its round returned a result, so never a part
  of a round that failed there (swarm.averaging.late).
- A broken reply stream costs nothing: a member whose stream to a live reducer ends, resets
  or goes silent before its averaged part is back opens another and fetches the chunks it
  lacks (`fetch`); reducers keep a finished round's part FINISHED_GRACE seconds for this.
  The fetched bytes are the ones every member gets, so consistency holds.
- Bad input: a chunk of the wrong size, undecodable or non-finite is a protocol error from
  that sender, which is then excluded like a dead one (and named in `stats.bad_data`).
- Checked results (with `signer`, robust mode): a reducer signs each part it sends; members swap the
  signed statements after the all-gather, and a member holding a minority's bytes of a part whose reducer
  signed two results does not step (swarm.averaging.result_exchange); the proof goes to `stats.proofs`.
  Senders sign a commitment to their chunks before sending them (swarm.averaging.commitments), the reducer
  refuses a chunk that differs from it, and its statement lists the commitments it reduced, so that a part can
  be recomputed by an auditor from contributions anyone may hand over (swarm.averaging.audits).

The reduction itself is pluggable (`Reduction`): the weighted mean, or CenteredClip
(swarm.averaging.robust) when peers cannot be trusted. Each contribution reaches the
reduction with its sender's index; a reduction that reports how much of each sender's
pull it cut (`clipped_share`) has it summed per sender over this member's part
(`stats.clipped_share`), and senders named in `excluded` are ignored from the start.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import time
from typing import AsyncIterator, Callable, Collection, Sequence

import msgpack
import torch
from hivemind.p2p import P2P, PeerID
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.commitments import Commitment, commit
from swarm.averaging.deadlines import reply_timeout
from swarm.averaging.failover import PartFailover
from swarm.averaging.group import GroupView
from swarm.averaging.layout import (
    DEFAULT_CHUNK_ELEMENTS,
    Chunk,
    TensorLayout,
    plan_parts,
)
from swarm.averaging.linkmeter import LinkMeter
from swarm.averaging.phase_stats import PhaseStats
from swarm.averaging.reduction import Reduction
from swarm.averaging.result_exchange import ResultCheck, exchange_statements
from swarm.averaging.result_statements import Input, ResultStatement, pack_inputs, sign_statement
from swarm.averaging.stall_watch import StallWatch
from swarm.averaging.streams import AGGREGATE_HANDLER, ReplyStream, dial_failed, drain, heartbeat, is_heartbeat
from swarm.compression.codecs import decode_checked
from swarm.errors import ProtocolError, RoundFailed
from swarm.net.auth import SwarmAuthorizer
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

# A member whose reply stream from a reducer breaks (reset, silent, ended early) asks that reducer again for the
# averaged chunks it still lacks, up to FETCH_RETRIES times: the bytes are the ones every member gets, so this
# loses no consistency, and one broken stream no longer costs the member its step. Reducers keep a finished
# round's averaged part FINISHED_GRACE seconds for such late fetches.
FETCH_RETRIES = 2
FINISHED_GRACE = 30.0
# A reducer answers such a fetch at once (the `resend` it needs, or an empty acknowledgement), before any averaged
# chunk: a member whose fetch is not answered within the stream's silence limit (at least FETCH_ACK_FLOOR seconds)
# takes the reducer for dead and hands the part to failover at once. Without this a reducer killed mid-all-gather
# cost the round: its p2pd outlives it for a few seconds and a fetch to it hung until the round's deadline.
FETCH_ACK_FLOOR = 3.0
# A member that leaves a part (to a backup, or because its round ended) gives its last word this long to go out
# before closing the stream (see AllReduceRound._await_deliveries)
LAST_WORD_FLUSH = 1.0
# While a member waits for an averaged chunk, its reducer sends a heartbeat (swarm.averaging.streams.heartbeat) every
# third of the silence limit (the aggregate service, every HEARTBEAT_EVERY seconds until the round opens there); a
# member that hears nothing on a stream for the silence limit plus HEARTBEAT_SLACK seconds (event loops stall on a
# loaded machine) takes the reducer for dead or frozen and hands its part to failover at once, without a fetch. Before
# heartbeats a frozen reducer (SIGSTOP: its p2pd lives on, nothing resets) cost the reply limit (2 silences + 2 s),
# then an unanswered fetch: 17 s of the longest stall in `swarm chaos`. Safe since delivery confirmation: a live
# reducer taken for dead hands its part over (hand_over) instead of stepping with bytes a backup may not decide, so a
# loop that stalls past the limit costs a failover of its part, not consistency. With 2 s of slack a frozen reducer
# still cost 12 s of stall in `swarm chaos` (7 s here, 5 s for the backup's question to it); 1 s and
# failover.OWN_ANSWER_LIMIT (3 s: 11.2 s measured, session 27; 1 s now) take that to about 9.
HEARTBEAT_SLACK = 1.0
# A reducer waiting for its members' last words (_await_deliveries) wakes on each one, on each stream that closes,
# and when a gone member's grace runs out; and at least this often, in case of news nobody signalled.
DELIVERY_RECHECK = 0.5
# A member that a dial failed to reach (connection refused: a dead peer's port) and that has no stream open to me is
# taken for gone once this many seconds pass without one: a live member that cannot be dialed (behind NAT, yet given
# a part) opens its own streams at the round's start (see AllReduceRound._watch_absent_senders).
UNDIALABLE_GRACE = 3.0
# Seconds the members' swap of result statements may take (within the round's deadline as well).
RESULT_EXCHANGE_TIMEOUT = 5.0
# Peers outside the group that may fetch one reducer's averaged part of one round (late peers, swarm.averaging.late):
# this many fetches of my own part, or the whole vector's bytes, or LATECOMER_FLOOR_BYTES, whichever is more (each
# fetch is charged the bytes of the part it asks). A count alone (16) starved the swarm when a small group formed and
# most peers came late: at 64 toy peers, rounds of 2 KB, late peers' fetches of 3 members' parts were refused by the
# hundred (session 24) and each of those peers lost its round, while serving all of them cost kilobytes. A late peer
# refused falls back to a state download, which costs a donor more than the part.
MAX_LATECOMER_FETCHES = 16
LATECOMER_FLOOR_BYTES = 8 * 2**20


FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def layout_digest(layout: TensorLayout, chunks: Sequence[Chunk]) -> bytes:
    """sha256 of a part's chunk layout (each chunk's codec and length): a statement signs it, so an auditor recomputes
    the part with the codecs and chunk sizes its reducer used (swarm.averaging.audits)."""
    return hashlib.sha256(msgpack.packb([[layout.codecs[c.bucket].name, c.length] for c in chunks])).digest()


# ---------------------------------------------------------------------------------------------------
# One round


async def _all_or_none(coroutines: list) -> None:
    """Run the coroutines side by side until all have returned; if one raises (or I am cancelled), the others are
    cancelled and awaited before the error goes on."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class AllReduceRound:
    """One member's side of one round. `await run()` returns the averaged buckets (None for aux)."""

    reply_slack = 0.0   # seconds a reducer may spend past its senders' last chunk before answering (see _reply_limit)
    # whether the stall watch (swarm.averaging.stall_watch) counts from the round's construction, not from run(): a
    # column round of a hierarchy is made at the start and runs after its subgroup's stage (it says False)
    stall_from_start = True
    # whether a reducer may send its chunk's inputs back instead of their mean (`_bundled`; a subgroup round of a
    # hierarchy hands its mean to the column instead, and says False)
    relays_results = True
    # a bundle is sent when smaller than the result times this (tests raise it to take the bundle path every time)
    bundle_preference = 1.0

    def __init__(
        self,
        p2p: P2P,
        group: GroupView,
        layout: TensorLayout,
        local: Sequence[torch.Tensor] | None,
        *,
        chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
        sender_timeout: float = 10.0,
        reduction: type[Reduction] = Reduction,
        authorizer: SwarmAuthorizer | None = None,
        excluded: Collection[str] = (),
        parts: list[list[Chunk]] | None = None,
        part_labels: dict[int, int] | None = None,
        result: list[torch.Tensor] | None = None,
        signer: RSAPrivateKey | None = None,
        keep_contribution: Callable[[Commitment, int, list[bytes]], None] | None = None,
        claim_ceiling: float | None = None,
        hash_parts: bool = False,
    ):
        """`excluded`: peer ids whose contributions my part ignores (senders struck out by a robust reducer).

        A backup's round of one dead reducer's part (swarm.averaging.failover) passes `parts` (that part's chunks as
        the backup's), `part_labels` (member -> the part number its part goes by on the wire) and `result` (the
        member's round result, which the part's averaged values fill).

        `signer`: this peer's identity key (swarm.net.identity); with it the round checks results: as a reducer it
        signs each member's copy of its part, as a member it requires its reducers' signatures and compares them
        with the other members' after the all-gather (swarm.averaging.result_exchange); and contributions are committed
        (swarm.averaging.commitments), each handed to `keep_contribution` as it is made; a sender whose commitment
        claims more samples than `claim_ceiling` is excluded from my part, its commitment kept as the proof
        (swarm.averaging.claims).

        `hash_parts`: keep sha256 of every part as received (`stats.part_hashes`, the members' unsigned comparison:
        swarm.averaging.result_hashes) without a signer; rounds that check results always hash (their statements sign
        the digests). Off by default: hashing a round's whole result was a tenth of a plain round's CPU on loopback."""
        self.p2p, self.group, self.layout = p2p, group, layout
        self.authorizer = authorizer  # invite-only runs: the first chunk of each stream is signed
        self.local = list(local) if local is not None else None
        me = group.my_index
        if group.brings(me) != (self.local is not None):
            raise ValueError("a member brings values exactly when its role is not aux")
        self.parts = parts if parts is not None else plan_parts(layout, group.shares, chunk_elements)
        self.part_labels = dict(part_labels or {})
        self.chunk_elements = chunk_elements
        self.sender_timeout = sender_timeout
        self.reduction = reduction
        self.stats = PhaseStats()
        if result is None and group.needs(me):
            result = [torch.empty(size, dtype=torch.float32) for size in layout.bucket_sizes]
        self.result = result if group.needs(me) else None
        # reducer state for my own part
        my_chunks = self.parts[me]
        self._expected = {i for i in range(len(group.peer_ids)) if group.brings(i) and i != me}
        self._failed: set[int] = {i for i in self._expected if group.peer_ids[i] in excluded}
        self.stats.excluded.extend(group.peer_ids[i] for i in sorted(self._failed))
        self._part_hashers: dict[int, "hashlib._Hash"] = {}   # part -> sha256 of its averaged bytes as received, in order
        self._clip_totals: dict[int, list[float]] = {}  # sender -> [sum of clipped share x chunk length, length]
        self._arrived: list[set[int]] = [set() for _ in my_chunks]
        self._reductions = [reduction(c.length) for c in my_chunks]
        # chunk -> sender -> encoded bytes, for chunks whose codec can send the inputs back with their coefficients in
        # the reduction's result instead of the result (a bundle: swarm.compression.sparse). A robust reduction's
        # result is a convex combination of the inputs too (CenteredClip's fixed point), and audits check the values a
        # bundle decodes to like any result.
        self._bundled: list[dict[int, bytes] | None] = [
            {} if self.relays_results and hasattr(layout.codecs[c.bucket], "bundle") else None for c in my_chunks]
        self._radii: list[float | None] = [None] * len(my_chunks)   # each chunk's CenteredClip radius (robust reductions)
        self._outputs: list[bytes | None] = [None] * len(my_chunks)
        self._output_ready = [asyncio.Event() for _ in my_chunks]
        self._progress = asyncio.Event()
        self._retired = asyncio.Event()  # set once the round is over: fetches of chunks never averaged give up
        self._lost: dict[int, str] = {}  # part -> why this member did not get it
        self._last_heard: dict[int, float] = {}
        self._latecomer_bytes = 0   # the bytes of the parts late peers fetched from me this round (charged at the ask)
        self._meter: LinkMeter | None = None    # run()'s link meter and stall watch (tests check they end with it)
        self._stalls: StallWatch | None = None
        self._over = asyncio.Event()   # run() ended; `_stepped`: with my result (late peers take only such a round's)
        self._stepped = False
        self._stream_of: dict[int, int] = {}  # sender -> number of its newest stream: only that one may exclude it
        # the averaged bytes received of each other part, in order (a prefix): a backup relays them if the reducer dies
        self._held: dict[int, list[bytes]] = {}
        # the bytes of each part a backup finished, as I took them (swarm.averaging.failover): late peers ask me for them
        self.backup_bytes: dict[int, list[bytes]] = {}
        # part -> set once my exchange of it is over, won or lost (at once for a member that sends nothing)
        self._settled = [asyncio.Event() for _ in group.peer_ids]
        self._exchanges: dict[int, asyncio.Task] = {}   # part -> my exchange of it (a backup may make me give it up)
        self._handed_over = False   # a backup took my part over before I stepped (swarm.averaging.failover)
        self._handed_news = asyncio.Event()   # set with _handed_over (see _take_own_back)
        # delivery confirmation (see _await_deliveries): members that said they hold my whole part, or that take it
        # through a backup; members with no stream open to me, since when; streams open per member
        self._delivered: set[int] = set()
        self._gave_up: set[int] = set()
        self._gone: dict[int, float] = {}
        self._open: dict[int, int] = {}
        self._delivery_news = asyncio.Event()   # set on each change of the above (see _await_deliveries)
        self._undialable: dict[int, float] = {}  # members a dial to failed, since when (see _watch_absent_senders)
        self._watch_news = asyncio.Event()
        self._own_final = False     # I step with my part as I averaged it: too late to hand it over
        self._stage = "starting"    # what run() awaits now: named when the round's deadline passes
        if not group.brings(me):
            for settled in self._settled:
                settled.set()
        self.failover = PartFailover(self) if parts is None else None   # a backup's round does not fail over again
        self.signer = signer if parts is None else None   # a backup's part is checked by nobody (its reducer is gone)
        self.hash_parts = hash_parts or self.signer is not None
        self.results = ResultCheck(group.round_id, group.peer_ids, me) if self.signer is not None and group.needs(me) else None
        self._statement: ResultStatement | None = None
        # with a signer, contributions are committed (swarm.averaging.commitments): the senders' commitments to my part,
        # and mine (part -> my commitment and encoded chunks, kept for auditors: swarm.averaging.audits)
        self._commitments: dict[int, Commitment] = {}
        self.claim_ceiling = claim_ceiling
        self.contributions: dict[int, tuple[Commitment, list[bytes]]] = {}
        # where my committed contributions go as they are made (an AuditStore: auditors may ask before my round ends)
        self.keep_contribution = keep_contribution
        self._excluded_ids = tuple(excluded)
        self._start = time.monotonic()
        self.stats.t0 = self._start
        self._add_own()

    def _add_own(self) -> None:
        """My own values go into my part's reductions (a column round, swarm.averaging.hierarchy, adds them later)."""
        me = self.group.my_index
        if self.local is not None and self.signer is not None and self.parts[me]:
            # committed like any sender's, and reduced as the others will decode it: an auditor recomputes my part from
            # the encoded bytes of every input, mine included
            _, encoded = self._contribution(me)
            for k, chunk in enumerate(self.parts[me]):
                self._reductions[k].add(decode_checked(self.layout.codecs[chunk.bucket], encoded[k], chunk.length),
                                        self.group.weights[me], sender=me)
                self._keep_input(k, me, self.group.weights[me], encoded[k])
        elif self.local is not None:
            for k, chunk in enumerate(self.parts[me]):
                self._reductions[k].add(self._slice(chunk), self.group.weights[me], sender=me)
                self._keep_input(k, me, self.group.weights[me], None)

    def _contribution(self, j: int) -> tuple[Commitment, list[bytes]]:
        """My encoded chunks of part j and my signed commitment (rounds with a signer). Every part is encoded and
        committed at the first call, under one signature (swarm.averaging.commitments says why); a resend sends the
        same bytes."""
        if not self.contributions:
            assert self.signer is not None
            me = self.group.my_index
            encoded = {j: [self.layout.codecs[c.bucket].encode((self._slice if j == me else self._outgoing)(c)) for c in chunks]
                       for j, chunks in enumerate(self.parts) if chunks}
            commitment = commit(self.signer, self.group.round_id, self.group.peer_ids[me], self.group.weights[me],
                                {self.label(j): chunks for j, chunks in encoded.items()})
            for part, chunks in encoded.items():
                self.contributions[part] = (commitment, chunks)
                if self.keep_contribution is not None:   # auditors may ask for it as soon as its reducer has reduced it
                    self.keep_contribution(commitment, self.label(part), chunks)
        return self.contributions[j]

    def _take_commitment(self, sender: int, message: swarm_pb2.PartChunk) -> None:
        """Keep a sender's commitment to my part if it is its own, for this round and part, at its agreed weight, one
        digest per chunk (its chunks are refused without one: _consume)."""
        if self.signer is None or sender in self._commitments or not message.commitment:
            return
        c = Commitment.unpack(message.commitment)
        group = self.group
        mine = c.chunks_of(self.label(group.my_index)) if c is not None else None
        if (c is not None and c.round_id == group.round_id and c.sender == group.peer_ids[sender]
                and c.weight == float(group.weights[sender]) and mine is not None
                and len(mine) == len(self.parts[group.my_index]) and c.valid()):
            self._commitments[sender] = c
            if self.claim_ceiling is not None and c.weight > self.claim_ceiling:
                self.stats.overclaims.append(bytes(message.commitment))
                self._exclude(sender, f"it signed a claim of {c.weight:.0f} samples, over the run's ceiling of {self.claim_ceiling:.0f}")

    @property
    def commitments(self) -> dict[int, Commitment]:
        """The senders' commitments to my part, by member index (rounds with a signer)."""
        return dict(self._commitments)

    def _inputs(self) -> bytes:
        """What my statement lists as reduced (result_statements.pack_inputs): every sender whose values are in my part,
        with the prefix of chunks that hold them, and the digest of my part's chunk layout. Empty (not auditable) if a
        sender's chunks are not a prefix (never seen: a sender is excluded for good, and chunks arrive in order)."""
        me, chunks = self.group.my_index, self.parts[self.group.my_index]
        inputs = []
        for s in sorted({s for arrived in self._arrived for s in arrived} | ({me} if self.local is not None else set())):
            count = len(chunks) if s == me else sum(1 for arrived in self._arrived if s in arrived)
            if s != me and not all(s in arrived for arrived in self._arrived[:count]):
                return b""
            commitment = self.contributions[me][0] if s == me else self._commitments.get(s)
            if commitment is None:
                return b""
            inputs.append(Input(s, count, commitment.digest()))
        # a robust reduction's radii let an auditor check my part without every input (swarm.averaging.clip_check)
        radii = self._radii if self._radii and all(r is not None and 0 <= r < FLOAT32_MAX for r in self._radii) else None
        return pack_inputs(layout_digest(self.layout, chunks), inputs, radii)  # type: ignore[arg-type]

    # -- helpers ---------------------------------------------------------------------------------------

    def label(self, i: int) -> int:
        """The part number member i's part goes by on the wire (its index, but for a backup's part: the dead reducer's)."""
        return self.part_labels.get(i, i)

    def _reply_limit(self) -> float:
        """How long to wait for a reducer's next averaged chunk (a hierarchical stage adds the stage it waits on)."""
        return reply_timeout(self.sender_timeout) + self.reply_slack

    def _alive_limit(self) -> float:
        """How long a reducer may stay silent on a member's stream: it heartbeats while it waits (HEARTBEAT_SLACK)."""
        return min(self._reply_limit(), self.sender_timeout + HEARTBEAT_SLACK + self.reply_slack)

    def _until_ready(self, k: int) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Heartbeats while my averaged chunk k is not ready (set by _try_finalize, or by retire() or hand_over())."""
        return self._beats_until(self._output_ready[k], k)

    async def _beats_until(self, event: asyncio.Event, k: int, deadline: float = float("inf")) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Heartbeats for my chunk k, one every third of the silence a reader allows, until `event` is set or the
        (monotonic) `deadline` passes."""
        every = max(0.5, self.sender_timeout / 3)
        while not event.is_set() and time.monotonic() < deadline:
            try:
                await asyncio.wait_for(event.wait(), min(every, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                yield heartbeat(self.label(self.group.my_index), k)

    def _slice(self, chunk: Chunk) -> torch.Tensor:
        assert self.local is not None
        return self.local[chunk.bucket][chunk.start : chunk.start + chunk.length]

    def _outgoing(self, chunk: Chunk) -> torch.Tensor:
        """The values this member sends for a chunk of another member's part (tests subclass this)."""
        return self._slice(chunk)

    def _keep_input(self, k: int, sender: int, weight: float, data: bytes | None) -> None:
        """Keep a contribution to chunk k of my part for a bundle (`_bundled`); `data` None: my own, encoded here."""
        inputs = self._bundled[k]
        if inputs is None or weight <= 0:
            return
        if data is None:
            chunk = self.parts[self.group.my_index][k]
            data = self.layout.codecs[chunk.bucket].encode(self._slice(chunk))
        inputs[sender] = data

    def _smaller_as_bundle(self, k: int, data: bytes) -> bytes:
        """My chunk k's result bytes: `data` (the result encoded), or the inputs with their coefficients in the result
        when that bundle is smaller (every member decodes it to the same values; the reducer too, see _try_finalize)."""
        inputs, self._bundled[k] = self._bundled[k], None
        mixture = self._reductions[k].mixture() if inputs else None
        if not mixture or not all(sender in inputs for sender, c in mixture.items() if c > 0):
            return data
        chunk = self.parts[self.group.my_index][k]
        codec = self.layout.codecs[chunk.bucket]
        relayed = codec.bundle([(c, inputs[sender]) for sender, c in sorted(mixture.items()) if c > 0], chunk.length)
        return relayed if len(relayed) < len(data) * max(self.bundle_preference, codec.bundle_preference) else data

    def _store_result(self, chunk: Chunk, values: torch.Tensor) -> None:
        if self.result is not None:
            self.result[chunk.bucket][chunk.start : chunk.start + chunk.length] = values

    def _try_finalize(self) -> None:
        """Average every chunk of my part whose live senders have all arrived, in order."""
        if self._retired.is_set() or self._handed_over:
            return
        live = self._expected - self._failed
        for k, chunk in enumerate(self.parts[self.group.my_index]):
            if self._outputs[k] is not None or not live <= self._arrived[k]:
                continue
            averaged = self._reductions[k].result()
            self._radii[k] = getattr(self._reductions[k], "tau", None)
            if averaged is None:
                self._outputs[k] = b""  # nobody contributed: an empty message tells receivers the part failed
            else:
                codec = self.layout.codecs[chunk.bucket]
                if getattr(codec, "sparse_result", False) and self._bundled[k]:
                    # the top of the average, no more non-zeros than my largest input (swarm.compression.topk)
                    averaged = codec.reduce_result(averaged, list(self._bundled[k].values()))
                data = codec.encode(averaged)
                data = self._smaller_as_bundle(k, data)
                self._outputs[k] = data
                # what the others decode from these bytes; the lossless codec gives back `averaged` bit for bit
                self._store_result(chunk, averaged if codec.name == "none" else codec.decode(data))
            self._count_clipping(getattr(self._reductions[k], "clipped_share", {}), chunk.length)
            self._reductions[k] = None  # type: ignore[call-overload]  # free memory
            self._output_ready[k].set()

    def hand_over(self) -> None:
        """A backup took me for dead before I stepped, and decides my part (swarm.averaging.failover): I stop averaging
        and serving it (members still receiving it get an error and ask the backup), and take the backup's result for
        it like every other member, whether or not my answer reached the backup."""
        self._handed_over = True
        self._delivery_news.set()
        self._handed_news.set()
        for ready in self._output_ready:
            ready.set()

    async def _take_own_back(self) -> dict[int, str]:
        """Once my part is handed over, take the backup's result for it (failover.recover), at once and beside my other
        parts: a slow member that asked only after its other parts had come found every backup's round over and gone
        (emulated dedloc-albert flat, a 5 Mbit/s reducer: "unknown or finished round" from all 17 backups)."""
        await self._handed_news.wait()
        assert self.failover is not None
        return await self.failover.recover([self.group.my_index])

    def _count_clipping(self, shares: dict[int, float], length: int) -> None:
        for sender, share in shares.items():
            totals = self._clip_totals.setdefault(sender, [0.0, 0.0])
            totals[0] += share * length
            totals[1] += length
        self.stats.clipped_share = {self.group.peer_ids[i]: total / length_ for i, (total, length_) in self._clip_totals.items() if length_}

    def _exclude(self, sender: int, why: str) -> None:
        if sender in self._failed:
            return
        logger.warning("round %s: excluding %s from my part: %s", self.group.round_id.hex()[:8], self.group.peer_ids[sender][-8:], why)
        self._failed.add(sender)
        self.stats.excluded.append(self.group.peer_ids[sender])
        self._try_finalize()

    # -- reducer side: one stream per sender ------------------------------------------------------------

    async def serve(self, first: swarm_pb2.PartChunk, requests: AsyncIterator[swarm_pb2.PartChunk], remote: PeerID) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Handle one sender's stream for my part: consume its chunks, stream back averaged chunks."""
        group = self.group
        try:
            sender = group.peer_ids.index(str(remote))
        except ValueError:
            if first.fetch:   # a peer that came too late for the group takes its result (swarm.averaging.late)
                async for reply in self._serve_latecomer(first, requests):
                    yield reply
                return
            yield swarm_pb2.PartChunk(error="not a member of this round")
            return
        if first.fetch and self.failover is not None and (first.part != self.label(group.my_index) or first.resend):
            # another member's part: a backup asks what I hold of it, or a member asks me, its backup, to finish it;
            # or my own part: a backup that took me for dead asks what I averaged of it
            async for reply in self.failover.serve(first, requests, sender):
                yield reply
            return
        if first.fetch:
            async for reply in self._serve_fetch(first, requests, sender):
                yield reply
            return
        if first.part != self.label(group.my_index) or sender not in self._expected:
            yield swarm_pb2.PartChunk(error="wrong part or role")
            return
        self._take_commitment(sender, first)
        stream = self._new_stream(sender)
        consumer = asyncio.create_task(self._consume(sender, first, requests, stream))
        carried = 0  # bytes this stream carried so far
        self._opened(sender)
        try:
            for k in range(len(self.parts[group.my_index])):
                async for beat in self._until_ready(k):
                    if group.needs(sender):
                        yield beat
                data = self._outputs[k]
                if not data or self._handed_over:
                    yield swarm_pb2.PartChunk(error="part has no contributions" if data == b"" else
                                              "part handed to a backup" if self._handed_over else "part not averaged")
                    return
                if group.needs(sender):
                    self.stats.bytes_sent += len(data)
                    yield swarm_pb2.PartChunk(part=self.label(group.my_index), chunk=k, data=data)
                    self.stats.taken(self.stats.output_log, carried, len(data))
                    carried += len(data)
            if self.signer is not None and group.needs(sender):
                yield self._statement_message(self._own_statement())
            # Read the sender's last word (it holds the part, see _await_deliveries) and end-of-stream before closing:
            # closing a stream with unread input resets it, which can destroy the last averaged chunk still in flight.
            await asyncio.wait_for(asyncio.shield(consumer), self._reply_limit())
        except asyncio.TimeoutError:
            pass
        finally:
            self._closed(sender)   # first: the handler's task may be cancelled while the consumer ends (a reset stream)
            await self._end_stream(sender, stream, consumer)

    def _own_statement(self) -> ResultStatement:
        """My signed statement of my part's averaged bytes (signed once: every member gets the same bytes)."""
        if self._statement is None:
            digest = hashlib.sha256()
            for data in self._outputs:
                digest.update(data or b"")
            assert self.signer is not None
            self._statement = sign_statement(self.signer, self.group.round_id, self.label(self.group.my_index),
                                             self.group.peer_ids[self.group.my_index], digest.digest(), self._inputs())
        return self._statement

    def _statement_message(self, statement: ResultStatement) -> swarm_pb2.PartChunk:
        """The message after a part's last chunk that carries its reducer's statement (chunk = the part's length)."""
        return swarm_pb2.PartChunk(part=self.label(self.group.my_index), chunk=len(self.parts[self.group.my_index]),
                                   data=statement.pack())

    def _check_statement(self, j: int, reply: swarm_pb2.PartChunk) -> str | None:
        """Keep reducer j's statement of the part I received (ResultCheck.hold); else say what is wrong with it."""
        assert self.results is not None
        if reply.error or reply.chunk != len(self.parts[j]):
            return "sent no result statement"
        statement = ResultStatement.unpack(reply.data)
        if statement is None or not statement.valid():
            return "sent a malformed or unsigned result statement"
        digest = self._part_hashers[j].digest() if j in self._part_hashers else b""
        if (statement.round_id, statement.part, statement.reducer, statement.digest) != (
                self.group.round_id, self.label(j), self.group.peer_ids[j], digest):
            return "signed a result other than the bytes it sent"
        self.results.hold(j, statement)
        return None

    def _new_stream(self, sender: int) -> int:
        self._stream_of[sender] = self._stream_of.get(sender, 0) + 1
        return self._stream_of[sender]

    async def _end_stream(self, sender: int, stream: int, consumer: asyncio.Task) -> None:
        """The stream is over: end its consumer (cancelled and awaited, so no task outlives its stream)."""
        if consumer.done():
            return
        consumer.cancel()
        while not consumer.done():
            # asyncio.wait_for (3.11) swallows a cancel when its read completes at the same moment: the consumer then
            # went on to wait for the member's last word, and this stream's handler hung (seen in test_reducer_failover)
            await asyncio.wait({consumer}, timeout=0.1)
            consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        # The stream closed under us (reset, or the sender gave it up): chunks it did not deliver will not come,
        # so average them without it instead of waiting for the round's deadline (unless it resumed on a newer one).
        if self._stream_of.get(sender) == stream and any(sender not in arrived for arrived in self._arrived):
            self._exclude(sender, "stream closed before all its chunks arrived")

    def _lacks(self, sender: int) -> int | None:
        """The first chunk of my part still waiting for this sender's values, or None when none is."""
        if self._retired.is_set() or sender not in self._expected or sender in self._failed:
            return None
        return next((k for k, arrived in enumerate(self._arrived) if sender not in arrived), None)

    async def _serve_fetch(self, first: swarm_pb2.PartChunk, requests: AsyncIterator[swarm_pb2.PartChunk], sender: int) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Stream my averaged chunks from `first.chunk` on to a member whose first stream broke.

        If that stream died before its chunks reached me (a reset as it opened, say), ask for them on this one
        (`resend`): else the part would wait sender_timeout for a sender that is alive and willing.
        """
        group = self.group
        count = len(self.parts[group.my_index])
        if first.part != self.label(group.my_index) or not group.needs(sender) or not 0 <= first.chunk < count:
            yield swarm_pb2.PartChunk(error="bad fetch")
            return
        lacking = self._lacks(sender)
        self._opened(sender)
        if lacking is None:
            try:
                yield heartbeat(self.label(group.my_index), first.chunk)  # I am alive (see FETCH_ACK_FLOOR)
                failed = False
                async for reply in self._replay(first.chunk, count):
                    yield reply
                    failed = bool(reply.error)
                    if failed:
                        break
                if failed:
                    await drain(requests, self.sender_timeout)  # its end-of-stream (see serve), after an error too (see drain)
                else:
                    await asyncio.wait_for(self._hear_last_word(sender, requests), self._reply_limit())
            except asyncio.TimeoutError:
                pass
            finally:
                self._closed(sender)
            return
        self._take_commitment(sender, first)
        stream = self._new_stream(sender)
        consumer = asyncio.create_task(self._consume(sender, None, requests, stream, start=lacking))
        try:
            yield swarm_pb2.PartChunk(part=self.label(group.my_index), chunk=lacking, resend=True)
            async for reply in self._replay(first.chunk, count):
                yield reply
                if reply.error:
                    return
            await asyncio.wait_for(asyncio.shield(consumer), self._reply_limit())
        except asyncio.TimeoutError:
            pass
        finally:
            self._closed(sender)   # first: the handler's task may be cancelled while the consumer ends (a reset stream)
            await self._end_stream(sender, stream, consumer)

    async def _serve_latecomer(self, first: swarm_pb2.PartChunk, requests: AsyncIterator[swarm_pb2.PartChunk]) -> AsyncIterator[swarm_pb2.PartChunk]:
        """Stream an averaged part to a peer outside the group (it brings nothing, it only takes the result): my own,
        or another member's part as I received it whole (its reducer died, failed its round or is at its limit: a
        backup's bytes or the reducer's, whichever every member stepped with). At most MAX_LATECOMER_FETCHES such
        streams per round: each costs this member the part's bytes once more."""
        j = first.part
        if not 0 <= j < len(self.parts) or not 0 <= first.chunk < len(self.parts[j]):
            yield swarm_pb2.PartChunk(error="bad fetch")
            return
        count = len(self.parts[j])
        cost = self._part_wire_bytes(j)
        if self._latecomer_bytes + cost > self._latecomer_budget():
            # said apart from a bad fetch: at 64 toy peers on 2 cores most "bad fetch" refusals of late peers were this
            yield swarm_pb2.PartChunk(error=f"late peers' fetches of this part are at their limit ({self._latecomer_budget() / 1e6:.1f} MB)")
            return
        self._latecomer_bytes += cost
        # only the result of a round I stepped with: one that failed here (past its deadline, say) may be one that no
        # member steps with, and a late peer that took it would hold parameters nobody else has. Until my round is
        # over, heartbeats: a real model's round outlasts the late peer's silence limit (swarm.averaging.late), and
        # without them every late peer of the emulated hybrid run at 10M values gave up before the first chunk
        async for beat in self._beats_until(self._over, first.chunk, deadline=time.monotonic() + self.group.timeout):
            yield beat
        if not self._stepped:
            yield swarm_pb2.PartChunk(error="round failed here")
            await drain(requests, self.sender_timeout)
            return
        if j == self.group.my_index:
            async for reply in self._replay(first.chunk, count, heartbeats=False):
                yield reply
                if reply.error:
                    break
        else:
            held = self.part_bytes(j) or self.backup_bytes.get(j)
            if held is None:
                yield swarm_pb2.PartChunk(error="part not held here")
            for k in range(first.chunk, len(held or ())):
                self.stats.bytes_sent += len(held[k])
                yield swarm_pb2.PartChunk(part=j, chunk=k, data=held[k])
        await drain(requests, self.sender_timeout)  # its end-of-stream (see serve), after an error too (see drain)

    def _part_wire_bytes(self, j: int) -> int:
        return sum(self.layout.codecs[c.bucket].payload_bytes(c.length) for c in self.parts[j])

    def _latecomer_budget(self) -> int:
        """Bytes of parts this member serves late peers in one round (see MAX_LATECOMER_FETCHES)."""
        own = self._part_wire_bytes(self.group.my_index)
        return max(MAX_LATECOMER_FETCHES * own, self.layout.wire_bytes(), LATECOMER_FLOOR_BYTES)

    async def _replay(self, start: int, count: int, heartbeats: bool = True) -> AsyncIterator[swarm_pb2.PartChunk]:
        """My averaged chunks from `start` on, each once ready; heartbeats while one is not (a member's fetch; a
        latecomer's reader, swarm.averaging.late, expects chunks only)."""
        group = self.group
        for k in range(start, count):
            async for beat in self._until_ready(k):
                if heartbeats:
                    yield beat
            data = self._outputs[k]
            if not data or self._handed_over:  # never averaged (the round ended first), nobody contributed, or a backup has it
                yield swarm_pb2.PartChunk(error="part not averaged")
                return
            self.stats.bytes_sent += len(data)
            yield swarm_pb2.PartChunk(part=self.label(group.my_index), chunk=k, data=data)

    async def _consume(self, sender: int, first: swarm_pb2.PartChunk | None, requests: AsyncIterator[swarm_pb2.PartChunk],
                       stream: int, start: int = 0) -> None:
        """Add one stream's chunks (from `start` on) to my part; a chunk this sender already delivered on another
        stream is read and dropped. A stream that fails excludes the sender unless a newer one replaced it."""
        chunks = self.parts[self.group.my_index]
        weight = self.group.weights[sender]
        expected_k = start
        message: swarm_pb2.PartChunk | None = first

        def exclude(why: str) -> None:
            if self._stream_of.get(sender) == stream:
                self._exclude(sender, why)

        try:
            while expected_k < len(chunks):
                if message is None:
                    message = await asyncio.wait_for(anext(requests), self.sender_timeout)
                if message.received or message.gave_up:
                    # its last word before all its chunks: it gave my part up, or it holds the average without its
                    # remaining values (excluded as a sender): either way no more values come on this stream
                    self._last_word(sender, message)
                    exclude("stopped sending: " + ("gave the part up" if message.gave_up else "holds the part"))
                    return
                if message.chunk != expected_k:
                    raise ProtocolError(f"chunk {message.chunk} out of order (expected {expected_k})")
                chunk = chunks[expected_k]
                data = message.data  # protobuf copies a bytes field at each access
                self.stats.bytes_received += len(data)
                self.stats.receive_log.append((time.monotonic() - self._start, len(data)))
                if self.signer is not None:   # committed rounds: only the bytes its signed commitment names
                    commitment = self._commitments.get(sender)
                    if commitment is None:
                        raise ProtocolError("no valid commitment to its values")
                    if not commitment.holds(self.label(self.group.my_index), expected_k, data):
                        raise ProtocolError(f"chunk {expected_k} differs from its commitment")
                values = decode_checked(self.layout.codecs[chunk.bucket], data, chunk.length)
                if sender not in self._failed and sender not in self._arrived[expected_k] and self._reductions[expected_k] is not None:
                    self._reductions[expected_k].add(values, weight, sender=sender)
                    self._keep_input(expected_k, sender, weight, data)
                    self._arrived[expected_k].add(sender)
                    self._try_finalize()
                expected_k += 1
                message = None
        except StopAsyncIteration:
            exclude("stream ended early")
        except asyncio.TimeoutError:
            exclude(f"no data for {self.sender_timeout:.1f}s")
        except ProtocolError as e:
            exclude(f"bad data: {e}")
            if self.group.peer_ids[sender] not in self.stats.bad_data:
                self.stats.bad_data.append(self.group.peer_ids[sender])   # an honest peer's code never sends it
        except asyncio.CancelledError:
            raise
        except Exception as e:
            exclude(f"{type(e).__name__}: {e}")
        else:
            # all its chunks are in: then its last word once it holds my part (no time limit here: serve bounds it)
            await self._hear_last_word(sender, requests)

    async def _watch_absent_senders(self) -> None:
        """Exclude senders that never opened their stream to me within sender_timeout, and members I failed to dial
        (_unreachable) that did not open one within UNDIALABLE_GRACE of that: a dead member's port refuses at once, so
        its absence costs the grace, not the silence limit (which follows the vector and the measured rates: at 64
        peers with 2 MB vectors on a starved host it was 68 s, waited out by a subgroup whose dead reducer every member
        had failed to dial at once). A live member cut off from me only loses its values in my part."""
        until = time.monotonic() + self.sender_timeout
        while True:
            now = time.monotonic()
            for i in [i for i, t in self._undialable.items() if now >= t + UNDIALABLE_GRACE]:
                del self._undialable[i]
                self._absent(i, "a dial to it failed, and it did not connect")
            if now >= until:
                break
            self._watch_news.clear()
            wake = min([until] + [t + UNDIALABLE_GRACE for t in self._undialable.values()])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._watch_news.wait(), wake - now)
        for sender in self._expected - self._failed:
            if not any(sender in arrived for arrived in self._arrived) and self.parts[self.group.my_index]:
                self._exclude(sender, "never connected")
        for sender in self._expected:
            if sender not in self._open and sender not in self._delivered | self._gave_up:
                self._gone.setdefault(sender, time.monotonic() - self._gone_grace())   # cannot be receiving my part
                self._delivery_news.set()

    def _unreachable(self, i: int) -> None:
        """A dial to member i failed (swarm.averaging.streams.dial_failed): unless it opens a stream to me within
        UNDIALABLE_GRACE, it is gone (see _watch_absent_senders)."""
        if i not in self._open:
            self._undialable.setdefault(i, time.monotonic())
            self._watch_news.set()

    def _absent(self, i: int, why: str) -> None:
        """Member i has no stream open to me and will not open one: my part is averaged without its missing values, and
        it counts as gone for delivery confirmation (it cannot be receiving my part)."""
        if i in self._open:
            return
        if self._lacks(i) is not None:
            self._exclude(i, why)
        if self.group.needs(i) and i not in self._delivered | self._gave_up:
            self._gone.setdefault(i, time.monotonic() - self._gone_grace())
            self._delivery_news.set()

    # -- delivery confirmation: a reducer steps with its part once every member that needs it holds it ----------

    def _gone_grace(self) -> float:
        """How long a member whose streams to me all ended without its last word may take to open a new one: one
        whose stream broke fetches at once (FETCH_ACK_FLOOR is its own patience)."""
        return max(FETCH_ACK_FLOOR, self.sender_timeout)

    def _opened(self, sender: int) -> None:
        self._open[sender] = self._open.get(sender, 0) + 1
        self._gone.pop(sender, None)
        self._delivery_news.set()

    def _closed(self, sender: int) -> None:
        self._open[sender] -= 1
        if not self._open[sender]:
            del self._open[sender]
            self._note_gone(sender)

    def _note_gone(self, sender: int) -> None:
        if sender not in self._open and sender not in self._delivered | self._gave_up:
            self._gone.setdefault(sender, time.monotonic())
            self._delivery_news.set()

    async def _hear_last_word(self, sender: int, requests: AsyncIterator[swarm_pb2.PartChunk]) -> None:
        """Read a member's stream to its end, noting its last word on my part."""
        try:
            async for message in requests:
                self._last_word(sender, message)
        except Exception:   # a broken stream says nothing: the member fetches again, or is gone (_closed)
            pass

    def _last_word(self, sender: int, message: swarm_pb2.PartChunk) -> None:
        if message.received:
            self._delivered.add(sender)
            self._delivery_news.set()
        elif message.gave_up:
            self._gave_up.add(sender)
            self._delivery_news.set()
            if not self._own_final and not self._handed_over and not self._retired.is_set() and self.failover is not None:
                # it takes my part through a backup: so do I, so that what I step with is what it steps with
                logger.info("round %s: %s gave my part up for a backup; handing it over", self.group.round_id.hex()[:8],
                            self.group.peer_ids[sender][-8:])
                self.hand_over()

    def _undelivered(self) -> set[int]:
        """Members that need my part and may still be receiving it (no last word, and not gone for the grace)."""
        group, now = self.group, time.monotonic()
        settled = self._delivered | self._gave_up | {i for i, t in self._gone.items() if now - t >= self._gone_grace()}
        return {i for i in self._expected if group.needs(i)} - settled

    async def _await_deliveries(self) -> None:
        """Before I step with my part as I averaged it, wait until every member that needs it holds it (its last word
        on its request stream), gave it up for a backup (then I hand it over: _last_word), or has no stream open to
        me for the grace (dead, or its round ended). A reducer that stepped while a member was still receiving
        could not follow if that member then took it for dead: a backup that cannot hear the reducer averages the
        part again, and the reducer alone would hold other bytes. Within the round's deadline (the caller's scope)."""
        grace = self._gone_grace()
        while not self._handed_over:
            pending = self._undelivered()
            if not pending:
                return
            # woken by the next last word or stream change (not polled: a poll cost each round up to its period,
            # ~25 ms on average, a quarter of a tiny model's round), or when a gone member's grace runs out
            self._delivery_news.clear()
            now = time.monotonic()
            wait = min([DELIVERY_RECHECK] + [self._gone[i] + grace - now for i in pending if i in self._gone])
            try:
                await asyncio.wait_for(self._delivery_news.wait(), max(wait, 0.0) + 1e-3)
            except TimeoutError:
                pass

    # -- sender side: one stream per other reducer ------------------------------------------------------

    async def _exchange_settled(self, j: int) -> None:
        try:
            await self._exchange(j)
        finally:
            self._settled[j].set()

    async def _exchange(self, j: int, fetch_first: bool = False) -> None:
        """Send my chunks of part j to reducer j and receive the averaged part back.

        When the reply stream breaks before the whole part is back, ask reducer j for the rest (FETCH_RETRIES) on a
        new stream, and send again the chunks it says it lacks (`resend`). Raises when the part cannot be had;
        `_lost[j]` says why. `fetch_first`: open with a fetch (a backup asks for my chunks with `resend` if it needs
        them, swarm.averaging.failover).
        """
        chunks = self.parts[j]
        if not chunks:
            return
        group = self.group
        me = group.my_index
        peer = PeerID.from_base58(group.peer_ids[j])
        sizes: list[int] = []
        self.stats.streams += 1
        # my last word on the part, the last message of the open request stream (see _await_deliveries): True once I
        # hold it whole, False when I take it through a backup instead; `said` once it went out
        verdict: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        said = asyncio.Event()

        async def _last_word() -> swarm_pb2.PartChunk:
            holds = await asyncio.shield(verdict)   # a closed stream's writer is cancelled: not the shared verdict
            return swarm_pb2.PartChunk(part=self.label(j), chunk=len(chunks), received=holds, gave_up=not holds)

        committed = self._contribution(j) if self.signer is not None else None

        def encoded(k: int) -> bytes:
            return committed[1][k] if committed is not None else self.layout.codecs[chunks[k].bucket].encode(self._outgoing(chunks[k]))

        async def _requests() -> AsyncIterator[swarm_pb2.PartChunk]:
            carried = 0
            for k, chunk in enumerate(chunks):
                if verdict.done():
                    break
                data = encoded(k)
                sizes.append(len(data))
                self.stats.bytes_sent += len(data)
                self.stats.own_bytes += len(data)
                msg = swarm_pb2.PartChunk(part=self.label(j), chunk=k, data=data)
                if k == 0:
                    msg.round_id, msg.weight, msg.sender = group.round_id, group.weights[me], group.peer_ids[me]
                    if committed is not None:
                        msg.commitment = committed[0].pack()
                    self._sign(msg)
                yield msg
                self.stats.taken(self.stats.send_log, carried, len(data))
                carried += len(data)
            yield await _last_word()
            said.set()

        async def _fetch(start: int, resend_from: asyncio.Future[int | None]) -> AsyncIterator[swarm_pb2.PartChunk]:
            msg = swarm_pb2.PartChunk(round_id=group.round_id, part=self.label(j), chunk=start, sender=group.peer_ids[me], fetch=True)
            if committed is not None:   # the reducer may have missed my first stream's (it asks a resend then)
                msg.commitment = committed[0].pack()
            self._sign(msg)
            yield msg
            lacking = await resend_from  # the reducer's `resend`, or None once the part is back without one
            for k in range(lacking if lacking is not None else len(chunks), len(chunks)):
                data = encoded(k)
                self.stats.bytes_sent += len(data)
                self.stats.resent_chunks += 1
                yield swarm_pb2.PartChunk(part=self.label(j), chunk=k, data=data)
            yield await _last_word()
            said.set()

        received = 0
        held = self._held.setdefault(j, [])
        for attempt in range(FETCH_RETRIES + 1):
            stream = None
            retrying = False   # this stream broke and a fetch follows: no last word on it
            resend_from: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            # My first stream of the part: the reducer's service answers at once with a heartbeat (AggregateService),
            # and heartbeats go on while it waits (HEARTBEAT_SLACK). A fetch after a broken stream goes to a reducer
            # that may have died: it must answer at once too (FETCH_ACK_FLOOR). A failover's fetch (fetch_first) waits
            # for the backup's decision: the reply limit.
            fresh = attempt == 0 and not fetch_first
            first_limit = (self._alive_limit() if fresh else self._reply_limit() if fetch_first
                           else min(self._reply_limit(), max(FETCH_ACK_FLOOR, self.sender_timeout)))
            heard = False   # the reducer answered on this stream: from then on it heartbeats while it waits
            limit = first_limit
            try:
                requests = _requests() if fresh else _fetch(received, resend_from)
                stream = await asyncio.wait_for(ReplyStream.open(self.p2p, peer, requests), first_limit)
                self._undialable.pop(j, None)   # reachable after all
                while received < len(chunks):
                    reply = await stream.next(limit)
                    heard, limit = True, self._alive_limit()
                    if is_heartbeat(reply):
                        continue   # alive: an acknowledgement of my stream or fetch, or a heartbeat while it waits
                    if reply.error:
                        self._lost[j] = f"reducer {group.peer_ids[j][-8:]}: {reply.error}"
                        raise RoundFailed(self._lost[j])
                    if reply.resend:
                        if (attempt == 0 and not fetch_first) or resend_from.done() or not 0 <= reply.chunk < len(chunks):
                            self._lost[j] = f"reducer {group.peer_ids[j][-8:]} sent an unexpected resend of chunk {reply.chunk}"
                            raise ProtocolError(self._lost[j])
                        logger.info("round %s: part %d: the reducer lacks my chunks from %d on; sending them again",
                                    group.round_id.hex()[:8], j, reply.chunk)
                        resend_from.set_result(reply.chunk)
                        continue
                    if reply.chunk != received:
                        self._lost[j] = f"reducer {group.peer_ids[j][-8:]} sent chunk {reply.chunk}, expected {received}"
                        raise ProtocolError(self._lost[j])
                    chunk = chunks[received]
                    data = reply.data  # protobuf copies a bytes field at each access
                    self.stats.bytes_received += len(data)
                    now = time.monotonic() - self._start
                    self.stats.receive_log.append((now, len(data)))
                    if attempt == 0 and received < len(sizes):  # the average of chunk k proves our chunk k arrived
                        self.stats.ack_log.append((now, sizes[received]))
                    self._store_result(chunk, decode_checked(self.layout.codecs[chunk.bucket], data, chunk.length))
                    if self.hash_parts:
                        self._part_hashers.setdefault(j, hashlib.sha256()).update(data)
                    held.append(data)
                    received += 1
                if not resend_from.done():
                    resend_from.set_result(None)  # nothing to send again: end the request stream
                if self.results is not None and attempt == 0 and not fetch_first:
                    # the whole part came on the first stream: its reducer's signed statement follows the last chunk
                    statement = await stream.next(reply_timeout(self.sender_timeout))
                    problem = self._check_statement(j, statement)
                    if problem is not None:
                        self._lost[j] = f"reducer {group.peer_ids[j][-8:]} {problem}"
                        raise ProtocolError(self._lost[j])
                verdict.set_result(True)   # the reducer steps with its part once every member said so
                try:  # let the reducer close first, so neither side resets a stream with data in flight
                    await stream.next(1.0)
                except (StopAsyncIteration, asyncio.TimeoutError, Exception):
                    pass
                return
            except (RoundFailed, ProtocolError):
                raise
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a broken, reset or silent stream, or a dial that failed
                why = "stream ended early" if isinstance(e, StopAsyncIteration) else (
                    f"no reply for {limit:.1f}s" if isinstance(e, asyncio.TimeoutError) else f"{type(e).__name__}: {e}")
                self._lost[j] = f"reducer {group.peer_ids[j][-8:]}: {why} after {received}/{len(chunks)} chunks" + (
                    f" ({attempt} fetches)" if attempt else "")
                if stream is None and dial_failed(e):
                    # gone unless it connects to me soon (_watch_absent_senders); one fetch still dials it again below: a
                    # peer back from a network cut is in p2pd's dial backoff until its own stream to me connects us
                    self._unreachable(j)
                if isinstance(e, asyncio.TimeoutError) and (heard or fresh) or not (heard or fresh or fetch_first):
                    # it stopped its heartbeats, never answered my first stream, or did not acknowledge a fetch: dead or
                    # frozen (a SIGSTOPped process's p2pd lives on, so nothing resets): no more fetches, failover now
                    break
                if attempt < FETCH_RETRIES:
                    logger.info("round %s: part %d: %s; asking for the rest", group.round_id.hex()[:8], j, self._lost[j])
                    self.stats.refetches += 1
                    retrying = True
            finally:
                if not resend_from.done():
                    resend_from.set_result(None)
                if stream is not None:
                    try:
                        if not retrying and not verdict.done():
                            # I leave the part (given up, failed or cancelled): the reducer hands it over (_last_word)
                            verdict.set_result(False)
                            with contextlib.suppress(asyncio.TimeoutError):
                                await asyncio.wait_for(said.wait(), LAST_WORD_FLUSH)
                    finally:
                        await stream.close()
        raise RoundFailed(self._lost[j])

    async def _take_elsewhere(self, lost: list[int]) -> list[int]:
        """Of the parts lost here (after failover), those still lost once other rounds that hold them were asked
        (a hierarchical subgroup's, swarm.averaging.hierarchy.SubgroupRound); a flat round has none to ask."""
        return lost

    def backup_round(self, j: int, backup: int, silence: float, timeout: float) -> "AllReduceRound":
        """This member's side of the round in which `backup` averages part j again (its reducer was lost): the same
        group and weights, part j's chunks as the backup's only part (named j on the wire), reducer j's contribution
        ignored, the averaged values written into this member's result."""
        parts: list[list[Chunk]] = [[] for _ in self.group.peer_ids]
        parts[backup] = self.parts[j]
        return AllReduceRound(
            self.p2p, dataclasses.replace(self.group, timeout=timeout), self.layout, self.local,
            chunk_elements=self.chunk_elements, sender_timeout=silence, reduction=self.reduction, authorizer=self.authorizer,
            excluded={*self._excluded_ids, self.group.peer_ids[j]}, parts=parts, part_labels={backup: j}, result=self.result,
            hash_parts=self.hash_parts)

    def _sign(self, msg: swarm_pb2.PartChunk) -> None:
        if self.authorizer is not None:
            self.authorizer.sign_message(msg, self.p2p.peer_id)

    def _waiting_for(self, tasks: dict[int, asyncio.Task]) -> str:
        """What the round still waited for when its deadline passed: the stage of run(), the parts that did not arrive
        (a part a backup finished is not one), and for my own part, the senders whose chunks are missing."""
        group = self.group
        # the exchanges have been cancelled by now: a part is missing unless it arrived or a backup finished it
        pending = [j for j, task in tasks.items() if (not task.done() or task.cancelled() or task.exception() is not None)
                   and j not in self.stats.recovered_parts]
        detail = [f"part {j} from {group.peer_ids[j][-8:]}" + (f" ({self._lost[j]})" if j in self._lost else "") for j in pending]
        senders = [i for i in sorted(self._expected) if self._lacks(i) is not None]
        if senders and self._stage == "my own part's contributions":
            detail.append("my part's chunks from " + ", ".join(group.peer_ids[i][-8:] for i in senders))
        return f"waiting for {self._stage}" + (f": still missing {'; '.join(detail)}" if detail else "")

    async def run(self) -> list[torch.Tensor] | None:
        group, me = self.group, self.group.my_index
        tasks: dict[int, asyncio.Task] = {}
        watcher = asyncio.create_task(self._watch_absent_senders())
        own = asyncio.gather(*(e.wait() for e in self._output_ready))
        taking_back = [asyncio.create_task(self._take_own_back())] if self.failover is not None and group.needs(me) else []
        meter = self._meter = LinkMeter()
        meter.start()
        stalls = self._stalls = StallWatch()
        # from the round's start: a process stopped between forming the round and running it (seen in swarm chaos: a
        # SIGSTOP right there) was taken for dead by backups all the same, and stepped 35 s later with their results
        stalls.start(since=self._start if self.stall_from_start else None)
        try:
            async with asyncio.timeout(group.timeout):
                self._try_finalize()  # a part with no other senders is ready at once
                if group.brings(me):
                    tasks = {j: asyncio.create_task(self._exchange_settled(j)) for j in range(len(group.peer_ids)) if j != me}
                    self._exchanges = dict(tasks)
                self._stage = "the other parts"
                results = await asyncio.gather(*tasks.values(), return_exceptions=True)
                lost = []
                for j, outcome in zip(tasks, results):
                    if isinstance(outcome, BaseException):
                        self._lost.setdefault(j, str(outcome) or type(outcome).__name__)
                        lost.append(j)
                if lost and self.failover is not None:
                    # a lost part costs its delay, not the round: a backup finishes it, within the round's own deadline
                    # (the deadline is a promise to every member: tests/chaos/test_process_faults.py holds rounds to it)
                    self._stage = f"backups of parts {lost}"
                    failed = await self.failover.recover(lost)
                    self.stats.recovered_parts.extend(j for j in lost if j not in failed)
                    for j, why in failed.items():
                        self._lost[j] = f"{self._lost[j]}; failover: {why}"
                    lost = sorted(failed)
                if lost:
                    lost = await self._take_elsewhere(lost)
                for j in lost:
                    logger.warning("round %s: part %d missing: %s", group.round_id.hex()[:8], j, self._lost[j])
                    self.stats.missing_parts.append(j)
                self._stage = "my own part's contributions"
                await own  # my own part is averaged (the streams deliver it to the others)
                self._stage = "the averaged parts' last chunks"
                await self._drain_outputs()
                # both wait for the other members to finish their all-gather: side by side, the statement swap of a
                # round that checks results costs nothing beyond the wait every round has (it ran first, serially)
                checks = []
                if self.results is not None:
                    checks.append(self._compare_results())
                if self.failover is not None and self.parts[me]:
                    checks.append(self._await_deliveries())
                self._stage = "the members to hold my part" + (" and their result statements" if self.results is not None else "")
                await _all_or_none(checks)
                if self._handed_over and taking_back:
                    # a backup took me for dead and took my part over: I take its result like every other member (an
                    # auxiliary peer steps with nothing, and backups serve results only to members that need them)
                    self._stage = "the backup that took my part over"
                    failed = await taking_back[0]
                    if failed:
                        self._lost[me] = f"my part was handed to a backup; failover: {failed[me]}"
                        self.stats.missing_parts.append(me)
                    else:
                        self.stats.recovered_parts.append(me)
                # from here on I keep my part as I averaged it: a backup that asks now is told so (no await in between)
                self._own_final = True
                stood = stalls.longest()
                if stood >= self._reply_limit():
                    # a backup may have asked me what I hold meanwhile, and decided without my answer (stall_watch)
                    raise RoundFailed(f"this process stood still for {stood:.1f}s mid-round: what it holds may not be what "
                                      "the others step with")
        except TimeoutError:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
            raise RoundFailed(f"round did not finish within {time.monotonic() - self._start:.1f}s: {self._waiting_for(tasks)}") from None
        finally:
            # every task this round started ends with it (a pending task nobody awaits is destroyed by the GC)
            if self.results is not None:
                self.results.ready.set()   # members asking for my statements get what I hold
            started = [watcher, own, *taking_back, *tasks.values()]
            if self.failover is not None:
                started += self.failover.tasks_of_mine()
            for task in started:
                task.cancel()
            await asyncio.gather(*started, return_exceptions=True)
            await meter.stop()
            await stalls.stop()
            self._over.set()   # late peers waiting on it run only once run() has returned: nothing below awaits
            self.stats.finish(time.monotonic() - self._start, meter.rates(self.stats.bytes_sent, self.stats.bytes_received))
        self._record_part_hashes()
        if any(out == b"" for out in self._outputs) and not self._handed_over:
            self.stats.missing_parts.append(me)
            self._lost.setdefault(me, "my part has no contributions")
        if self.stats.missing_parts:
            missing = sorted(set(self.stats.missing_parts))
            raise RoundFailed(f"missing parts {missing}: " + "; ".join(f"{j}: {self._lost.get(j, '?')}" for j in missing))
        self._stepped = True
        return self.result

    async def _compare_results(self) -> None:
        """Swap statements with the other members that take the result, within the round's deadline (the caller's
        timeout scope); a part whose reducer equivocated and of which I hold a minority's bytes is lost to me."""
        assert self.results is not None and self.signer is not None
        group, me = self.group, self.group.my_index
        if self.parts[me] and all(self._outputs) and not self._handed_over:
            self.results.hold(me, self._own_statement())
        self.results.ready.set()
        # not the reducers whose part I had to take from a backup or lost: they are likely gone, and would cost the timeout
        gone = set(self.stats.missing_parts) | set(self.stats.recovered_parts)
        peers = [p for i, p in enumerate(group.peer_ids) if i != me and group.needs(i) and i not in gone]
        await exchange_statements(self.p2p, self.results, peers, RESULT_EXCHANGE_TIMEOUT)
        verdict = self.results.verdict()
        self.stats.proofs.extend((a.pack(), b.pack()) for a, b in verdict.proofs)
        for j, why in verdict.dropped.items():
            logger.warning("round %s: part %d dropped: %s", group.round_id.hex()[:8], j, why)
            self._lost[j] = why
            self.stats.missing_parts.append(j)

    def _record_part_hashes(self) -> None:
        """What this member received for each part, as sha256 of its averaged bytes (my own part: what I sent): members
        that compare them catch a reducer that sent different results to different members
        (swarm.averaging.result_hashes)."""
        if not self.hash_parts:
            return
        hashes = {j: h.hexdigest() for j, h in self._part_hashers.items() if j not in self.stats.missing_parts}  # whole parts only
        if self.parts[self.group.my_index] and all(self._outputs) and not self._handed_over:
            if self._statement is not None:   # it signed the same digest of the same bytes
                hashes[self.group.my_index] = self._statement.digest.hex()
            else:
                own = hashlib.sha256()
                for data in self._outputs:
                    own.update(data)  # type: ignore[arg-type]
                hashes[self.group.my_index] = own.hexdigest()
        self.stats.part_hashes = {self.group.peer_ids[j]: h for j, h in sorted(hashes.items())}

    def part_bytes(self, j: int) -> list[bytes] | None:
        """Part j's averaged chunks as I received them (my own: as I sent them), if I hold it whole (audits keep them)."""
        if j == self.group.my_index:
            return list(self._outputs) if self._outputs and all(self._outputs) and not self._handed_over else None  # type: ignore[arg-type]
        held = self._held.get(j, [])
        return list(held) if len(held) == len(self.parts[j]) and j not in self.stats.missing_parts else None

    def retire(self) -> None:
        """The round is over for this member: keep only what late fetches need (my part's averaged bytes). Streams
        still waiting for a chunk that will never be averaged are woken, and answer that it was not."""
        self._retired.set()
        for ready in self._output_ready:
            ready.set()
        if self.failover is not None:
            self.failover.retire()
        self.local, self.result = None, None
        self._reductions = [None] * len(self._reductions)  # type: ignore[list-item]
        self._bundled = [None] * len(self._bundled)

    async def _drain_outputs(self) -> None:
        # Give the streams a moment to flush the last averaged chunks before the round object goes away.
        await asyncio.sleep(0)


