"""Audits: members recompute reducers' parts from their committed inputs, and a reducer whose result is not what its
inputs reduce to is banned (issue 16's lying reducer).

A lying reducer sends every member the same wrong part, so the members' comparison of signed results
(swarm.averaging.result_exchange) sees nothing; only recomputing its work can. In a round that checks results every
sender committed to its chunks (swarm.averaging.commitments) and each reducer signed, with its result's digest, which
commitments it reduced and how many chunks of each (swarm.averaging.result_statements, `inputs`). After a round, each
member audits each other reducer's part with probability `audits_per_part / (members - 1)`, drawn from its own private
randomness: nobody, the reducer included, knows who will audit what, or can pick its auditors (an auditor chosen by a
public seed could be ground by the reducer's choice of its own bytes). The auditor draws AUDIT_CHUNKS of the part's
chunks (privately too) and:

1. takes those chunks of every listed contribution from its sender (its own from memory) and checks them: the
   commitment is the one the reducer listed (by digest), signed by its sender for this round, and every chunk hashes
   to the digest the commitment names. So a sender cannot show the auditor other bytes than the reducer accepted,
   and the reducer cannot have made one up;
2. reduces them again with the reducer's codecs and chunk sizes (whose digest the reducer signed)
   and robust mode's own reduction (swarm.averaging.robust.CenteredClipReduction), adding each sender's values to the
   chunks the reducer said held them;
3. compares each chunk with what the reducer sent, both as the codec decodes them: a relative distance above
   `tolerance(codec)` is a lie (1% for fp32 and fp16, more for coarser codecs). The reduction's float sums depend on the order in which contributions are added, which
   differs (arrival order at the reducer, member order here), by ~1e-7 of the norm; the codec's rounding of two
   nearly equal values by at most one step of it (fp16: ~1e-3 of an element). The harness's lying reducer adds noise of
   its part's norm (distance ~1).

An input nobody hands over (the reducer's own contribution to its own part, which only it holds: a liar refuses it;
a sender behind NAT, or gone) does not end the audit when its commitment is known (the auditor got the sender's
commitment with its contribution to the auditor's own part, or fetches it alone): the result is then checked as a
CenteredClip fixed point of the known inputs with the missing ones' weight as slack, at the radius the reducer signed
(swarm.averaging.clip_check says why that leaves a liar no more room than a byzantine sender has). Without the
commitment, or with the missing inputs holding half the weight, the audit is inconclusive and bans nobody: an honest
reducer is banned only on a recomputation from inputs its senders signed and it listed.

A finding travels as an accusation (swarm.averaging.bans): the reducer's signed statement, the part's chunk layout and
the chunks found wrong, pushed to the round's members at once and published in the DHT by the auditor, who keeps the
part's inputs and result for others to fetch (`AuditStore.pin`). Every peer that gets it audits those chunks itself,
asking the accuser for the inputs and the result, and bans the reducer only if its own recomputation finds the lie:
the evidence is self-certifying (signed commitments, a signed statement, bytes checked against their digests), so the
accuser's word counts for nothing and every honest peer that verifies reaches the same verdict.

What it costs: an audit fetches AUDIT_CHUNKS chunks from each of the part's other senders and reduces them once, off
the engine loop. At the default of 2 audits per part per round (engine.audits_per_part) a member runs about 2 audits a
round, so it downloads about 8 x (members - 2) chunks (2**17 values, 256 KB in fp16, each) whatever the model's size;
a part escapes audit for 3 rounds with probability about e**-6. Measured in benchmarks/README.md, "Audits".
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable, Sequence

import msgpack
import torch
from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2P, P2PContext, PeerID

from swarm.averaging.clip_check import check_without
from swarm.averaging.commitments import Commitment
from swarm.averaging.robust import CenteredClipReduction
from swarm.averaging.result_statements import Input, ResultStatement, unpack_inputs, unpack_radii
from swarm.averaging.streams import close_quietly, drain
from swarm.compression.codecs import decode_checked, get_codec
from swarm.compression.sparse import is_bundle, nonzeros, top_values
from swarm.errors import ProtocolError, describe
from swarm.net import records
from swarm.net.identity import MAX_PEER_ID_CHARS
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

__all__ = ["AUDIT_HANDLER", "AUDIT_TOLERANCE", "tolerance", "AuditStore", "AuditService", "PartAudit", "Finding", "audit_part",
           "recompute", "pack_layout", "unpack_layout", "pack_accusation", "unpack_accusation", "draw"]

AUDIT_HANDLER = "swarm.averaging.audit"
ACCUSE_HANDLER = "swarm.averaging.accuse"    # an auditor tells the round's members at once (they audit it themselves)
PUSH_TIMEOUT = 5.0
AUDIT_TOLERANCE = 0.01      # relative L2 distance between a chunk as sent and as recomputed (see the module docstring)
# Coarser codecs round a value that moved by float noise (another summation order) a whole step away: measured on
# random chunks in two orders, up to 0.005 of the norm at 4 bits (0.012 in a streaming DiLoCo run, where an honest
# reducer was banned at 0.01), 0.14 at 2 bits, 1e-4 at 8 bits. The harness's liar is ~1.0 away in every codec.
LOSSY_AUDIT_TOLERANCE = {"uniform8bit": 0.05, "quantile8bit": 0.05, "uniform4bit": 0.25, "uniform2bit": 0.5}


def tolerance(codec_name: str) -> float:
    """The relative distance above which a chunk recomputed in codec `codec_name` is a lie."""
    return LOSSY_AUDIT_TOLERANCE.get(codec_name, AUDIT_TOLERANCE)
# Rounds whose material a peer keeps for auditors: its own contributions (an encoded vector a round) and what audits
# fetched. Audits start as a round ends and accusations are pushed at once, so a few rounds suffice; more would hold
# that many vectors of a large model in memory.
KEEP_ROUNDS = 3
MAX_PINNED = 16             # rounds kept beyond that as evidence of this peer's accusations
MAX_SERVES = 64             # times one contribution or result is served
REQUEST_TIMEOUT = 10.0      # seconds a requester has to send its request on an audit stream
FETCH_TIMEOUT = 30.0        # seconds one contribution's or result's download may take
MAX_LAYOUT_CHUNKS = 16384   # chunks of one part (swarm.averaging.commitments.MAX_CHUNKS)
MAX_CODEC_NAME = 32
# Chunks of a part one audit recomputes, drawn at random (privately): each sender's commitment names every chunk's
# digest, so a sample can be checked alone. A part of a 10M-value model's round has ~20 chunks of 2**17 values; four
# cost an auditor a fifth of the inputs' bytes, and a reducer that lies in every chunk is caught as surely. One that
# lies in a share f of its chunks is caught by one audit with probability 1 - (1 - f)**4.
AUDIT_CHUNKS = 4
MAX_SAMPLE = 64
COMMITMENT_ONLY = 0xFFFFFFFF   # a request's only "index" when it asks for a contribution's commitment, not its chunks
MAX_ACCUSATION_BYTES = records.MAX_ACCUSATION_BYTES


def pack_layout(layout: Sequence[tuple[str, int]]) -> bytes:
    """A part's chunk layout (codec name, length per chunk) as its statement's digest covers it."""
    return msgpack.packb([[name, length] for name, length in layout])


def unpack_layout(data: bytes) -> list[tuple[str, int]] | None:
    try:
        fields = msgpack.unpackb(data, raw=False, max_str_len=MAX_CODEC_NAME, max_bin_len=0, max_array_len=MAX_LAYOUT_CHUNKS, max_map_len=0)
    except Exception:
        return None
    if not (isinstance(fields, list) and 0 < len(fields) <= MAX_LAYOUT_CHUNKS):
        return None
    layout = []
    for entry in fields:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], int)
                and not isinstance(entry[1], bool) and 0 < entry[1] <= 1 << 24):
            return None
        layout.append((entry[0], entry[1]))
    return layout


def pack_accusation(statement: ResultStatement, layout: Sequence[tuple[str, int]], holder: str, chunks: Sequence[int],
                    commitment: Commitment | None = None) -> bytes:
    """An accusation as published (swarm.averaging.bans): the reducer's signed statement, the part's chunk layout, the
    peer that holds the inputs and the result (the accuser: a hint where to fetch them, nothing more), the chunks
    found wrong (a verifier recomputes those), and, when the lie is that the reducer left its own contribution out of
    the inputs it signed, its commitment (which proves that contribution exists)."""
    return msgpack.packb([statement.pack(), pack_layout(layout), holder, list(chunks)] + ([commitment.pack()] if commitment else []))


def unpack_accusation(data: object) -> tuple[ResultStatement, list[tuple[str, int]], str, list[int], Commitment | None] | None:
    if not isinstance(data, bytes) or len(data) > MAX_ACCUSATION_BYTES:
        return None
    try:
        fields = msgpack.unpackb(data, raw=False, max_bin_len=MAX_ACCUSATION_BYTES, max_str_len=MAX_PEER_ID_CHARS,
                                 max_array_len=max(5, MAX_SAMPLE), max_map_len=0)
    except Exception:
        return None
    if not (isinstance(fields, list) and len(fields) in (4, 5) and isinstance(fields[0], bytes) and isinstance(fields[1], bytes)
            and isinstance(fields[2], str) and 0 < len(fields[2]) <= MAX_PEER_ID_CHARS and isinstance(fields[3], list)
            and 0 < len(fields[3]) <= MAX_SAMPLE and all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in fields[3])):
        return None
    statement, layout = ResultStatement.unpack(fields[0]), unpack_layout(fields[1])
    if statement is None or layout is None or any(k >= len(layout) for k in fields[3]):
        return None
    commitment = None
    if len(fields) == 5:
        commitment = Commitment.unpack(fields[4])
        if commitment is None:
            return None
    return statement, layout, fields[2], list(fields[3]), commitment


# ---------------------------------------------------------------------------------------------------
# What a peer keeps for auditors, and serves


@dataclass
class Material:
    """Chunks of one part of one round, by index (all of them, or an audit's sample): a contribution (with its sender's
    commitment) or a reducer's result."""
    chunks: dict[int, bytes]
    commitment: Commitment | None = None
    served: int = 0


