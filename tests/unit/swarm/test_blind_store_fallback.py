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
