"""A blind store whose traversal times out (a node on the way does not answer: a cut link, a dead peer still in the
tables) still stores the record on the nearest nodes the routing table knows, at once: failing the publish let
every survivor's progress record expire while one peer was cut off (tests/chaos/test_network_cut.py)."""
from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from swarm.net import node as node_module
from swarm.net import records
from swarm.net.node import Node

pytestmark = pytest.mark.timeout(30)


def _node() -> Node:
    node = object.__new__(Node)
    node.dht = SimpleNamespace()
    node.signer = SimpleNamespace(local_public_key=b"key")
    node._traversed = {}
    return node


def _record() -> records.ProgressRecord:
    return records.ProgressRecord(peer_id="me", epoch=1, samples=1, samples_per_second=1.0, role="trainer",
                                  upload_bps=1.0, download_bps=1.0, time=0.0)


@pytest.mark.parametrize("outcome", ["timeout", "stored"])
def test_a_timed_out_blind_traversal_falls_back_to_the_nearest_known_nodes(monkeypatch, outcome):
    near: list[str] = []

    async def store_blind(dht, key, subkey, value, expiration, timeout):
        if outcome == "timeout":
            raise asyncio.TimeoutError
        return 5

    async def store_near(dht, key, subkey, value, expiration, timeout):
        near.append(key)
        return 4

    monkeypatch.setattr(node_module, "store_blind", store_blind)
    monkeypatch.setattr(node_module, "store_near", store_near)
    assert asyncio.run(_node().store_record("progress", _record(), 8.0, blind=True)) is True
    assert near == (["progress"] if outcome == "timeout" else [])


def test_a_store_cancelled_in_flight_leaves_nothing_for_asyncio_to_log():
    """A peer shutting down cancels its store mid-call: the calls end with it, and no future is left with an
    unretrieved exception (asyncio logged one with a traceback, and test_sigterm fails on any traceback)."""
    import gc

    from swarm.net.direct_store import _store_on

    async def main():
        logged = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: logged.append(context.get("message")))
        started = asyncio.Event()

        async def call_store(*args, **kwargs):
            started.set()
            await asyncio.sleep(60)

        dht = SimpleNamespace(node_id="me", protocol=SimpleNamespace(call_store=call_store, record_validator=None))
        record = SimpleNamespace(value=b"v", expiration_time=1.0)
        store = asyncio.create_task(_store_on(dht, b"key", b"subkey", record, [("a", "peer-a"), ("b", "peer-b")], timeout=30.0))
        await asyncio.wait_for(started.wait(), 5)
        store.cancel()
        with pytest.raises(asyncio.CancelledError):
            await store
        for _ in range(3):
            gc.collect()
            await asyncio.sleep(0.01)
        return logged

    assert asyncio.run(main()) == []


def test_a_store_that_times_out_counts_only_the_calls_that_answered():
    from swarm.net.direct_store import _store_on

    async def main():
        async def call_store(peer_id, **kwargs):
            if peer_id == "slow":
                await asyncio.sleep(60)
            return [True]

        dht = SimpleNamespace(node_id="me", protocol=SimpleNamespace(call_store=call_store, record_validator=None))
        record = SimpleNamespace(value=b"v", expiration_time=1.0)
        return await _store_on(dht, b"key", b"subkey", record, [("a", "fast"), ("b", "slow")], timeout=0.2)

    assert asyncio.run(main()) == 1


def test_a_timed_out_blind_traversal_is_left_to_finish_not_cancelled():
    """hivemind's traversal leaves helper tasks pending when cancelled (each then logs "Task was destroyed but it is
    pending!"): a blind store that stops waiting for it raises TimeoutError at once but lets it end by itself; a
    cancelled caller (a shutdown) still cancels it."""
    from swarm.net import direct_store

    async def main():
        outcomes: list[str] = []

        async def slow_traversal(queries, k_nearest):
            try:
                await asyncio.sleep(0.3)
                outcomes.append("finished")
                return {queries[0]: {}}
            except asyncio.CancelledError:
                outcomes.append("cancelled")
                raise

        dht = SimpleNamespace(find_nearest_nodes=slow_traversal, num_replicas=5, protocol=SimpleNamespace(
            record_validator=None, serializer=SimpleNamespace(dumps=lambda x: b"x")))
        started = asyncio.get_running_loop().time()
        with pytest.raises(asyncio.TimeoutError):
            await direct_store.store_blind(dht, "progress", b"key", b"value", 0.0, timeout=0.05)
        assert asyncio.get_running_loop().time() - started < 0.25 and outcomes == []
        await asyncio.sleep(0.4)
        assert outcomes == ["finished"] and not direct_store._ABANDONED
        # a cancelled caller takes its traversal with it
        store = asyncio.ensure_future(direct_store.store_blind(dht, "progress", b"key", b"value", 0.0, timeout=5.0))
        await asyncio.sleep(0.05)
        store.cancel()
        with pytest.raises(asyncio.CancelledError):
            await store
        await asyncio.sleep(0)
        assert outcomes == ["finished", "cancelled"]

    asyncio.run(main())