class AuditStore:
    """Contributions and results of this peer's last KEEP_ROUNDS rounds, by (round id, part, digest): a contribution
    under its commitment's digest, a result under the digest its reducer signed. A round pinned as evidence is kept
    beyond that (MAX_PINNED of them)."""

    def __init__(self, keep_rounds: int = KEEP_ROUNDS):
        self.keep_rounds = keep_rounds
        self._rounds: OrderedDict[bytes, dict[tuple[int, bytes], Material]] = OrderedDict()
        self._pinned: OrderedDict[bytes, None] = OrderedDict()

    def _round(self, round_id: bytes) -> dict[tuple[int, bytes], Material]:
        if round_id not in self._rounds:
            self._rounds[round_id] = {}
            unpinned = [r for r in self._rounds if r not in self._pinned]
            for old in unpinned[: max(0, len(unpinned) - self.keep_rounds)]:
                del self._rounds[old]
        return self._rounds[round_id]

    def put_contribution(self, commitment: Commitment, part: int, chunks: Sequence[bytes] | dict[int, bytes]) -> None:
        """Keep a contribution (all its chunks, or some by index: an auditor's sample, merged with what is held)."""
        key = (part, commitment.digest())
        given = dict(chunks) if isinstance(chunks, dict) else dict(enumerate(chunks))
        held = self._round(commitment.round_id).get(key)
        if held is not None:
            held.chunks.update(given)
        else:
            self._round(commitment.round_id)[key] = Material(given, commitment)

    def put_result(self, round_id: bytes, part: int, digest: bytes, chunks: Sequence[bytes]) -> None:
        self._round(round_id)[(part, digest)] = Material(dict(enumerate(chunks)))

    def get(self, round_id: bytes, part: int, digest: bytes) -> Material | None:
        return self._rounds.get(round_id, {}).get((part, digest))

    def pin(self, round_id: bytes) -> None:
        """Keep this round's material as evidence (an accusation's inputs and result, which others fetch to verify it)."""
        self._pinned[round_id] = None
        while len(self._pinned) > MAX_PINNED:
            old, _ = self._pinned.popitem(last=False)
            self._rounds.pop(old, None)


