"""The transport's ceiling: one hivemind P2P stream carrying the all-reduce's own messages (PartChunk).

    python -m benchmarks.workers.p2p_stream --sink             # prints {"event": "ready", "maddrs": [...]}
    python -m benchmarks.workers.p2p_stream --source MADDR --mbytes 256 --message-bytes 524288

The source streams `mbytes` of PartChunk messages (each carrying `message-bytes` of payload, like one
chunk of 2**17 float32 values) through `iterate_protobuf_handler`; the sink answers with the payload bytes
it got and the seconds between its first and last message. No encoding or reduction: just the transport.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> None:
    from hivemind.p2p import P2P, PeerID
    from hivemind.utils.multiaddr import Multiaddr

    from swarm.proto import swarm_pb2

    p2p = await P2P.create(host_maddrs=["/ip4/127.0.0.1/tcp/0"], initial_peers=[Multiaddr(args.source)] if args.source else [])
    try:
        if args.sink:
            async def handler(requests, context):
                total, first, last = 0, None, None
                async for message in requests:
                    now = time.monotonic()
                    first = first or now
                    last = now
                    total += len(message.data)
                yield swarm_pb2.PartChunk(chunk=total, weight=(last - first) if first else 0.0)

            await p2p.add_protobuf_handler("bench.sink", handler, swarm_pb2.PartChunk, stream_input=True, stream_output=True)
            emit("ready", maddrs=[str(m) for m in await p2p.get_visible_maddrs()])
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)  # until told to stop
            return
        payload = b"\x01" * args.message_bytes
        count = max(1, args.mbytes * 2**20 // args.message_bytes)

        async def messages():
            for k in range(count):
                yield swarm_pb2.PartChunk(part=0, chunk=k, data=payload)

        target = PeerID.from_base58(args.source.rsplit("/p2p/", 1)[1])
        started = time.monotonic()
        stream = await p2p.iterate_protobuf_handler(target, "bench.sink", messages(), swarm_pb2.PartChunk)
        reply = await anext(stream)
        elapsed = time.monotonic() - started
        emit("result", bytes=reply.chunk, sink_seconds=reply.weight, source_seconds=elapsed,
             mib_per_s=reply.chunk / max(reply.weight, 1e-9) / 2**20)
    finally:
        await p2p.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sink", action="store_true")
    parser.add_argument("--source", help="the sink's multiaddr")
    parser.add_argument("--mbytes", type=int, default=256)
    parser.add_argument("--message-bytes", type=int, default=2**19)
    args = parser.parse_args()
    from swarm.process.lifecycle import Reaper

    with Reaper():
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
