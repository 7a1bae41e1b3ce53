"""Over a real DHT of 6 nodes: a record stored straight on the replicas a read met (swarm.net.direct_store) is
sent without a single FIND and every node reads it."""
from __future__ import annotations

import asyncio
import time

import pytest

from swarm.net import records
from swarm.net.node import Node, NodeOptions

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def progress(peer: str, epoch: int) -> records.ProgressRecord:
    return records.ProgressRecord(peer_id=peer, epoch=epoch, samples=1, samples_per_second=1.0, role="trainer",
                                  upload_bps=1.0, download_bps=1.0, time=time.time())


def count_finds(node: Node) -> list[int]:
    """Counts the FIND requests `node` sends from now on (one entry per request)."""
    calls: list[int] = []
    call_find = node.dht.protocol.call_find

    async def counted(*args, **kwargs):
        calls.append(1)
        return await call_find(*args, **kwargs)

    node.dht.protocol.call_find = counted
    return calls


def test_a_direct_store_sends_no_find_and_every_node_reads_the_record():
    async def main():
        first = await Node.create("run", NodeOptions())
        nodes = [first]
        try:
            for _ in range(5):
                nodes.append(await Node.create("run", NodeOptions(initial_peers=await first.visible_maddrs())))
            writer = nodes[-1]
            key = records.progress_key("run")
            ttl = 30.0
            assert await writer.store_record(key, progress("w", 1), ttl, direct=True)   # the first store traverses
            await writer.fetch_records(key, records.ProgressRecord)                    # a read meets the replicas
            finds = count_finds(writer)
            assert await writer.store_record(key, progress("w", 2), ttl, direct=True)
            assert finds == []                                                        # no traversal, nothing read
            for node in nodes:
                found = await node.fetch_records(key, records.ProgressRecord)
                assert [(r.peer_id, r.epoch) for r in found] == [("w", 2)]
        finally:
            for node in reversed(nodes):
                await node.shutdown()
    asyncio.run(main())
