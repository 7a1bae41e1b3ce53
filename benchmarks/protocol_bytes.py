"""Bytes a process sends and receives through hivemind's P2P, per protocol (for benchmarks.control_plane).

`ProtocolBytes.install(run_id)` wraps the class methods of `hivemind.p2p.P2P` that every protobuf message
of this process goes through: unary calls and their answers, streams opened and served. Each message is
counted at its serialized size (what the p2p daemon carries, before libp2p's framing and encryption)
under a category:

- the swarm's own handlers by name: matchmaking (`swarm.join`), all-reduce (`swarm.aggregate`), state
  download (`swarm.state`), clock (`swarm.net.clock`), access tokens and invites (`swarm.net.auth.*`,
  `swarm.net.invite.*`);
- the DHT's RPCs by the key they carry: `progress.read` / `progress.write` (finds and stores of the
  run's progress key, the requests we send and the answers we serve to others alike), `summary.read` /
  `summary.write` (the same for the progress summaries, swarm.averaging.summaries; a blind store's
  FINDs of the key's id with its last bit flipped count as writes), `metrics.write`,
  `config`, `revocations`, and `dht.maintenance` for the rest (pings, finds of routing-table ids,
  bootstrap).

What it cannot see is the p2p daemon's own traffic (identify, libp2p's kad-dht, yamux and noise
headers): the benchmark takes that as the interface counters' total minus this sum. Measurement only:
nothing in swarm/ imports it.
"""
from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any, AsyncIterator

from hivemind.dht.routing import DHTID
from hivemind.p2p import P2P
from hivemind.proto import dht_pb2

from swarm.net import records

_DHT_PREFIX = "DHTProtocol."


class ProtocolBytes:
    """Per-category byte counters of this process (sent, received), filled by wrappers around P2P."""

    def __init__(self, run_id: str):
        self.sent: dict[str, int] = defaultdict(int)
        self.received: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)        # requests sent (unary calls and streams opened)
        # streams this process opened, counted where every stream opens (P2P.call_binary_stream_handler): the
        # all-reduce's members open theirs there directly (ReplyStream), not through the protobuf iterator that
        # `calls` wraps, so `calls` saw a fraction of them (benchmarks/README.md, session 20)
        self.streams: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()
        self._keys = {
            DHTID.generate(source=records.progress_key(run_id)).to_bytes(): "progress",
            DHTID.generate(source=records.progress_summary_key(run_id)).to_bytes(): "summary",
            DHTID.generate(source=records.metrics_key(run_id)).to_bytes(): "metrics",
            DHTID.generate(source=records.config_key(run_id)).to_bytes(): "config",
            DHTID.generate(source=records.revocations_key(run_id)).to_bytes(): "revocations",
        }
        # a blind store's traversal (swarm.net.direct_store.store_blind) looks for the key's id with its last bit flipped
        self._probes = {DHTID(DHTID.from_bytes(k) ^ 1).to_bytes(): label for k, label in self._keys.items()}

    # -- classification -------------------------------------------------------------------------------

    def category(self, name: str, request: Any = None) -> str:
        """The category of a message of handler `name` whose request was `request` (a DHT RPC's carries its keys)."""
        if not name.startswith(_DHT_PREFIX):
            for prefix, label in (("swarm.join", "matchmaking"), ("swarm.aggregate", "allreduce"), ("swarm.state", "state"),
                                  ("swarm.net.clock", "clock"), ("swarm.net.auth", "access"), ("swarm.net.invite", "access")):
                if name.startswith(prefix):
                    return label
            return name
        rpc = name[len(_DHT_PREFIX):]
        keys = list(getattr(request, "keys", ()) or ()) if isinstance(request, (dht_pb2.FindRequest, dht_pb2.StoreRequest)) else []
        if keys and all(k in self._probes for k in keys):
            return "+".join(sorted({self._probes[k] for k in keys})) + ".write"
        labels = {self._keys.get(k, "") for k in keys}
        labels.discard("")
        if not labels:
            return "dht.maintenance"
        label = sorted(labels)[0] if len(labels) == 1 else "+".join(sorted(labels))
        if label in ("progress", "summary", "metrics"):
            return f"{label}.{'write' if rpc == 'rpc_store' else 'read'}"
        return label

    def add(self, category: str, sent: int = 0, received: int = 0, calls: int = 0) -> None:
        with self._lock:
            if calls:
                self.calls[category] += calls
            if sent:
                self.sent[category] += sent
            if received:
                self.received[category] += received

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {"sent": dict(self.sent), "received": dict(self.received), "calls": dict(self.calls),
                    "streams": dict(self.streams)}

    # -- the wrappers ---------------------------------------------------------------------------------

    def install(self) -> None:
        """Wrap P2P's protobuf paths (class-wide, this process only)."""
        counter = self
        call_unary = P2P._call_unary_protobuf_handler
        add_unary = P2P._add_protobuf_unary_handler
        iterate = P2P._iterate_protobuf_stream_handler
        add_stream = P2P._add_protobuf_stream_handler
        open_stream = P2P.call_binary_stream_handler

        async def _call_unary(p2p, peer_id, handle_name, input, output_type):
            response = await call_unary(p2p, peer_id, handle_name, input, output_type)
            counter.add(counter.category(handle_name, input), sent=input.ByteSize(), received=response.ByteSize(), calls=1)
            return response

        async def _add_unary(p2p, handle_name, handler, input_type, balanced=False):
            async def counted(request, context):
                response = await handler(request, context)
                counter.add(counter.category(handle_name, request), sent=response.ByteSize(), received=request.ByteSize())
                return response

            return await add_unary(p2p, handle_name, counted, input_type, balanced=balanced)

        async def _iterate(p2p, peer_id, name, requests, output_type):
            category = counter.category(name)
            counter.add(category, calls=1)

            async def sending() -> AsyncIterator:
                async for request in requests:
                    counter.add(category, sent=request.ByteSize())
                    yield request

            responses = await iterate(p2p, peer_id, name, sending(), output_type)

            async def receiving() -> AsyncIterator:
                async for response in responses:
                    counter.add(category, received=response.ByteSize())
                    yield response

            return receiving()

        async def _add_stream(p2p, name, handler, input_type, max_prefetch=5, balanced=False):
            category = counter.category(name)

            async def counted(requests, context):
                async def receiving() -> AsyncIterator:
                    async for request in requests:
                        counter.add(category, received=request.ByteSize())
                        yield request

                async for response in handler(receiving(), context):
                    counter.add(category, sent=response.ByteSize())
                    yield response

            return await add_stream(p2p, name, counted, input_type, max_prefetch=max_prefetch, balanced=balanced)

        async def _open_stream(p2p, peer_id, handler_name):
            opened = await open_stream(p2p, peer_id, handler_name)
            with counter._lock:
                counter.streams[counter.category(handler_name)] += 1
            return opened

        P2P._call_unary_protobuf_handler = _call_unary
        P2P._add_protobuf_unary_handler = _add_unary
        P2P._iterate_protobuf_stream_handler = _iterate
        P2P._add_protobuf_stream_handler = _add_stream
        P2P.call_binary_stream_handler = _open_stream
