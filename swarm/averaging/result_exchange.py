"""Members swap what their reducers signed after the all-gather, and act on what disagrees.

Each member of a round that checks results holds, for every part it received whole on its first stream, the
reducer's signed statement of that part's digest (swarm.averaging.result_statements). Once its own parts are in,
it swaps reports with every other member that takes the result (one call per pair each way; a member that is not
ready answers when it is, within the round's deadline), in two steps:

1. the digests only: part -> the 32-byte digest the member holds. A statement is about 1 KB (the reducer's
   signature and key, and the commitments of every input), so a report of every part cost each member
   members x parts x 1 KB per round (16 peers: ~100 KB/s per peer, more than the progress records);
2. only where two digests of one part were seen (a dispute): the signed statements of the disputed parts, from
   every member that answered step 1. An honest round never gets here; a false digest claimed by a member only
   costs this step.

Then `verdict()`, on signed statements alone (a digest claim is no evidence):

- a part for which two valid statements disagree was sent as different bytes to different members: its reducer
  equivocated, and the pair is a proof anyone can check (`Verdict.proofs`, for swarm.averaging.bans);
- of such a part, the members holding the digest most members hold (ties: the smallest digest) keep it and
  step; a member holding another digest drops the part (`Verdict.dropped`): its round fails and it does not
  step with bytes the others do not have. Why not adopt the majority's bytes instead: the reducer signed both
  versions, neither is known to be honest, and a member that fails one round catches up through the swarm's state
  like any member that missed a part; consistency among those that step is what matters.

A member that does not answer in time is left out of the comparison; what it holds it cannot prove, and it
cannot make anyone drop a part (only two statements signed by the reducer can). Every field from the network is
bounded (MAX_REPORT_BYTES, MAX_STATEMENTS) and each distinct statement is verified once.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Collection, Sequence

import msgpack
from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2P, PeerID

from swarm.averaging.result_statements import MAX_PART, MAX_STATEMENT_BYTES, ResultStatement

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_HANDLER", "Report", "ResultCheck", "Verdict", "exchange_statements", "unpack_report"]

RESULTS_HANDLER = "swarm.averaging.results"
MAX_STATEMENTS = 256                              # per report: one per part, and a group has fewer members
MAX_REPORT_BYTES = 16 + MAX_STATEMENTS * (MAX_STATEMENT_BYTES + 8)
MAX_VERIFIED = 4 * MAX_STATEMENTS                 # distinct statements one round verifies at most


@dataclass
class Report:
    """A member's report as read from the network (bounded by unpack_report, statements not yet verified)."""
    round_id: bytes
    digests: dict[int, bytes] = field(default_factory=dict)   # part -> the digest it holds (step 1)
    statements: list[bytes] = field(default_factory=list)     # packed signed statements (step 2)
    wanted: list[int] = field(default_factory=list)           # the parts whose statements it asks for (step 2)


def unpack_report(data: bytes) -> Report | None:
    """A report from the network; None when it breaks its bounds."""
    if not isinstance(data, bytes) or len(data) > MAX_REPORT_BYTES:
        return None
    try:
        fields = msgpack.unpackb(data, raw=False, max_bin_len=MAX_STATEMENT_BYTES, max_str_len=8,
                                 max_array_len=MAX_STATEMENTS, max_map_len=4)
    except Exception:
        return None
    if not isinstance(fields, dict) or not isinstance(fields.get("r"), bytes) or not set(fields) <= {"r", "d", "s", "w"}:
        return None
    digests, statements, wanted = fields.get("d", []), fields.get("s", []), fields.get("w", [])
    if not (isinstance(digests, list) and isinstance(statements, list) and isinstance(wanted, list)):
        return None
    if not all(isinstance(x, bytes) for x in statements) or not all(_part_number(w) for w in wanted):
        return None
    if not all(isinstance(e, list) and len(e) == 2 and _part_number(e[0]) and isinstance(e[1], bytes) and len(e[1]) == 32
               for e in digests):
        return None
    return Report(fields["r"], {part: d for part, d in digests}, statements, sorted(set(wanted)))


