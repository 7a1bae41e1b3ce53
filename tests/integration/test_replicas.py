"""Over a real DHT of 8 nodes: reads and stores on a key's replicas as last found (swarm.net.replicas) see every
record, cost a few calls instead of a traversal each, and survive the death of the nearest replica."""
from __future__ import annotations

import asyncio

import pytest
from hivemind.dht.routing import DHTID

from swarm.net import records
from swarm.net.node import Node, NodeOptions
from swarm.net.replicas import READ_FROM
from tests.integration.test_direct_store import count_finds, progress

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

KEY = records.progress_key("run")


def count_stores(node: Node) -> list[int]:
    calls: list[int] = []
    call_store = node.dht.protocol.call_store

    async def counted(*args, **kwargs):
        calls.append(1)
        return await call_store(*args, **kwargs)

    node.dht.protocol.call_store = counted
    return calls


async def swarm(n: int) -> list[Node]:
    first = await Node.create("run", NodeOptions())
    nodes = [first]
    for _ in range(n - 1):
        nodes.append(await Node.create("run", NodeOptions(initial_peers=await first.visible_maddrs())))
    return nodes


async def published(n: int) -> list[Node]:
    """A swarm of n nodes, node i's record (peer p<i>, epoch 1) stored on the replicas by node i."""
    nodes = await swarm(n)
    for i, node in enumerate(nodes):
        assert await node.store_record(KEY, progress(f"p{i}", 1), 60.0, replicas=True)
    return nodes


async def epochs(node: Node) -> dict[str, int]:
    return {r.peer_id: r.epoch for r in await node.fetch_records(KEY, records.ProgressRecord, replicas=True)}


def test_replica_reads_and_stores_see_every_record_with_a_few_calls_each():
    async def main():
        nodes = await published(8)
        try:
            for node in nodes:
                assert await epochs(node) == {f"p{i}": 1 for i in range(len(nodes))}
            reader = nodes[3]
            traversals = reader.replicas(KEY).traversals
            finds, stores = count_finds(reader), count_stores(reader)
            assert await reader.store_record(KEY, progress("p3", 2), 60.0, replicas=True)
            assert finds == [] and 0 < len(stores) <= reader.dht.num_replicas   # no traversal: a STORE per replica
            seen = await epochs(reader)
            assert seen["p3"] == 2 and len(seen) == len(nodes)
            assert len(finds) <= READ_FROM                                          # the nearest replicas only
            assert reader.replicas(KEY).traversals == traversals                    # the kept replicas, not found anew
            full = count_finds(nodes[4])
            assert len(await nodes[4].fetch_records(KEY, records.ProgressRecord)) == len(nodes)
            assert len(full) > READ_FROM, full    # what a full read costs on the same DHT, for comparison
        finally:
            for node in reversed(nodes):
                await node.shutdown()
    asyncio.run(main())


def test_reads_and_stores_go_on_when_the_nearest_replica_dies():
    async def main():
        nodes = await published(8)
        try:
            for node in nodes:
                await epochs(node)   # every node's replicas found and kept
            key_id = DHTID.generate(source=KEY)
            nearest = min(nodes[1:], key=lambda node: key_id.xor_distance(node.dht.node_id))   # not the bootstrap node
            await nearest.shutdown()
            alive = [node for node in nodes if node is not nearest]
            names = {f"p{i}" for i, node in enumerate(nodes) if node is not nearest}
            for node in alive:
                seen = await epochs(node)
                assert names <= set(seen), (names - set(seen))
            writer = alive[-1]
            assert await writer.store_record(KEY, progress("late", 3), 60.0, replicas=True)
            for node in alive:
                assert (await epochs(node)).get("late") == 3
        finally:
            for node in reversed(nodes):
                await node.shutdown()
    asyncio.run(main())


def test_a_failed_search_for_the_replicas_falls_back_to_the_full_paths():
    """A search for the replicas that fails (not only one that times out) costs a full read or a blind store, not
    the caller's read or publish."""
    class Failing:
        forgotten = 0

        def forget(self):
            Failing.forgotten += 1

        def close(self):
            pass

        async def read(self, timeout):
            raise RuntimeError("no nodes answered")

        async def store(self, *args, **kwargs):
            raise RuntimeError("no nodes answered")

    async def main():
        nodes = await swarm(3)
        try:
            for i, node in enumerate(nodes):
                assert await node.store_record(KEY, progress(f"p{i}", 1), 60.0)
            reader = nodes[1]
            reader._replicas[KEY] = Failing()
            assert len(await reader.fetch_records(KEY, records.ProgressRecord, replicas=True)) == 3   # the full read
            assert await reader.store_record(KEY, progress("p1", 2), 60.0, replicas=True)             # a blind store
            assert {r.peer_id: r.epoch for r in await nodes[0].fetch_records(KEY, records.ProgressRecord)}["p1"] == 2
            assert Failing.forgotten == 2
        finally:
            for node in reversed(nodes):
                await node.shutdown()
    asyncio.run(main())


def test_replicas_that_hold_fewer_than_half_the_records_seen_cost_a_full_read():
    """Nodes taken for the replicas that are not (a search cut short under load), which we also stored to, answer with
    little more than our own record: a read that shows fewer than half the peers seen before reads the full way."""
    async def main():
        nodes = await published(8)
        try:
            reader = nodes[2]
            kept = reader.replicas(KEY)
            whole = await kept.read(timeout=10)
            assert whole is not None and len(whole.value) == len(nodes)

            async def partial(timeout):   # the replicas' merge as a wrong replica set would give it: one record
                subkey = next(iter(whole.value))
                return type(whole)({subkey: whole.value[subkey]}, whole.expiration_time)

            kept.read = partial
            assert len(await reader.fetch_records(KEY, records.ProgressRecord, replicas=True)) == 1   # nothing expected
            assert len(await reader.fetch_records(KEY, records.ProgressRecord, replicas=True, expected=8)) == len(nodes)
        finally:
            for node in reversed(nodes):
                await node.shutdown()
    asyncio.run(main())
