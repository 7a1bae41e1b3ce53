"""Storing a signed record on its key's replica holders without a DHT traversal.

hivemind's `DHTNode.store` first traverses the DHT towards the key with FIND requests, and a FIND is
answered with the key's whole value: for the progress key, every peer's record (about 1 KB each). A
peer that republishes its progress record every refresh thus read all records twice per refresh, once
to read them and once to store its own. A peer that has just read the key (swarm.averaging.progress
reads before it publishes) holds the nodes nearest to the key in its routing table (they answered the
read), so its store can go straight to them: one STORE per replica, nothing read.

The routing table can miss a nearer node the read did not meet (a swarm that is still joining, or a
table whose bucket for the key's region is full), so callers still do a full `DHTNode.store` now and
then (swarm.net.node.Node.store_record) and stores hold by whatever replicas the readers reach.

`store_blind` needs no earlier read: it traverses the DHT like `DHTNode.store` (same beam, so it finds
the same nearest nodes a reader's traversal meets), but towards the key's id with its lowest bit
flipped. Nobody holds a value under that id, so every FIND is answered with neighbours only, not with
the key's records, and the nodes nearest to it are the nodes nearest to the key (the two ids differ in
the last bit, so only a node at distance 0 or 1 from the key could be ordered differently). A store
then costs a bounded traversal (at most a beam of FINDs, whatever N is) plus one STORE per replica.
"""
from __future__ import annotations

import asyncio
import dataclasses

from hivemind.dht.node import DHTNode
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord


async def store_near(dht: DHTNode, key: str, subkey: bytes, value: object, expiration_time: float, timeout: float) -> int:
    """Store `value` under (`key`, `subkey`) on the `dht.num_replicas` nodes nearest to the key that this node knows
    (itself included when it is one of them), signed like `DHTNode.store` signs it. Returns how many replicas took it."""
    protocol = dht.protocol
    key_id = DHTID.generate(source=key)
    record = _signed(dht, key_id, subkey, value, expiration_time)
    nearest = with_own_node(dht, key_id, protocol.routing_table.get_nearest_neighbors(key_id, dht.num_replicas, exclude=dht.node_id))
    return await _store_on(dht, key_id, subkey, record, nearest, timeout)


def with_own_node(dht: DHTNode, key_id: DHTID, nearest: list) -> list:
    """The `dht.num_replicas` nodes nearest to the key, nearest first, among `nearest` ((node id, peer id) pairs of other
    nodes: a routing table's or a traversal's, which never list this node) and this node itself."""
    def distance(item: tuple) -> int:
        return key_id.xor_distance(item[0])

    nodes = sorted(nearest, key=distance)[: dht.num_replicas]
    if len(nodes) < dht.num_replicas or distance((dht.node_id,)) < distance(nodes[-1]):
        nodes = sorted(nodes[: dht.num_replicas - 1] + [(dht.node_id, dht.peer_id)], key=distance)
    return nodes


async def store_blind(dht: DHTNode, key: str, subkey: bytes, value: object, expiration_time: float, timeout: float) -> int:
    """Store `value` under (`key`, `subkey`) on the `dht.num_replicas` nodes nearest to the key found by a traversal that
    reads no record (see the module docstring), signed like `DHTNode.store` signs it. Returns how many replicas took it."""
    key_id = DHTID.generate(source=key)
    probe = DHTID(key_id ^ 1)
    record = _signed(dht, key_id, subkey, value, expiration_time)
    found = await _without_cancelling(dht.find_nearest_nodes([probe], k_nearest=dht.num_replicas), timeout)
    return await _store_on(dht, key_id, subkey, record, list(found[probe].items()), timeout)


# Traversals a blind store stopped waiting for, left to end by their RPCs' own timeouts (`_without_cancelling`)
_ABANDONED: set[asyncio.Future] = set()
MAX_ABANDONED = 8


async def _without_cancelling(awaitable, timeout: float):
    """`awaitable`'s result within `timeout` seconds, else TimeoutError, without cancelling it on the timeout.

    A cancelled hivemind traversal leaves its workers' helper tasks pending (hivemind/dht/traverse.py creates a task
    of `search_finished_event.wait()` and never cancels it), and the garbage collector destroys each with a "Task was
    destroyed but it is pending!" line: thousands in the logs of peers at load 40-50, whose traversals time out often
    (benchmarks/README.md, session 19). Left alone, a traversal ends by its RPCs' own timeouts. At most MAX_ABANDONED
    are left so at a time (beyond, it is cancelled as before); a caller that is cancelled (a shutdown) cancels it."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    _ABANDONED.difference_update([t for t in _ABANDONED if t.get_loop().is_closed()])   # a test's loop, gone
    if len(_ABANDONED) >= MAX_ABANDONED:
        task.cancel()
    else:
        _ABANDONED.add(task)
        task.add_done_callback(_forget)
    raise asyncio.TimeoutError


def _forget(task: asyncio.Future) -> None:
    _ABANDONED.discard(task)
    if not task.cancelled():
        task.exception()   # retrieved: the loop logs nothing about a traversal nobody waits for


def _signed(dht: DHTNode, key_id: DHTID, subkey: bytes, value: object, expiration_time: float) -> DHTRecord:
    protocol = dht.protocol
    record = DHTRecord(key_id.to_bytes(), protocol.serializer.dumps(subkey), protocol.serializer.dumps(value), expiration_time)
    if protocol.record_validator is not None:
        record = dataclasses.replace(record, value=protocol.record_validator.sign_value(record))
    return record


async def _store_on(dht: DHTNode, key_id: DHTID, subkey: bytes, record: DHTRecord, nodes: list, timeout: float) -> int:
    """Store the signed `record` on `nodes` ((node id, peer id) pairs; this node's own storage for its own id)."""
    protocol = dht.protocol
    expiration_time = record.expiration_time
    stored = 0
    if any(node_id == dht.node_id for node_id, _ in nodes):
        if protocol.record_validator is None or protocol.record_validator.validate(record):
            stored += bool(protocol.storage.store(key_id, record.value, expiration_time, subkey=subkey))
    calls = [asyncio.ensure_future(protocol.call_store(peer_id, keys=[key_id], values=[record.value], expiration_time=[expiration_time],
                                                       subkeys=[subkey]))
             for node_id, peer_id in nodes if node_id != dht.node_id]
    if calls:
        # not wait_for(gather(...)): cancelled (a peer shutting down mid-store), wait_for cancels the gather and never
        # reads its CancelledError, which asyncio then logs with a traceback ("_GatheringFuture exception was never
        # retrieved": test_sigterm failed on it). Each call is cancelled and awaited here, whatever ends the wait.
        try:
            await asyncio.wait(calls, timeout=timeout)
        finally:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
        answers = [c.result() for c in calls if not c.cancelled() and c.exception() is None]
        stored += sum(1 for a in answers if a is not None and all(a))   # store_ok: a protobuf repeated field, not a list
    return stored