def _request_data(digest: bytes, indices: Sequence[int] | None) -> bytes:
    """An audit request's `data`: the item's digest, then the chunk indices asked for (4-byte big-endian; none: all)."""
    return digest + b"".join(int(k).to_bytes(4, "big") for k in (indices or ()))


def _parse_request(data: bytes) -> tuple[bytes, list[int] | None] | None:
    """(digest, the chunks asked for: None all of them, [] only the commitment)."""
    if len(data) < 32 or (len(data) - 32) % 4 or (len(data) - 32) // 4 > MAX_SAMPLE:
        return None
    indices = [int.from_bytes(data[i:i + 4], "big") for i in range(32, len(data), 4)]
    if indices == [COMMITMENT_ONLY]:
        return data[:32], []
    return data[:32], indices or None


class AuditService:
    """Serves the store: a request names (round id, part, digest, the chunks wanted or all) and gets the material's
    commitment (if any) and the number of chunks that follow on the first message, then each chunk (its index in
    `chunk`); an unknown item or chunk gets an error. Anyone may ask (verifiers of an accusation are not members of
    the round); each item is served at most MAX_SERVES times."""

    def __init__(self, p2p: P2P, store: AuditStore, on_accusation: Callable[[bytes, str], None] = lambda accusation, source: None):
        self.p2p, self.store, self.on_accusation = p2p, store, on_accusation

    async def start(self) -> None:
        await self.p2p.add_protobuf_handler(AUDIT_HANDLER, self._handle, swarm_pb2.PartChunk, stream_input=True, stream_output=True)
        await self.p2p.add_protobuf_handler(ACCUSE_HANDLER, self._accused, BytesValue)

    async def _accused(self, request: BytesValue, context: P2PContext) -> BytesValue:
        """An accusation pushed by an auditor: queued for an audit here (bounded there), never trusted as such."""
        if len(request.value) <= MAX_ACCUSATION_BYTES:
            self.on_accusation(request.value, str(context.remote_id))
        return BytesValue()

    async def _handle(self, requests: AsyncIterator[swarm_pb2.PartChunk], context: P2PContext) -> AsyncIterator[swarm_pb2.PartChunk]:
        try:
            request = await asyncio.wait_for(anext(requests), REQUEST_TIMEOUT)
        except (StopAsyncIteration, asyncio.TimeoutError):
            return
        parsed = _parse_request(request.data)
        item = self.store.get(request.round_id, request.part, parsed[0]) if parsed is not None else None
        wanted = (parsed[1] if parsed[1] is not None else sorted(item.chunks)) if parsed is not None and item is not None else []
        problem = ("bad request" if parsed is None else "not held here" if item is None else
                   "served too often" if item.served >= MAX_SERVES else
                   "no commitment held" if parsed[1] == [] and item.commitment is None else
                   "chunk not held here" if not all(k in item.chunks for k in wanted) else None)
        if problem is not None:
            yield swarm_pb2.PartChunk(error=problem)
        else:
            assert item is not None
            item.served += 1
            yield swarm_pb2.PartChunk(part=request.part, chunk=len(wanted),
                                      commitment=item.commitment.pack() if item.commitment is not None else b"")
            for k in wanted:
                yield swarm_pb2.PartChunk(part=request.part, chunk=k, data=item.chunks[k])
        await drain(requests, REQUEST_TIMEOUT)   # read the end of its stream before closing (streams.drain says why)


