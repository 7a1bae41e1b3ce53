"""Reading and storing one key's records on its replicas alone: found once by a traversal, then kept.

A full read (`DHTNode.get(latest=True)`) traverses a beam of up to 20 nodes, and every one of them that holds the
key answers with all its records: for the progress key (about 1 KB per peer) at 64 peers, ~20 FINDs and every record
from ~6 nodes, for one read. A blind store (swarm.net.direct_store) traverses too before its STOREs. For a key that
every peer reads every few seconds and writes every second or so, those traversals were most of a training peer's
~35 DHT calls a second (16 peers: 7% of a core each, half of it p2p daemons; 64 such peers do not fit 2 cores).

The nodes nearest to a key change only when nodes join or leave near it, so `KeyReplicas` finds them by a blind
traversal (no record read on the way) and keeps them for `refresh` seconds:

- a read asks `read_from` of them at random (one FIND each, ~1 KB per record; this node's own storage first when it
  is one) and merges their records per owner, the latest expiration winning, as hivemind's own read merges them;
  asking two, not one, covers a replica that just joined (it holds only what hivemind's handover and the stores
  since gave it) or one that withholds records; at random, so that the replicas share the serving;
- a store is one STORE on each of them (no FIND at all);
- a node that fails a call is dropped; with fewer than `min_alive` left, or after `refresh` seconds, the next call
  traverses again. A read that finds nothing (no replica holds the key yet: a swarm that is forming) and a store
  that no replica took fall back to the DHT's own paths (Node.store_record, Node.fetch_owned_records), so this is
  never worse than a full read for a swarm the cache does not describe.

Calls: a read is `read_from` FINDs instead of a beam's, a store `num_replicas` STOREs instead of a traversal plus
those STOREs; one traversal per `refresh` seconds for both.
"""
from __future__ import annotations

import asyncio
import random
import time

from hivemind.dht.node import DHTNode, _SearchState
from hivemind.dht.routing import DHTID
from hivemind.p2p import PeerID
from hivemind.utils.timed_storage import ValueWithExpiration

from swarm.net.direct_store import _signed, _store_on, with_own_node

REFRESH = 20.0     # seconds a found replica set is kept before it is looked for again (in the background)
READ_FROM = 2      # replicas a read merges
MIN_ALIVE = 3      # fewer replicas left than this (the others failed a call): look for them again
PATIENCE = 1.5     # seconds a read waits for its replicas before it asks one more beside them (a cut link, a dead node)


