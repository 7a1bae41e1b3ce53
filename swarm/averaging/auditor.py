"""A peer's audits (swarm.averaging.audits) wired to its rounds and its ban list.

After each round that checks results, `after_round` keeps what auditors may ask of it (my contributions, the parts I
received, in the AuditStore its service serves) and draws the parts I audit; each audit runs in the background, at
most MAX_RUNNING at once (more are skipped and counted: an audit is worth its bytes only while the round is fresh). A
lie found bans the reducer and publishes the accusation; `verify_pending` audits the accusations other peers published
(read with the ban records), fetching the inputs and the result from their holder, and bans only on its own finding.
"""
from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Awaitable, Callable

from google.protobuf.wrappers_pb2 import BytesValue
from hivemind.p2p import P2P, PeerID

from swarm.averaging.audits import (ACCUSE_HANDLER, PUSH_TIMEOUT, AuditService, AuditStore, Finding, PartAudit, audit_part, draw,
                                    pack_accusation, unpack_accusation)
from swarm.averaging.bans import BanList

if TYPE_CHECKING:
    from swarm.averaging.allreduce import AllReduceRound

logger = logging.getLogger(__name__)

__all__ = ["Auditor", "MAX_RUNNING"]

MAX_RUNNING = 4   # audits in flight at once; one drawn beyond that is skipped (counted): a round's audits are worth their bytes while it is fresh


class Auditor:
    def __init__(self, p2p: P2P, bans: BanList, audits_per_part: float = 2.0,
                 publish: Callable[[], Awaitable[None]] | None = None):
        self.p2p, self.bans, self.audits_per_part = p2p, bans, audits_per_part
        self.publish = publish
        self.store = AuditStore()
        self.service = AuditService(p2p, self.store, on_accusation=self._pushed)
        self.counts = {"honest": 0, "lied": 0, "inconclusive": 0, "skipped": 0, "verified": 0}
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        await self.service.start()

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def after_round(self, round_: "AllReduceRound", stepped: bool) -> None:
        """Keep this round's material for auditors (my contributions even if the round failed here: the members that
        stepped may audit parts they are in), and start the audits I draw if I stepped with its result (on the engine
        loop, after the round)."""
        group, me = round_.group, round_.group.my_index
        for j, (commitment, chunks) in round_.contributions.items():   # already kept if the round was made with keep_contribution
            self.store.put_contribution(commitment, round_.label(j), chunks)
        check = round_.results
        if check is None or not stepped:
            return
        # the parts I received are kept only for the parts I audit, and only as evidence of a lie (an accusation's
        # verifiers fetch the result from me): a round's whole result per round kept would cost a vector of memory each
        # the senders' commitments that came with their contributions to my part: an audit that cannot have an input's
        # chunks (a reducer's own, which it alone holds) still knows its weight (swarm.averaging.audits)
        known = {c.digest(): c for c in [*round_.commitments.values(), *(c for c, _ in round_.contributions.values())]}
        for j, statement in sorted(check.held.items()):
            if j == me or not statement.inputs:
                continue
            others = sum(1 for i in range(len(group.peer_ids)) if i != j and group.needs(i))
            if not draw(self.audits_per_part, others):
                continue
            chunks = round_.part_bytes(j)
            if chunks is None:
                continue
            layout = [(round_.layout.codecs[c.bucket].name, c.length) for c in round_.parts[j]]
            sources = {i: [group.peer_ids[i]] for i in range(len(group.peer_ids)) if i != me}
            self._spawn(PartAudit(statement, layout, chunks, sources, commitments=known), verifying=False)

    def _pushed(self, accusation: bytes, source: str) -> None:
        if self.bans.offer(accusation, source=source):
            self.verify_pending()

    async def _push(self, accusation: bytes, peers: list[str]) -> None:
        """Tell the round's other members of my accusation at once: each audits it before the next read of the ban
        records (every few seconds, several rounds of a small model)."""
        request = BytesValue(value=accusation)

        async def one(peer: str) -> None:
            await asyncio.wait_for(self.p2p.call_protobuf_handler(PeerID.from_base58(peer), ACCUSE_HANDLER, request, BytesValue), PUSH_TIMEOUT)

        await asyncio.gather(*(one(p) for p in peers), return_exceptions=True)

    def verify_pending(self) -> None:
        """Audit the accusations others published (BanList.to_verify), as many as there is room for."""
        while self.bans.to_verify and len(self._tasks) < MAX_RUNNING:
            accusation = next(iter(self.bans.to_verify))
            del self.bans.to_verify[accusation]
            unpacked = unpack_accusation(accusation)
            if unpacked is None or unpacked[0].reducer in self.bans.banned or unpacked[0].reducer == str(self.p2p.peer_id):
                continue
            statement, layout, holder, chunks, commitment = unpacked
            known = {commitment.digest(): commitment} if commitment is not None else {}
            self._spawn(PartAudit(statement, layout, None, {}, fallback=[holder], chunks=chunks, commitments=known), verifying=True)

    def _spawn(self, case: PartAudit, verifying: bool) -> None:
        if len(self._tasks) >= MAX_RUNNING:
            self.counts["skipped"] += 1
            return
        task = asyncio.create_task(self._audit(case, verifying))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _audit(self, case: PartAudit, verifying: bool) -> None:
        statement = case.statement
        name = f"part {statement.part} of round {statement.round_id.hex()[:8]} (reducer {statement.reducer[-8:]})"
        try:
            finding: Finding = await audit_part(self.p2p, self.store, case)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # an audit's failure is its own: it bans nobody
            logger.warning("audit of %s failed: %r", name, e)
            self.counts["inconclusive"] += 1
            return
        self.counts[finding.verdict] += 1
        if verifying:
            self.counts["verified"] += 1
        if finding.verdict == "lied":
            if case.result is not None:
                self.store.put_result(statement.round_id, statement.part, statement.digest, case.result)
            self.store.pin(statement.round_id)   # others fetch the evidence from me to verify it
            accusation = pack_accusation(statement, case.layout, str(self.p2p.peer_id), finding.chunks, finding.commitment)
            why = f"audit of {name}: {finding.detail}" + (" (verifying another peer's accusation)" if verifying else "")
            if self.bans.convict(statement.reducer, accusation, why):
                if not verifying:
                    await self._push(accusation, sorted({p for peers in case.sources.values() for p in peers} - {statement.reducer}))
                if self.publish is not None:
                    await self.publish()
        elif finding.verdict == "inconclusive":
            logger.info("audit of %s inconclusive: %s", name, finding.detail)
        else:
            logger.debug("audit of %s: %s", name, finding.detail)