def _part_number(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_PART


@dataclass
class Verdict:
    proofs: list[tuple[ResultStatement, ResultStatement]] = field(default_factory=list)   # one per equivocating part
    dropped: dict[int, str] = field(default_factory=dict)   # part -> why this member does not keep it


class ResultCheck:
    """One member's statements for one round, the other members' reports, and the comparison of the two."""

    def __init__(self, round_id: bytes, members: Sequence[str], me: int):
        self.round_id, self.members, self.me = round_id, list(members), me
        self.held: dict[int, ResultStatement] = {}                 # part -> the statement of what I received
        self.reports: dict[str, dict[int, ResultStatement]] = {}   # member -> part -> its (verified) statement
        self.claims: dict[str, dict[int, bytes]] = {}             # member -> part -> the digest it says it holds
        self.ready = asyncio.Event()                               # set once my parts are in (or the round is over)
        self._verified: dict[bytes, bool] = {}

    def hold(self, part: int, statement: ResultStatement) -> None:
        self.held[part] = statement
        self._verified[statement.pack()] = True   # the member checked it as it arrived

    def report(self, parts: Collection[int] | None = None) -> bytes:
        """My digests (step 1), or with `parts` my statements of those parts that I hold (step 2)."""
        if parts is None:
            return msgpack.packb({"r": self.round_id, "d": [[j, st.digest] for j, st in sorted(self.held.items())]})
        return msgpack.packb({"r": self.round_id, "s": self._statements(parts)})

    def request(self, parts: Collection[int]) -> bytes:
        """Step 2's call: my statements of the disputed `parts`, asking for the other member's."""
        return msgpack.packb({"r": self.round_id, "s": self._statements(parts), "w": sorted(set(parts))})

    def _statements(self, parts: Collection[int]) -> list[bytes]:
        return [self.held[j].pack() for j in sorted(set(parts)) if j in self.held]

    def answer(self, report: Report) -> bytes:
        """What I answer a member's call: my statements of the parts it wants, else my digests."""
        return self.report(report.wanted) if report.wanted else self.report()

    def disputed(self) -> set[int]:
        """Parts of which two different digests were seen: mine, the members' claims and their statements."""
        seen: dict[int, set[bytes]] = {}
        for held in (self.held, *self.reports.values()):
            for part, statement in held.items():
                seen.setdefault(part, set()).add(statement.digest)
        for claims in self.claims.values():
            for part, digest in claims.items():
                seen.setdefault(part, set()).add(digest)
        return {part for part, digests in seen.items() if len(digests) > 1}

    def _usable(self, packed: bytes, member: str) -> ResultStatement | None:
        statement = ResultStatement.unpack(packed)
        if statement is None or statement.round_id != self.round_id or not 0 <= statement.part < len(self.members):
            return None
        if statement.reducer != self.members[statement.part]:
            return None
        if packed not in self._verified:
            if len(self._verified) >= MAX_VERIFIED:
                return None
            self._verified[packed] = statement.valid()
        return statement if self._verified[packed] else None

    def offer(self, member: str, report: Report) -> None:
        """Take a member's report (already bounded by unpack_report): its digest claims, and its statements that pass
        every check (the others are ignored)."""
        if member not in self.members or member == self.members[self.me] or report.round_id != self.round_id:
            return
        claims = self.claims.setdefault(member, {})   # listed once it answered at all: step 2 asks only those
        claims.update((j, d) for j, d in report.digests.items() if 0 <= j < len(self.members))
        statements = self.reports.setdefault(member, {})
        for data in report.statements[:MAX_STATEMENTS]:
            statement = self._usable(data, member)
            if statement is not None:
                statements[statement.part] = statement

    def verdict(self) -> Verdict:
        """Proofs of every equivocating reducer, and the parts I drop. A reducer's own report of its part is no vote:
        what it holds says nothing of what the members got (its statements still count as proof)."""
        verdict = Verdict()
        holders: dict[int, dict[bytes, list[str]]] = {}     # part -> digest -> members holding it (reducer included)
        statements: dict[int, dict[bytes, ResultStatement]] = {}
        reports = [(self.members[self.me], self.held), *self.reports.items()]
        for member, held in reports:
            for part, statement in held.items():
                holders.setdefault(part, {}).setdefault(statement.digest, []).append(member)
                statements.setdefault(part, {}).setdefault(statement.digest, statement)
        for part, by_digest in sorted(holders.items()):
            if len(by_digest) < 2:
                continue
            votes = {d: sum(m != self.members[part] for m in members) for d, members in by_digest.items()}
            digests = sorted(by_digest, key=lambda d: (-votes[d], d))
            verdict.proofs.append((statements[part][digests[0]], statements[part][digests[1]]))
            mine = self.held.get(part)
            if mine is not None and mine.digest != digests[0] and self.me != part:
                verdict.dropped[part] = (f"reducer {self.members[part][-8:]} equivocated: {len(by_digest)} signed results, "
                                         f"mine held by {votes[mine.digest]} of {sum(votes.values())} members")
        return verdict


async def exchange_statements(p2p: P2P, check: ResultCheck, peers: Sequence[str], timeout: float) -> None:
    """Swap digests with each of `peers`; then, if two digests of a part were seen, the statements of the disputed
    parts with those that answered. Each call within `timeout` seconds."""
    async def call(peer: str, payload: bytes) -> None:
        reply = await asyncio.wait_for(p2p.call_protobuf_handler(PeerID.from_base58(peer), RESULTS_HANDLER, BytesValue(value=payload), BytesValue), timeout)
        report = unpack_report(reply.value)
        if report is not None:
            check.offer(peer, report)

    async def each(peers_: Sequence[str], payload: bytes) -> None:
        outcomes = await asyncio.gather(*(call(p, payload) for p in peers_), return_exceptions=True)
        for peer, outcome in zip(peers_, outcomes):
            if isinstance(outcome, BaseException):
                logger.debug("round %s: no result report from %s: %r", check.round_id.hex()[:8], peer[-8:], outcome)

    await each(peers, check.report())
    disputed = check.disputed()
    if disputed:
        logger.info("round %s: parts %s have two digests: swapping their signed statements", check.round_id.hex()[:8], sorted(disputed))
        await each([p for p in peers if p in check.claims], check.request(disputed))
