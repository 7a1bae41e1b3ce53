"""Members swap their reducers' signed result statements after the all-gather, and act on what disagrees.

Each member of a round that checks results holds, for every part it received whole on its first stream, the
reducer's signed statement of that part's digest (swarm.averaging.result_statements). Once its own parts are in,
it sends its statements to every other member that takes the result, and each answers with its own (one call per
pair each way; a member that is not ready answers when it is, within the round's deadline). Then `verdict()`:

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
from typing import Sequence

import msgpack
from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2P, PeerID

from swarm.averaging.result_statements import MAX_STATEMENT_BYTES, ResultStatement

logger = logging.getLogger(__name__)

__all__ = ["RESULTS_HANDLER", "ResultCheck", "Verdict", "exchange_statements", "unpack_report"]

RESULTS_HANDLER = "swarm.averaging.results"
MAX_STATEMENTS = 256                              # per report: one per part, and a group has fewer members
MAX_REPORT_BYTES = 16 + MAX_STATEMENTS * (MAX_STATEMENT_BYTES + 8)
MAX_VERIFIED = 4 * MAX_STATEMENTS                 # distinct statements one round verifies at most


def unpack_report(data: bytes) -> tuple[bytes, list[bytes]] | None:
    """(round id, packed statements) of a report from the network; None when it breaks its bounds."""
    if not isinstance(data, bytes) or len(data) > MAX_REPORT_BYTES:
        return None
    try:
        report = msgpack.unpackb(data, raw=False, max_bin_len=MAX_STATEMENT_BYTES, max_str_len=8,
                                 max_array_len=MAX_STATEMENTS, max_map_len=2)
    except Exception:
        return None
    if not isinstance(report, dict) or not isinstance(report.get("r"), bytes) or not isinstance(report.get("s"), list):
        return None
    if not all(isinstance(s, bytes) for s in report["s"]):
        return None
    return report["r"], report["s"]


@dataclass
class Verdict:
    proofs: list[tuple[ResultStatement, ResultStatement]] = field(default_factory=list)   # one per equivocating part
    dropped: dict[int, str] = field(default_factory=dict)   # part -> why this member does not keep it


class ResultCheck:
    """One member's statements for one round, the other members' reports, and the comparison of the two."""

    def __init__(self, round_id: bytes, members: Sequence[str], me: int):
        self.round_id, self.members, self.me = round_id, list(members), me
        self.held: dict[int, ResultStatement] = {}                 # part -> the statement of what I received
        self.reports: dict[str, dict[int, ResultStatement]] = {}   # member -> part -> its statement
        self.ready = asyncio.Event()                               # set once my parts are in (or the round is over)
        self._verified: dict[bytes, bool] = {}

    def hold(self, part: int, statement: ResultStatement) -> None:
        self.held[part] = statement
        self._verified[statement.pack()] = True   # the member checked it as it arrived

    def report(self) -> bytes:
        return msgpack.packb({"r": self.round_id, "s": [s.pack() for _, s in sorted(self.held.items())]})

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

    def offer(self, member: str, round_id: bytes, packed: Sequence[bytes]) -> None:
        """Take a member's report (already bounded by unpack_report); statements that fail any check are ignored."""
        if member not in self.members or member == self.members[self.me] or round_id != self.round_id:
            return
        statements = {}
        for data in packed[:MAX_STATEMENTS]:
            statement = self._usable(data, member)
            if statement is not None:
                statements[statement.part] = statement
        self.reports[member] = statements

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
    """Send my report to each of `peers` and take theirs in answer, all within `timeout` seconds."""
    request = BytesValue(value=check.report())

    async def one(peer: str) -> None:
        reply = await asyncio.wait_for(p2p.call_protobuf_handler(PeerID.from_base58(peer), RESULTS_HANDLER, request, BytesValue), timeout)
        report = unpack_report(reply.value)
        if report is not None:
            check.offer(peer, *report)

    outcomes = await asyncio.gather(*(one(p) for p in peers), return_exceptions=True)
    for peer, outcome in zip(peers, outcomes):
        if isinstance(outcome, BaseException):
            logger.debug("round %s: no result statements from %s: %r", check.round_id.hex()[:8], peer[-8:], outcome)
