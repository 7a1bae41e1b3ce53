"""Reading and storing one key's records on its replicas alone: found once by a traversal, then kept.

A full read (`DHTNode.get(latest=True)`) traverses a beam of up to 20 nodes, and every one of them that holds the
key answers with all its records: for the progress key (about 1 KB per peer) at 64 peers, ~20 FINDs and every record
from ~6 nodes, for one read. A blind store (swarm.net.direct_store) traverses too before its STOREs. For a key that
every peer reads every few seconds and writes every second or so, those traversals were most of a training peer's
~35 DHT calls a second (16 peers: 7% of a core each, half of it p2p daemons; 64 such peers do not fit 2 cores).

The nodes nearest to a key change only when nodes join or leave near it, so `KeyReplicas` finds them by a blind
traversal (no record read on the way) and keeps them for `refresh` seconds:

- a read asks the `read_from` nearest of them (one FIND each, ~1 KB per record) and merges their records per owner,
  the latest expiration winning, as hivemind's own read merges them; asking two, not one, covers a replica that
  just joined (it holds only what hivemind's handover and the stores since gave it) or one that withholds records;
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
import time

from hivemind.dht.node import DHTNode, _SearchState
from hivemind.dht.routing import DHTID
from hivemind.p2p import PeerID
from hivemind.utils.timed_storage import ValueWithExpiration

from swarm.net.direct_store import _signed, _store_on, _without_cancelling

REFRESH = 20.0     # seconds a found replica set is kept before the next call traverses again
READ_FROM = 2      # replicas a read asks, nearest first
MIN_ALIVE = 3      # fewer replicas left than this (the others failed a call): traverse again


class KeyReplicas:
    """The replicas of one DHT key, as this node last found them, and reads and stores on them alone."""

    def __init__(self, dht: DHTNode, key: str, *, refresh: float = REFRESH, read_from: int = READ_FROM,
                 min_alive: int = MIN_ALIVE):
        if read_from < 1:
            raise ValueError(f"read_from must be at least 1, got {read_from}")
        self.dht, self.key = dht, key
        self.key_id = DHTID.generate(source=key)
        self.refresh, self.read_from, self.min_alive = refresh, read_from, min(min_alive, dht.num_replicas)
        self._nodes: list[tuple[DHTID, PeerID]] = []   # nearest first; this node's own id when it is one of them
        self._found_at = -float("inf")                 # monotonic
        self.traversals = 0                            # how many times the replicas were looked for (tests, benchmarks)

    def forget(self) -> None:
        """Look for the replicas again at the next call."""
        self._nodes, self._found_at = [], -float("inf")

    async def nodes(self, timeout: float) -> list[tuple[DHTID, PeerID]]:
        """The key's replicas, nearest first: the kept ones, or found anew by a traversal that reads no record."""
        if len(self._nodes) >= self.min_alive and time.monotonic() - self._found_at < self.refresh:
            return self._nodes
        probe = DHTID(self.key_id ^ 1)   # nobody holds a value under it: the FINDs answer with neighbours only
        self.traversals += 1
        found = await _without_cancelling(self.dht.find_nearest_nodes([probe], k_nearest=self.dht.num_replicas), timeout)
        nodes = sorted(found[probe].items(), key=lambda item: self.key_id.xor_distance(item[0]))
        # this node is a replica too when it is nearer than the farthest one found (find_nearest_nodes excludes it)
        own = (self.dht.node_id, self.dht.peer_id)
        if len(nodes) < self.dht.num_replicas or self.key_id.xor_distance(self.dht.node_id) < self.key_id.xor_distance(nodes[-1][0]):
            nodes = sorted(nodes[: self.dht.num_replicas - 1] + [own], key=lambda item: self.key_id.xor_distance(item[0]))
        self._nodes, self._found_at = nodes[: self.dht.num_replicas], time.monotonic()
        return self._nodes

    def _drop(self, failed: set[DHTID]) -> None:
        self._nodes = [n for n in self._nodes if n[0] not in failed]

    async def read(self, timeout: float) -> ValueWithExpiration | None:
        """The key's value (for a dictionary key: subkey -> ValueWithExpiration, deserialized and stripped of its
        signatures, as `DHTNode.get` returns it) merged from the `read_from` nearest replicas that answer; None when
        none of them holds the key (the caller falls back to a full read)."""
        deadline = time.monotonic() + timeout
        nodes = await self.nodes(timeout)
        protocol = self.dht.protocol
        state = _SearchState(self.key_id, float("inf"), serializer=protocol.serializer, record_validator=protocol.record_validator)
        asked = 0
        remote: list[tuple[DHTID, PeerID]] = []
        for node_id, peer_id in nodes:
            if asked >= self.read_from:
                break
            asked += 1
            if node_id == self.dht.node_id:
                state.add_candidate(protocol.storage.get(self.key_id), source_node_id=node_id)
            else:
                remote.append((node_id, peer_id))
        answers = await self._finds(remote, max(0.0, deadline - time.monotonic()))
        failed = {node_id for (node_id, _), answer in zip(remote, answers) if answer is None}
        for (node_id, _), answer in zip(remote, answers):
            if answer is not None and self.key_id in answer:
                state.add_candidate(answer[self.key_id][0], source_node_id=node_id)
        self._drop(failed)
        if not state.found_something:
            return None
        state.finish_search()
        return state.future.result()

    async def _finds(self, nodes: list[tuple[DHTID, PeerID]], timeout: float) -> list[dict | None]:
        """Each node's FIND answer for the key (None: it failed or did not answer in time), asked all at once."""
        calls = [asyncio.ensure_future(self.dht.protocol.call_find(peer_id, [self.key_id])) for _, peer_id in nodes]
        if not calls:
            return []
        try:   # not wait_for(gather(...)): see direct_store._store_on
            await asyncio.wait(calls, timeout=timeout)
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        return [c.result() if not c.cancelled() and c.exception() is None else None for c in calls]

    async def store(self, subkey: bytes, value: object, expiration_time: float, timeout: float) -> int:
        """Store `value` under (key, `subkey`) on each replica, signed like `DHTNode.store` signs it. Returns how many
        took it; fewer than `min_alive` did: the next call looks for the replicas again."""
        deadline = time.monotonic() + timeout
        nodes = await self.nodes(timeout)
        record = _signed(self.dht, self.key_id, subkey, value, expiration_time)
        stored = await _store_on(self.dht, self.key_id, subkey, record, nodes, max(0.0, deadline - time.monotonic()))
        if stored < self.min_alive:
            self.forget()
        return stored