async def fetch_material(p2p: P2P, peer: str, round_id: bytes, part: int, digest: bytes, count: int,
                         indices: Sequence[int] | None = None, timeout: float = FETCH_TIMEOUT) -> Material:
    """Download chunks `indices` (None: all `count` of them) of (round, part, digest) from `peer`; raises on refusal,
    a broken stream or other chunks than asked. What it returns is not checked yet (the caller checks it against the
    digests it trusts)."""
    wanted = list(indices) if indices is not None else list(range(count))

    async def request() -> AsyncIterator[swarm_pb2.PartChunk]:
        yield swarm_pb2.PartChunk(round_id=round_id, part=part, data=_request_data(digest, indices))

    async with asyncio.timeout(timeout):
        stream = await p2p.iterate_protobuf_handler(PeerID.from_base58(peer), AUDIT_HANDLER, request(), swarm_pb2.PartChunk)
        head = await anext(stream)
        if head.error:
            raise LookupError(f"{peer[-8:]}: {head.error}")
        if head.chunk != len(wanted):
            raise ValueError(f"{peer[-8:]} announced {head.chunk} chunks, expected {len(wanted)}")
        commitment = Commitment.unpack(head.commitment) if head.commitment else None
        chunks: dict[int, bytes] = {}
        async for message in stream:
            expected = wanted[len(chunks)]
            if message.error or message.chunk != expected:
                raise ValueError(f"{peer[-8:]} sent chunk {message.chunk}, expected {expected}: {message.error}")
            chunks[expected] = message.data
            if len(chunks) == len(wanted):
                break
        if len(chunks) != len(wanted):
            raise ValueError(f"{peer[-8:]}'s stream ended after {len(chunks)} of {len(wanted)} chunks")
        return Material(chunks, commitment)


