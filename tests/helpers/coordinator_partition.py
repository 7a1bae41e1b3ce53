"""Reproduces a DHT partition between two nodes and heals it with swarm.net.contacts.keep_in_touch.

Run as `python -m tests.helpers.coordinator_partition` (its own process: each Observer owns a Reaper).
Prints `before [..]`, `partitioned [..]`, `pinged N`, `after [..]`: the epochs node A reads from the DHT; then
`rejoined N` (A's routing table after its ping found it empty), `alone N` (pings answered once B is gone and A
forgot it), `channel` (the state of A's p2pd connection for unary calls: B's shutdown must not end it) and `warned`
with the warning A logged about its empty table.
"""
from __future__ import annotations

import logging
import time

from swarm.net import records
from swarm.net import unary_channel
from swarm.net.contacts import keep_in_touch
from swarm.net.records import ProgressRecord
from swarm.observer import Observer


def record(peer_id: str, epoch: int) -> ProgressRecord:
    return ProgressRecord(peer_id=peer_id, epoch=epoch, samples=0, samples_per_second=0.0, role="trainer", upload_bps=0.0,
                          download_bps=0.0, time=time.time())


async def forget(x: Observer, y: Observer) -> None:
    """What hivemind does when one request from x to y times out: y leaves x's routing table."""
    table = x.node.dht.protocol.routing_table
    del table[table.get(peer_id=y.node.p2p.peer_id)]


async def drop_storage(x: Observer) -> None:
    x.node.dht.protocol.storage.clear()


def main() -> None:
    a = Observer("partition")
    b = Observer("partition", initial_peers=a.visible_maddrs()[:1])
    key = records.progress_key("partition")
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda r: warnings.append(r.getMessage())  # type: ignore[method-assign]
    logging.getLogger("swarm.net.contacts").addHandler(handler)
    try:
        def publish(epoch: int) -> None:
            b.loop.run(b.node.store_record(key, record(b.peer_id, epoch), 60), timeout=10)

        def seen() -> list[int]:
            return sorted(r.epoch for r in a.progress())

        publish(1)
        print("before", seen(), flush=True)
        a.loop.run(forget(a, b), timeout=5)
        b.loop.run(forget(b, a), timeout=5)
        a.loop.run(drop_storage(a), timeout=5)
        publish(2)
        print("partitioned", seen(), flush=True)
        print("pinged", a.loop.run(keep_in_touch(a.node, [b.peer_id]), timeout=20), flush=True)
        publish(3)
        print("after", seen(), flush=True)
        print("rejoined", len(a.node.dht.protocol.routing_table.uid_to_peer_id), flush=True)
        b_id = b.peer_id
        a.loop.run(forget(a, b), timeout=5)
        b.shutdown()
        print("alone", a.loop.run(keep_in_touch(a.node, [b_id]), timeout=30), flush=True)
        print("channel", unary_channel.describe(a.node.p2p), flush=True)
        print("warned", " | ".join(w for w in warnings if "routing table is empty" in w), flush=True)
    finally:
        b.shutdown()
        a.shutdown()


if __name__ == "__main__":
    main()
