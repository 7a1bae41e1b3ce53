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

A node whose routing table is empty is cut off from the DHT (it reads and stores only its own records; seen at 64
peers: two peers a run with a view of 0-1 for a whole minute, their tables empty). It says so, once a minute, with
why its pings failed, and once a ping answers it looks up the nodes nearest to its own id, as the DHT's bootstrap
does, so the table fills with more than the one peer that answered.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from typing import Iterable

from hivemind.dht.routing import DHTID
from hivemind.p2p import PeerID
from hivemind.proto import dht_pb2
from hivemind.utils.multiaddr import Multiaddr

from swarm.net import unary_channel

logger = logging.getLogger(__name__)

PING_TIMEOUT = 5.0
ISOLATED_LOG_EVERY = 60.0   # seconds between two warnings of one node that its routing table is empty


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
    if not missing:   # (knowing nobody, a first node is alone, not cut off)
        return 0
    isolated = not table.uid_to_peer_id

    async def ping(peer: PeerID) -> bool:
        if peer not in connected and maddrs and maddrs.get(peer.to_base58()):
            try:   # libp2p forgot the address (idle connection pruned): dial it first
                addrs = [Multiaddr(m.split("/p2p/")[0]) for m in maddrs[peer.to_base58()]]
                await asyncio.wait_for(node.p2p._client.connect(peer, addrs), PING_TIMEOUT)
            except Exception as e:
                logger.debug("dial %s: %s", peer, e)
        node_id = await _ping(dht.protocol, peer)
        if node_id is None:
            raise ConnectionError("answered without a DHT node id (a client-mode node)")
        if peer in dht.blacklist:
            dht.blacklist.register_success(peer)
        else:
            dht.blacklist.ban_counter.pop(peer, None)
        return True

    results = await asyncio.gather(*(ping(p) for p in missing), return_exceptions=True)
    answered = sum(1 for r in results if r is True)
    if answered:
        logger.info("DHT: %d of %d known peers were missing from the routing table and answered a ping", answered, len(missing))
    if isolated:
        await _rejoin(node, answered, missing, results)
    return answered


async def _ping(protocol, peer: PeerID) -> DHTID | None:
    """DHTProtocol.call_ping without its catch-all: a failure raises, so an isolated node can say why."""
    request = dht_pb2.PingRequest(peer=protocol.node_info, validate=False)
    try:
        async with protocol.rpc_semaphore:   # the protocol's bound on concurrent calls, as its own call_ping holds it
            response = await protocol.get_stub(peer).rpc_ping(request, timeout=PING_TIMEOUT)
    except Exception:
        await protocol.update_routing_table(None, peer, responded=False)
        raise
    node_id = DHTID.from_bytes(response.peer.node_id) if response.peer and response.peer.node_id else None
    await protocol.update_routing_table(node_id, peer, responded=node_id is not None)
    return node_id


async def _rejoin(node, answered: int, missing: list[PeerID], results: list) -> None:
    """My routing table was empty: after a ping that answered, bootstrap again (the nodes nearest my own id); else
    say why nobody did, at most once a minute."""
    dht = node.dht
    if answered:
        try:
            await asyncio.wait_for(dht.find_nearest_nodes([dht.node_id]), 2 * PING_TIMEOUT)
        except Exception as e:
            logger.warning("DHT: my routing table was empty; %d peer(s) answered, but the lookup of my neighbours failed: %r", answered, e)
            return
        logger.warning("DHT: my routing table was empty; %d of %d known peers answered, it holds %d nodes again",
                       answered, len(missing), len(dht.protocol.routing_table.uid_to_peer_id))
        return
    now = time.monotonic()
    if now - getattr(node, "_isolated_warned_at", -ISOLATED_LOG_EVERY) < ISOLATED_LOG_EVERY:
        return
    node._isolated_warned_at = now
    reasons = Counter(_why(r) for r in results if isinstance(r, BaseException))
    logger.warning("DHT: my routing table is empty and none of %d known peers answered a ping (%s; %s): I read and "
                   "store only my own records until one does", len(missing),
                   "; ".join(f"{n}x {why}" for why, n in reasons.most_common(3)), unary_channel.describe(node.p2p))


def _why(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError) and not str(e):
        return f"no answer in {PING_TIMEOUT:g} s"
    return f"{type(e).__name__}: {str(e)[:120]}"