async def fetch_commitment(p2p: P2P, peer: str, round_id: bytes, part: int, digest: bytes,
                           timeout: float = FETCH_TIMEOUT) -> Commitment | None:
    """The commitment `peer` holds under (round, part, digest), without its chunks; unchecked (the caller checks it)."""

    async def request() -> AsyncIterator[swarm_pb2.PartChunk]:
        yield swarm_pb2.PartChunk(round_id=round_id, part=part, data=_request_data(digest, [COMMITMENT_ONLY]))

    async with asyncio.timeout(timeout):
        stream = await p2p.iterate_protobuf_handler(PeerID.from_base58(peer), AUDIT_HANDLER, request(), swarm_pb2.PartChunk)
        try:
            head = await anext(stream)
        finally:
            await close_quietly(stream)
        if head.error:
            raise LookupError(f"{peer[-8:]}: {head.error}")
        return Commitment.unpack(head.commitment) if head.commitment and head.chunk == 0 else None


# ---------------------------------------------------------------------------------------------------
# One audit


@dataclass
class PartAudit:
    """What an auditor checks: a reducer's statement, the part's chunk layout, the result as received (None: fetch it
    from `sources`), and per listed sender index the peers to ask for its contribution, in order."""
    statement: ResultStatement
    layout: list[tuple[str, int]]
    result: list[bytes] | None
    sources: dict[int, list[str]]
    fallback: list[str] = field(default_factory=list)   # peers asked for any input or result the others lack
    chunks: list[int] | None = None    # the chunks to recompute (an accusation's); None: a sample of AUDIT_CHUNKS
    commitments: dict[bytes, Commitment] = field(default_factory=dict)   # by digest: the ones the auditor already holds


@dataclass
class Finding:
    verdict: str        # "honest", "lied" or "inconclusive"
    detail: str
    distance: float = 0.0   # the largest relative distance of a chunk from its recomputation
    chunks: list[int] = field(default_factory=list)   # the chunks found wrong (a lie's evidence)
    commitment: Commitment | None = None   # evidence of an omitted own contribution (pack_accusation)


def _checked_input(entry: Input, material: Material, statement: ResultStatement, count: int, indices: Sequence[int]) -> str | None:
    """Why `material` is not the contribution `entry` lists (for the chunks `indices`), or None when it is."""
    c = material.commitment
    if c is None or c.digest() != entry.commitment:
        return "not the commitment the reducer listed"
    mine = c.chunks_of(statement.part)
    if c.round_id != statement.round_id or mine is None or len(mine) != count or not c.valid():
        return "a commitment for another round or part, or not signed by its sender"
    needed = [k for k in indices if k < entry.chunks]
    if not all(k in material.chunks and c.holds(statement.part, k, material.chunks[k]) for k in needed):
        return "chunks that differ from their commitment"
    return None


def sample(count: int, size: int) -> list[int]:
    """`size` distinct chunk indices of `count` (all if fewer), from this process's private randomness, in order."""
    return sorted(secrets.SystemRandom().sample(range(count), min(size, count)))


