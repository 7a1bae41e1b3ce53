"""benchmarks.protocol_bytes classes a DHT RPC by the key it carries: progress records, their summaries, and a blind
store's traversal (the key's id with its last bit flipped) as a write of that key."""
from __future__ import annotations

import pytest
from hivemind.dht.routing import DHTID
from hivemind.proto import dht_pb2

from benchmarks.protocol_bytes import ProtocolBytes
from swarm.net import records

pytestmark = pytest.mark.timeout(30)


def key(name: str) -> DHTID:
    return DHTID.generate(source=name)


@pytest.mark.parametrize("rpc, request_, expected", [
    ("rpc_find", dht_pb2.FindRequest(keys=[key(records.progress_key("r")).to_bytes()]), "progress.read"),
    ("rpc_store", dht_pb2.StoreRequest(keys=[key(records.progress_key("r")).to_bytes()]), "progress.write"),
    ("rpc_find", dht_pb2.FindRequest(keys=[key(records.progress_summary_key("r")).to_bytes()]), "summary.read"),
    ("rpc_find", dht_pb2.FindRequest(keys=[DHTID(key(records.progress_key("r")) ^ 1).to_bytes()]), "progress.write"),
    ("rpc_find", dht_pb2.FindRequest(keys=[DHTID(key(records.progress_summary_key("r")) ^ 1).to_bytes()]), "summary.write"),
    ("rpc_find", dht_pb2.FindRequest(keys=[key("something else").to_bytes()]), "dht.maintenance"),
])
def test_a_dht_rpc_is_classed_by_its_key(rpc, request_, expected):
    assert ProtocolBytes("r").category(f"DHTProtocol.{rpc}", request_) == expected
