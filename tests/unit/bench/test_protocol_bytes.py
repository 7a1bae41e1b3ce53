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


def test_streams_are_counted_where_every_stream_opens(monkeypatch):
    """The all-reduce's members open their streams with P2P.call_binary_stream_handler directly (ReplyStream), not
    through the protobuf iterator: a counter there saw a fraction of them. Each open is counted, by handler name."""
    import asyncio
    from types import SimpleNamespace

    from hivemind.p2p import P2P

    for name in ("_call_unary_protobuf_handler", "_add_protobuf_unary_handler", "_iterate_protobuf_stream_handler",
                 "_add_protobuf_stream_handler", "call_binary_stream_handler"):
        monkeypatch.setattr(P2P, name, getattr(P2P, name))   # restored after the test: install() patches the class
    opened = []

    async def stream_open(peer_id, names):
        opened.append((peer_id, names))
        return "info", "reader", "writer"

    counter = ProtocolBytes("r")
    counter.install()
    fake = SimpleNamespace(_client=SimpleNamespace(stream_open=stream_open))

    async def main():
        for name in ("swarm.aggregate.r.part", "swarm.aggregate.r.part", "swarm.state.r"):
            assert await P2P.call_binary_stream_handler(fake, "peer", name) == ("info", "reader", "writer")

    asyncio.run(main())
    assert len(opened) == 3
    assert counter.snapshot()["streams"] == {"allreduce": 2, "state": 1}