def recompute(layout: Sequence[tuple[str, int]], inputs: Sequence[tuple[Input, Commitment, dict[int, bytes]]],
              result: Sequence[bytes] | dict[int, bytes], reduction: type = CenteredClipReduction,
              indices: Sequence[int] | None = None) -> dict[int, float]:
    """Per chunk of `indices` (None: all), the relative distance between the result chunk and the same chunk reduced
    again from `inputs`, both as the codec decodes them (inf where one is empty and the other not). Raises ValueError
    on bytes that do not decode."""
    distances: dict[int, float] = {}
    for k in (indices if indices is not None else range(len(layout))):
        name, length = layout[k]
        codec = get_codec(name)
        red = reduction(length)
        for entry, commitment, chunks in inputs:
            if k < entry.chunks:
                red.add(decode_checked(codec, chunks[k], length), commitment.weight, sender=entry.sender)
        value = red.result()
        if value is None or result[k] == b"":
            distances[k] = 0.0 if value is None and result[k] == b"" else float("inf")
            continue
        sent = decode_checked(codec, result[k], length)
        if getattr(codec, "sparse_result", False) and not is_bundle(result[k]):   # a bundle is the whole average
            distances[k] = _top_distance(codec, sent, value, [chunks[k] for entry, commitment, chunks in inputs
                                                               if k < entry.chunks and commitment.weight > 0])
            continue
        mine = value if codec.name == "none" else codec.decode(codec.encode(value))
        distances[k] = _relative(sent, mine)
    return distances


def _relative(sent: torch.Tensor, mine: torch.Tensor) -> float:
    scale = max(float(mine.norm()), float(sent.norm()))
    distance = float((sent - mine).norm())
    return distance / scale if scale > 0 else (0.0 if distance == 0 else float("inf"))


def _top_distance(codec, sent: torch.Tensor, value: torch.Tensor, inputs: list[bytes]) -> float:
    """A sparse result (the top of the average, swarm.compression.topk) against the recomputed average: its values
    where it kept any, and how much of the average's top its choice of positions missed. Which of two near-equal values
    the top keeps may differ with the order of summation; that costs nothing (each member puts back what the update
    left out), so the choice is judged by its weight, not position by position. More non-zeros than the largest
    input has is a lie (inf)."""
    kept = sent != 0
    keep = max((nonzeros(data, codec.name) for data in inputs), default=0)
    if int(kept.sum()) > keep:
        return float("inf")
    chosen = value * kept
    best = float(top_values(value, keep).norm())   # codec.reduce_result's top, without counting the inputs again
    missed = max(0.0, 1.0 - float(chosen.norm()) / best) if best > 0 else 0.0
    return max(_relative(sent, codec.decode(codec.encode(chosen))), missed)