class KeyReplicas:
    """The replicas of one DHT key, as this node last found them, and reads and stores on them alone."""

    def __init__(self, dht: DHTNode, key: str, *, refresh: float = REFRESH, read_from: int = READ_FROM,
                 min_alive: int = MIN_ALIVE, patience: float = PATIENCE):
        if read_from < 1:
            raise ValueError(f"read_from must be at least 1, got {read_from}")
        self.dht, self.key = dht, key
        self.key_id = DHTID.generate(source=key)
        self.refresh, self.read_from, self.min_alive, self.patience = refresh, read_from, min_alive, patience
        self._nodes: list[tuple[DHTID, PeerID]] = []   # nearest first; this node's own id when it is one of them
        self._found = 0                                # how many the last traversal found
        self._found_at = -float("inf")                 # monotonic
        self._finding: asyncio.Task | None = None      # a traversal under way
        self.traversals = 0                            # how many times the replicas were looked for (tests, benchmarks)

    def forget(self) -> None:
        """Look for the replicas again at the next call (keeping the ones we know until the search ends)."""
        self._found_at = -float("inf")

    def close(self) -> None:
        if self._finding is not None:
            self._finding.cancel()
            self._finding = None

    def _fresh(self) -> bool:
        return (len(self._nodes) >= min(self.min_alive, self._found)
                and time.monotonic() - self._found_at < self.refresh)

    async def nodes(self, timeout: float) -> list[tuple[DHTID, PeerID]]:
        """The key's replicas, nearest first. Kept ones are returned at once, a search for them begun beside the caller
        when they are stale or too few are left; with none kept, the caller waits for the search (at most `timeout`)."""
        if not self._fresh() and (self._finding is None or self._finding.done()):
            self._finding = asyncio.ensure_future(self._find())
            self._finding.add_done_callback(_retrieved)
        if self._nodes:
            return self._nodes
        assert self._finding is not None
        await asyncio.wait_for(asyncio.shield(self._finding), timeout)
        return self._nodes

    async def _find(self) -> None:
        """Look for the replicas: a traversal towards the key's id with its last bit flipped, which nobody holds a value
        under, so the FINDs answer with neighbours only (swarm.net.direct_store); the DHT's blacklist skips dead nodes."""
        probe = DHTID(self.key_id ^ 1)
        self.traversals += 1
        found = await self.dht.find_nearest_nodes([probe], k_nearest=self.dht.num_replicas)
        # this node is a replica too when it is nearer than the farthest one found (find_nearest_nodes excludes it)
        self._nodes = with_own_node(self.dht, self.key_id, list(found[probe].items()))
        self._found, self._found_at = len(self._nodes), time.monotonic()

    def _failed(self, node: tuple[DHTID, PeerID]) -> None:
        """A replica that failed a call: dropped, and blacklisted like the DHT's own calls do (its traversals skip it)."""
        self._nodes = [n for n in self._nodes if n[0] != node[0]]
        self.dht.blacklist.register_failure(node[1])

    async def read(self, timeout: float) -> ValueWithExpiration | None:
        """The key's value (for a dictionary key: subkey -> ValueWithExpiration, deserialized and stripped of its
        signatures, as `DHTNode.get` returns it) merged from `read_from` replicas that answer, chosen at random; None when
        none of them holds the key (the caller falls back to a full read). A replica silent for `patience` seconds
        has one more asked beside it; one whose call fails is dropped."""
        deadline = time.monotonic() + timeout
        protocol = self.dht.protocol
        live = [n for n in await self.nodes(timeout) if n[0] == self.dht.node_id or n[1] not in self.dht.blacklist]
        # our own storage first (free), then the others in a random order: readers that all asked the two nearest would
        # make those two serve every read (at 64 peers reading every 1.6 s, ~1.3 MB/s each by the benchmark's read rate)
        own = [n for n in live if n[0] == self.dht.node_id]
        others = [n for n in live if n[0] != self.dht.node_id]
        queue = own + random.sample(others, len(others))
        state = _SearchState(self.key_id, float("inf"), serializer=protocol.serializer, record_validator=protocol.record_validator)
        answered, extra = 0, 0
        pending: dict[asyncio.Future, tuple[DHTID, PeerID]] = {}
        try:
            while True:
                while queue and answered + len(pending) < self.read_from + extra:
                    node = queue.pop(0)
                    if node[0] == self.dht.node_id:   # our own storage: no call
                        state.add_candidate(protocol.storage.get(self.key_id), source_node_id=node[0])
                        answered += 1
                    else:
                        pending[asyncio.ensure_future(protocol.call_find(node[1], [self.key_id]))] = node
                remaining = deadline - time.monotonic()
                if not pending or answered >= self.read_from or remaining <= 0:
                    break
                done, _ = await asyncio.wait(pending, timeout=min(remaining, self.patience), return_when=asyncio.FIRST_COMPLETED)
                if not done:
                    extra += 1
                for call in done:
                    node = pending.pop(call)
                    answer = call.result() if not call.cancelled() and call.exception() is None else None
                    if answer is None:   # call_find answers None when the call failed
                        self._failed(node)
                        continue
                    self.dht.blacklist.register_success(node[1])
                    answered += 1
                    if self.key_id in answer:
                        state.add_candidate(answer[self.key_id][0], source_node_id=node[0])
        finally:   # not wait_for(gather(...)): see direct_store._store_on
            for call in pending:
                call.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if not state.found_something:
            return None
        state.finish_search()
        return state.future.result()

    async def store(self, subkey: bytes, value: object, expiration_time: float, timeout: float) -> int:
        """Store `value` under (key, `subkey`) on each replica that is not blacklisted, signed like `DHTNode.store`
        signs it. Returns how many took it; fewer than `min_alive` did: the replicas are looked for again."""
        deadline = time.monotonic() + timeout
        nodes = [n for n in await self.nodes(timeout) if n[0] == self.dht.node_id or n[1] not in self.dht.blacklist]
        record = _signed(self.dht, self.key_id, subkey, value, expiration_time)
        stored = await _store_on(self.dht, self.key_id, subkey, record, nodes, max(0.0, deadline - time.monotonic()))
        if stored < min(self.min_alive, self._found):
            self.forget()
        return stored


def _retrieved(task: asyncio.Future) -> None:
    """A search nobody waits for any more: its failure is read here, not logged by the loop (the next call searches
    again)."""
    if not task.cancelled():
        task.exception()
