"""Bans that every honest peer applies alike: only on a proof each peer checks itself.

A proof is a pair of result statements signed by one reducer for one part of one round with different digests
(swarm.averaging.result_statements.contradiction): the reducer sent different bytes to different members. A
member that finds one in a round (swarm.averaging.result_exchange) bans the reducer at once and publishes the
proof in the DHT (`BanRecord` under the run's bans key, signed by the accuser). Every peer reads the run's ban
records now and then (`refresh`) and bans the reducers of the proofs that verify, whoever published them.

Why this rule and not a quorum of accusers: an open run's accusers can be Sybils, so no count of them proves
anything, while a proof needs the accused peer's own key; an accuser with forged evidence (a statement signed by
another key, or a tampered one) bans nobody. The rule is the same on every peer, so the bans are too, up to the
DHT's delay. A ban holds for this process's life.

A reducer that lies consistently (the same wrong part to every member) leaves no such pair; an audit that recomputes
its part from the inputs it listed finds it (swarm.averaging.audits). The auditor bans it and publishes an
accusation (the reducer's signed statement, the part's chunk layout, where to fetch the inputs); every other peer
that reads it runs the audit itself (`to_verify`, swarm.averaging.auditor) and bans only on its own recomputation.
The evidence is self-certifying, so this is a proof in the same sense: no count of accusers matters, and an
accusation against an honest reducer bans nobody.

A sender's signed commitment to a weight over the run's claim ceiling is a proof too (swarm.averaging.claims): the
reducer that receives it bans the sender and publishes the commitment (`claims`); every peer checks its signature
and its weight before it bans.

A peer also bans, on its own observation, a sender whose contributions to its part were absurd in repeated rounds
(`observe`; swarm.averaging.robust.StrikeBook says why that needs no record). Banned peers are refused at
matchmaking (swarm.averaging.matchmaking reads `banned`), and their contributions are ignored.
"""
from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Iterable

from swarm.averaging.claims import overclaim
from swarm.averaging.result_statements import ResultStatement, contradiction
from swarm.net import records

logger = logging.getLogger(__name__)

__all__ = ["BanList", "BAN_TTL", "REFRESH_EVERY"]

BAN_TTL = 6 * 3600.0          # seconds an accuser's record lives in the DHT
# Seconds between reads of the run's ban records (robust mode, before a round). A peer that was not in the
# equivocator's group learns of it only here: at 10 s, an honest peer of a run of 1 s rounds went on averaging
# without the ban for 10 rounds (test_byzantine_bans saw one finish its 8 steps without it); the issue asks for a ban
# within 3 rounds. A read is one small DHT get (one record per accuser).
REFRESH_EVERY = 3.0
MAX_CHECKED = 4096            # distinct proofs one peer verifies at most (each costs two RSA verifications)
# Accusations one source (the peer that pushed it, or the owner of the record it was read from) may queue for an audit
# here per ACCUSATION_WINDOW: each costs a part's inputs in bytes. A budget per source, not one for all (64 once): a
# single peer publishing forged accusations used up a global one, after which real accusations were never audited.
# An honest accuser's record holds records.MAX_ACCUSATIONS at a time.
MAX_ACCUSATIONS_PER_SOURCE = 16
ACCUSATION_WINDOW = 3600.0
MAX_ACCUSATIONS_SEEN = 4096   # accusations remembered as seen (the oldest forgotten beyond it)
MAX_SOURCES = 1024            # sources counted per window (new ones refused beyond it, until the window ends)
MAX_PENDING = 256             # accusations queued for an audit (the oldest dropped beyond it)


