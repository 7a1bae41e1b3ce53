"""Keeps a node's DHT routing table in touch with every peer it knows (trainers and the coordinator alike).

Why this exists (hivemind 1.1.12 behaviour, reproduced in tests/helpers/coordinator_partition.py):
one DHT request that times out (a peer whose Python is busy building its model or tokenizing can
miss it) removes that peer from the requester's routing table, and nothing re-bootstraps
afterwards (swarm.net.node makes the timeout and blacklist more patient, which makes this rarer, not
impossible). In a small swarm, where the coordinator and one or two peers are each other's only
neighbours, such timeouts at start-up can leave the coordinator with nobody to ask: it then reads
only its own records, and the dashboard shows an empty swarm while the peers train. The peer side
heals too: a ping from a DHT server asks the pinged peer to add the server to its own routing table.

So after every read of the records, `keep_in_touch()` pings (concurrently, bounded) every peer
that is connected at the libp2p level, or that the tracker saw recently, and that is missing from
the routing table; a peer that answers is added back and taken off the blacklist. Peers the
coordinator never reached cost one ping per period until they drop out of the recent list.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Iterable

from hivemind.p2p import PeerID
from hivemind.utils.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

PING_TIMEOUT = 5.0


async def keep_in_touch(node, recent: Iterable[str], maddrs: dict[str, list[str]] | None = None) -> int:
    """Ping the known peers missing from the routing table; returns how many answered. Runs on the engine loop."""
    dht = node.dht
    table = dht.protocol.routing_table
    me = node.p2p.peer_id
    try:
        connected = {info.peer_id for info in await asyncio.wait_for(node.p2p.list_peers(), PING_TIMEOUT)}
    except Exception as e:  # p2pd busy: try again next time
        logger.debug("list_peers: %s", e)
        connected = set()
    wanted: set[PeerID] = set(connected)
    for text in recent:
        try:
            wanted.add(PeerID.from_base58(text))
        except Exception:
            continue
    missing = [p for p in wanted if p != me and table.get(peer_id=p) is None]
    if not missing:
        return 0

    async def ping(peer: PeerID) -> bool:
        if peer not in connected and maddrs and maddrs.get(peer.to_base58()):
            try:   # libp2p forgot the address (idle connection pruned): dial it first
                addrs = [Multiaddr(m.split("/p2p/")[0]) for m in maddrs[peer.to_base58()]]
                await asyncio.wait_for(node.p2p._client.connect(peer, addrs), PING_TIMEOUT)
            except Exception as e:
                logger.debug("dial %s: %s", peer, e)
        node_id = await asyncio.wait_for(dht.protocol.call_ping(peer), PING_TIMEOUT)
        if node_id is None:
            return False
        if peer in dht.blacklist:
            dht.blacklist.register_success(peer)
        else:
            dht.blacklist.ban_counter.pop(peer, None)
        return True

    results = await asyncio.gather(*(ping(p) for p in missing), return_exceptions=True)
    answered = sum(1 for r in results if r is True)
    if answered:
        logger.info("DHT: %d of %d known peers were missing from the routing table and answered a ping", answered, len(missing))
    return answered