async def audit_part(p2p: P2P, store: AuditStore, case: PartAudit, reduction: type = CenteredClipReduction,
                     timeout: float = FETCH_TIMEOUT) -> Finding:
    """Check one reducer's part (see the module docstring); the inputs and the result it fetched go into `store`."""
    statement = case.statement
    if not statement.valid():   # a statement made up in the reducer's name proves nothing about the reducer
        return Finding("inconclusive", "the statement is not signed by its reducer")
    parsed = unpack_inputs(statement.inputs) if statement.inputs else None
    if parsed is None:
        return Finding("inconclusive", "the statement lists no inputs")
    layout_digest, inputs = parsed
    if hashlib.sha256(pack_layout(case.layout)).digest() != layout_digest:
        return Finding("inconclusive", "the part's chunk layout is not the one its reducer signed")
    if not inputs:
        return Finding("inconclusive", "no inputs listed")
    if any(entry.chunks > len(case.layout) for entry in inputs):
        return Finding("lied", "it lists more chunks of a sender than the part has", float("inf"))
    indices = sorted(set(case.chunks)) if case.chunks is not None else sample(len(case.layout), AUDIT_CHUNKS)
    if not indices or not all(0 <= k < len(case.layout) for k in indices) or len(indices) > MAX_SAMPLE:
        return Finding("inconclusive", "no chunks to check")
    omitted = _omitted_own(case, inputs)
    if omitted is not None:
        return Finding("lied", "it signed inputs that leave out its own committed contribution (listing another, which "
                               "nobody can fetch, would hide it from audits)", float("inf"), indices, omitted)
    result = case.result
    if result is None:
        result = await _fetch_result(p2p, store, statement, len(case.layout), case.fallback, timeout)
        if result is None:
            return Finding("inconclusive", "the result could not be had")
    elif hashlib.sha256(b"".join(result)).digest() != statement.digest or len(result) != len(case.layout):
        return Finding("inconclusive", "the result held is not the one its reducer signed")
    gathered, missing = [], []
    for entry in inputs:
        material = store.get(statement.round_id, statement.part, entry.commitment)
        problem = "not asked" if material is None else _checked_input(entry, material, statement, len(case.layout), indices)
        needed = [k for k in indices if k < entry.chunks]
        peers = [*case.sources.get(entry.sender, []), *case.fallback]
        for peer in ([] if problem is None else peers):
            try:
                material = await fetch_material(p2p, peer, statement.round_id, statement.part, entry.commitment, len(case.layout),
                                                needed, timeout=timeout)
            except Exception as e:
                problem = f"{peer[-8:]}: {describe(e)}"
                continue
            problem = _checked_input(entry, material, statement, len(case.layout), indices)
            if problem is None:
                assert material.commitment is not None
                store.put_contribution(material.commitment, statement.part, material.chunks)
                break
        if problem is None and material is not None:
            assert material.commitment is not None
            gathered.append((entry, material.commitment, material.chunks))
            continue
        # nobody handed its chunks over: its weight still counts, if its signed commitment is known
        commitment = await _known_commitment(p2p, store, case, entry, peers, timeout)
        if commitment is None:
            return Finding("inconclusive", f"input of member {entry.sender}: {problem}; its commitment unknown")
        store.put_contribution(commitment, statement.part, {})   # a verifier of my accusation asks me for it
        missing.append((entry, commitment, problem))
    if missing:
        return await _check_without(case, gathered, missing, result, indices)
    # the reducer's own contribution first, as it added it (allreduce._add_own): then the streaming mean sums in the
    # reducer's order for its first term at least (the rest is rounding, far below AUDIT_TOLERANCE)
    gathered.sort(key=lambda g: (g[1].sender != statement.reducer, g[0].sender))
    loop = asyncio.get_running_loop()
    try:   # decoding and reducing the sampled chunks: off the engine loop, which keeps serving streams meanwhile
        distances = await loop.run_in_executor(None, recompute, case.layout, gathered, result, reduction, indices)
    except ValueError as e:
        return Finding("inconclusive", f"undecodable bytes: {e}")
    worst = max(distances.values())
    wrong = sorted(k for k, d in distances.items() if d > tolerance(case.layout[k][0]))
    if wrong:
        return Finding("lied", f"its result is {worst:.3g} of its norm away from what its {len(gathered)} inputs reduce to "
                               f"in {len(wrong)} of the {len(indices)} chunks checked", worst, wrong)
    return Finding("honest", f"within {worst:.2g} of its inputs' reduction in the {len(indices)} chunks checked", worst)


def _omitted_own(case: PartAudit, inputs: Sequence[Input]) -> Commitment | None:
    """The reducer's own commitment for this round and part (one the auditor holds: it came with the reducer's
    contribution to the auditor's part), if the statement's inputs do not list it. An honest reducer commits once a
    round, to every part its values go to its own included, and lists that commitment among its part's inputs
    (allreduce._inputs); a liar that listed a commitment made up for itself would leave auditors no way to fetch or
    weigh its own input."""
    statement = case.statement
    listed = {entry.commitment for entry in inputs}
    for digest, c in case.commitments.items():
        mine = c.chunks_of(statement.part)
        if (c.sender == statement.reducer and c.round_id == statement.round_id and mine is not None
                and len(mine) == len(case.layout) and digest not in listed and c.digest() == digest and c.valid()):
            return c
    return None


