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
    subkey_bytes = protocol.serializer.dumps(subkey)
    record = DHTRecord(key_id.to_bytes(), subkey_bytes, protocol.serializer.dumps(value), expiration_time)
    if protocol.record_validator is not None:
        record = dataclasses.replace(record, value=protocol.record_validator.sign_value(record))
    nearest = protocol.routing_table.get_nearest_neighbors(key_id, dht.num_replicas, exclude=dht.node_id)
    stored = 0
    if len(nearest) < dht.num_replicas or key_id.xor_distance(dht.node_id) < key_id.xor_distance(nearest[-1][0]):
        nearest = nearest[: dht.num_replicas - 1]
        if protocol.record_validator is None or protocol.record_validator.validate(record):
            stored += bool(protocol.storage.store(key_id, record.value, expiration_time, subkey=subkey))
    calls = [protocol.call_store(peer_id, keys=[key_id], values=[record.value], expiration_time=[expiration_time], subkeys=[subkey])
             for _, peer_id in nearest]
    if calls:
        try:
            answers = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout)
        except asyncio.TimeoutError:
            return stored
        stored += sum(1 for a in answers if isinstance(a, list) and all(a))
    return stored