class BanList:
    """The peers this peer bans, and the proofs it found itself (which it publishes)."""

    def __init__(self, target_batch_size: int | None = None) -> None:
        """`target_batch_size`: the run's, which sets the claim ceiling (None: claims prove nothing here)."""
        self.target_batch_size = target_batch_size
        self.banned: set[str] = set()
        self.found: list[tuple[bytes, bytes]] = []          # my own proofs, newest last (the record keeps the newest)
        self._checked: dict[tuple[bytes, bytes], str | None] = {}
        self._last_refresh = -float("inf")
        self.accused: list[bytes] = []                      # my audits' accusations, newest last (published)
        self.to_verify: dict[bytes, None] = {}             # others' accusations not audited here yet, in order read
        self._accusations_seen: OrderedDict[bytes, None] = OrderedDict()
        self._per_source: dict[object, int] = {}
        self._window_start = time.monotonic()
        self.claims: list[bytes] = []                       # commitments over the claim ceiling I received (published)
        self._claims_checked: dict[bytes, str | None] = {}

    def consider(self, proof: tuple[bytes, bytes] | list[bytes]) -> str | None:
        """Ban the reducer of a proof that verifies; returns it, or None when the proof proves nothing."""
        if len(proof) != 2 or not all(isinstance(p, bytes) for p in proof):
            return None
        key = (proof[0], proof[1])
        if key not in self._checked:
            if len(self._checked) >= MAX_CHECKED:
                return None
            a, b = ResultStatement.unpack(proof[0]), ResultStatement.unpack(proof[1])
            self._checked[key] = a.reducer if a is not None and b is not None and contradiction(a, b) else None
        accused = self._checked[key]
        if accused is not None and accused not in self.banned:
            logger.warning("banning %s: it signed two different results for one part of one round", accused[-8:])
            self.banned.add(accused)
        return accused

    def consider_claim(self, packed: bytes) -> str | None:
        """Ban the sender of a commitment that claims more than the ceiling (swarm.averaging.claims); returns it, or None
        when the commitment proves nothing."""
        if self.target_batch_size is None or not isinstance(packed, bytes):
            return None
        if packed not in self._claims_checked:
            if len(self._claims_checked) >= MAX_CHECKED:
                return None
            self._claims_checked[packed] = overclaim(packed, self.target_batch_size)
        accused = self._claims_checked[packed]
        if accused is not None and accused not in self.banned:
            logger.warning("banning %s: it signed a claim of more samples than the run's ceiling", accused[-8:])
            self.banned.add(accused)
        return accused

    def claim(self, commitments: Iterable[bytes]) -> list[str]:
        """My own round's over-ceiling commitments: the senders they ban (each kept for publishing, if small enough)."""
        banned = []
        for packed in commitments:
            accused = self.consider_claim(packed)
            if accused is not None:
                banned.append(accused)
                if packed not in self.claims and len(packed) <= records.MAX_CLAIM_BYTES:
                    self.claims = (self.claims + [packed])[-records.MAX_CLAIMS:]
        return banned

    def observe(self, peers: Iterable[str]) -> list[str]:
        """Ban peers this peer saw send absurd contributions itself (swarm.averaging.robust.StrikeBook.banned)."""
        new = sorted(set(peers) - self.banned)
        for peer in new:
            logger.warning("banning %s: its contributions were absurd in repeated rounds", peer[-8:])
        self.banned.update(new)
        return new

    def accuse(self, proofs: Iterable[tuple[bytes, bytes]]) -> list[str]:
        """My own round's proofs: the reducers they ban (each proof kept for publishing)."""
        banned = []
        for proof in proofs:
            accused = self.consider(proof)
            if accused is not None:
                banned.append(accused)
                if tuple(proof) not in self.found:
                    self.found = (self.found + [tuple(proof)])[-records.MAX_PROOFS:]
        return banned

    def convict(self, reducer: str, accusation: bytes, why: str) -> bool:
        """Ban a reducer whose part my own audit recomputed and found lying (swarm.averaging.audits); the accusation is
        kept for publishing. Returns whether the accusation is new."""
        if reducer not in self.banned:
            logger.warning("banning %s: %s", reducer[-8:], why)
            self.banned.add(reducer)
        self._seen(accusation)
        self.to_verify.pop(accusation, None)
        if accusation in self.accused:
            return False
        self.accused = (self.accused + [accusation])[-records.MAX_ACCUSATIONS:]
        return True

    def record(self) -> records.BanRecord:
        return records.BanRecord(proofs=[list(p) for p in self.found], accusations=list(self.accused), claims=list(self.claims),
                                 time=time.time())

    async def publish(self, node) -> bool:
        """Store my proofs under the run's bans key (my record replaces my earlier one)."""
        return await node.store_record(records.bans_key(node.run_id), self.record(), BAN_TTL)

    async def refresh(self, node, force: bool = False) -> None:
        """Read the run's ban records (at most every REFRESH_EVERY s) and ban the reducers of the proofs that verify."""
        now = time.monotonic()
        if not force and now - self._last_refresh < REFRESH_EVERY:
            return
        self._last_refresh = now
        for owner, record in await node.fetch_owned_records(records.bans_key(node.run_id), records.BanRecord):
            for proof in record.proofs:
                self.consider(proof)
            for accusation in record.accusations:
                self.offer(accusation, source=owner)
            for packed in record.claims:
                self.consider_claim(packed)

    def offer(self, accusation: bytes, source: object = None) -> bool:
        """Queue another peer's accusation for an audit here (swarm.averaging.auditor), unless seen before or its
        `source` spent its budget (MAX_ACCUSATIONS_PER_SOURCE a window); returns whether it was queued. Nobody is banned
        on it before that audit. A refused one is not marked seen: another source may bring it again."""
        if accusation in self._accusations_seen:
            return False
        now = time.monotonic()
        if now - self._window_start > ACCUSATION_WINDOW:
            self._per_source.clear()
            self._window_start = now
        spent = self._per_source.get(source)
        if (spent is None and len(self._per_source) >= MAX_SOURCES) or (spent or 0) >= MAX_ACCUSATIONS_PER_SOURCE:
            return False
        self._per_source[source] = (spent or 0) + 1
        self._seen(accusation)
        self.to_verify[accusation] = None
        while len(self.to_verify) > MAX_PENDING:
            del self.to_verify[next(iter(self.to_verify))]
        return True

    def _seen(self, accusation: bytes) -> None:
        self._accusations_seen[accusation] = None
        while len(self._accusations_seen) > MAX_ACCUSATIONS_SEEN:
            self._accusations_seen.popitem(last=False)
