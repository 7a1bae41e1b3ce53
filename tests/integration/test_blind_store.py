"""Over a real DHT of 6 nodes: a blind store (swarm.net.direct_store.store_blind) traverses the DHT without a single
FIND answer that carries the key's records, and every node reads what it stored."""
from __future__ import annotations

import asyncio

import pytest

from swarm.net import clock, records
from swarm.net.direct_store import store_blind
from swarm.net.node import Node, NodeOptions
from tests.integration.test_direct_store import progress

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def answers_with_values(node: Node) -> list[int]:
    """For every FIND `node` sends from now on, how many of its answers carried a value."""
    counts: list[int] = []
    call_find = node.dht.protocol.call_find

    async def counted(*args, **kwargs):
        response = await call_find(*args, **kwargs)
        counts.append(sum(1 for value, _ in (response or {}).values() if value is not None))
        return response

    node.dht.protocol.call_find = counted
    return counts


def test_a_blind_store_reads_no_record_on_its_way_and_every_node_reads_it():
    async def main():
        first = await Node.create("run", NodeOptions())
        nodes = [first]
        try:
            for _ in range(5):
                nodes.append(await Node.create("run", NodeOptions(initial_peers=await first.visible_maddrs())))
            key = records.progress_key("run")
            for i, node in enumerate(nodes[:-1]):     # the key holds other peers' records, as in a running swarm
                assert await node.store_record(key, progress(f"p{i}", 1), 60.0)
            writer = nodes[-1]
            finds = answers_with_values(writer)
            value = records.encode(progress("w", 2))
            stored = await store_blind(writer.dht, key, writer.signer.local_public_key, value, clock.now() + 60.0, 10.0)
            assert stored == writer.dht.num_replicas                               # each replica's answer counted
            assert finds and sum(finds) == 0, finds                                   # it traversed, and read nothing
            for node in nodes:
                found = {r.peer_id: r.epoch for r in await node.fetch_records(key, records.ProgressRecord)}
                assert found.get("w") == 2 and len(found) == len(nodes), found
        finally:
            for node in reversed(nodes):
                await node.shutdown()
    asyncio.run(main())