async def _known_commitment(p2p: P2P, store: AuditStore, case: PartAudit, entry: Input, peers: Sequence[str],
                            timeout: float) -> Commitment | None:
    """The signed commitment an input's digest names: one the auditor holds (it came with the sender's contribution to
    the auditor's own part), or one a peer hands over alone (an accuser keeps those of the inputs it lacked)."""
    statement = case.statement
    candidates = [case.commitments.get(entry.commitment)]
    held = store.get(statement.round_id, statement.part, entry.commitment)
    candidates.append(held.commitment if held is not None else None)
    for candidate in candidates:
        if candidate is not None and _checked_input(entry, Material({}, candidate), statement, len(case.layout), []) is None:
            return candidate
    for peer in peers:
        try:
            commitment = await fetch_commitment(p2p, peer, statement.round_id, statement.part, entry.commitment, timeout)
        except Exception as e:
            logger.debug("audit: no commitment from %s: %s", peer[-8:], describe(e))
            continue
        if commitment is not None and _checked_input(entry, Material({}, commitment), statement, len(case.layout), []) is None:
            return commitment
    return None


async def _check_without(case: PartAudit, gathered: list, missing: list, result: Sequence[bytes],
                         indices: Sequence[int]) -> Finding:
    """Check the sampled chunks as CenteredClip fixed points of the inputs at hand (swarm.averaging.clip_check)."""
    statement = case.statement
    radii = unpack_radii(statement.inputs)
    absent = ", ".join(f"member {entry.sender} ({problem})" for entry, _, problem in missing)
    if radii is None or len(radii) != len(case.layout):
        return Finding("inconclusive", f"inputs missing ({absent}) and no radii signed to check without them")

    def check() -> Finding:
        worst, wrong, details = 0.0, [], []
        for k in indices:
            name, length = case.layout[k]
            codec = get_codec(name)
            known = [(decode_checked(codec, chunks[k], length), c.weight) for entry, c, chunks in gathered if k < entry.chunks]
            unknown = [c.weight for entry, c, _ in missing if k < entry.chunks]
            if not unknown:   # every input of this chunk is at hand: recompute it exactly
                exact = recompute(case.layout, [g for g in gathered if k < g[0].chunks], result, indices=[k])[k]
                verdict = "lied" if exact > tolerance(name) else "honest"
                ratio, detail = exact / tolerance(name), f"{exact:.2g} of its norm from its inputs' reduction"
            elif result[k] == b"":
                return Finding("inconclusive", f"chunk {k} is empty and inputs are missing ({absent})")
            else:
                found = check_without(known, unknown, decode_checked(codec, result[k], length), radii[k], name)
                verdict, ratio, detail = found.verdict, found.ratio, found.detail
            if verdict == "inconclusive":
                return Finding("inconclusive", f"chunk {k} with inputs missing ({absent}): {detail}")
            worst = max(worst, ratio)
            if verdict == "lied":
                wrong.append(k)
                details.append(f"chunk {k}: {detail}")
        if wrong:
            return Finding("lied", f"with inputs missing ({absent}), {len(wrong)} of the {len(indices)} chunks checked are no "
                                   f"CenteredClip of the others: {details[0]}", worst, wrong)
        return Finding("honest", f"with inputs missing ({absent}), every chunk checked is a CenteredClip of the others "
                                 f"(worst pull {worst:.2g} of the room)", worst)

    try:
        return await asyncio.get_running_loop().run_in_executor(None, check)
    except (ValueError, ProtocolError) as e:
        return Finding("inconclusive", f"undecodable bytes: {e}")


async def _fetch_result(p2p: P2P, store: AuditStore, statement: ResultStatement, chunks: int, peers: Sequence[str],
                        timeout: float) -> list[bytes] | None:
    held = store.get(statement.round_id, statement.part, statement.digest)
    if held is not None and len(held.chunks) == chunks:
        return [held.chunks[k] for k in range(chunks)]
    for peer in peers:
        try:
            material = await fetch_material(p2p, peer, statement.round_id, statement.part, statement.digest, chunks, timeout=timeout)
        except Exception as e:
            logger.debug("audit: no result from %s: %s", peer[-8:], describe(e))
            continue
        ordered = [material.chunks[k] for k in range(chunks)]
        if hashlib.sha256(b"".join(ordered)).digest() == statement.digest:
            store.put_result(statement.round_id, statement.part, statement.digest, ordered)
            return ordered
    return None


def draw(rate: float, others: int) -> bool:
    """Whether to audit one part: probability rate / others (others: the members besides its reducer), from this
    process's private randomness."""
    if others <= 0 or rate <= 0:
        return False
    return secrets.randbelow(1 << 30) < min(1.0, rate / others) * (1 << 30)
