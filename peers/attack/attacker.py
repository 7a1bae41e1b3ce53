"""The hostile node of `swarm attack`: one process that joins an open run's DHT and misbehaves in one way.

    python -m peers.attack.attacker KIND --run-id R --initial-peers MADDR [--target PEER_ID] [--seconds S]

It is a stranger (its own key, no optimizer): it publishes records and opens streams as anyone who reaches the
DHT can. It runs without the schema check on its own stores (a hostile build would), so malformed records
leave it and the receivers' validators must refuse them. It prints one line `RESULT {json}` and exits.

Kinds (the issue's items):
- huge_ints (1): a MetricsRecord with bytes_sent 2**64-1 and a ProgressRecord with epoch 2**64-1.
- far_epoch (2): a ProgressRecord claiming epoch 10**9 for a peer id that does not exist.
- inflated_samples (3): a ProgressRecord at the swarm's epoch with 2**53 samples and 10**9 samples/s.
- infinite_weight (4): JoinRequests with weight=inf (and infinite bandwidth) to every training peer.
- forged_config (5): a ConfigRecord with created_at 0 and another task (the harness then starts a newcomer).
- huge_chunk (6): a stream to the target's all-reduce handler announcing one 400 MB PartChunk, then sending it.
- idle_streams (7): `--streams` state streams to the target that never send a request, held `--seconds`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time

from hivemind.p2p import P2P, PeerID

from swarm.averaging.matchmaking import JOIN_HANDLER
from swarm.averaging.state_sync import STATE_HANDLER
from swarm.averaging.streams import AGGREGATE_HANDLER
from swarm.net import clock, records
from swarm.observer import Observer
from swarm.proto import swarm_pb2

from . import KINDS

GHOST = "12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3"   # a well-formed peer id nobody holds
RECORD_TTL = 8.0
HUGE_CHUNK = 400 * 2**20
# the largest claims a record may carry (swarm.net.records' bounds), spelled out so that the attacker also runs against
# a tree from before those bounds existed (to show what the report looks like when the defenses are missing)
MAX_SAMPLES, MAX_RATE = 2**53, 1e9



def _progress(**kw) -> dict:
    base = dict(peer_id=GHOST, epoch=0, samples=0, samples_per_second=0.0, role="trainer", upload_bps=1e6,
                download_bps=1e6, time=clock.now(), params_hash="", serves_state=True, leaving=False, training=True)
    return base | kw


async def _store_raw(node, key: str, value: dict, ttl: float = RECORD_TTL) -> bool:
    return await node.dht.store(key, value, clock.now() + ttl, subkey=node.signer.local_public_key)


async def _honest(node) -> list[records.ProgressRecord]:
    found = await node.fetch_records(records.progress_key(node.run_id), records.ProgressRecord)
    return [p for p in found if p.peer_id not in (GHOST, str(node.peer_id)) and not p.leaving]   # type: ignore[union-attr]


async def _republish(node, seconds: float, make_value) -> dict:
    stored = attempts = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        attempts += 1
        stored += bool(await _store_raw(node, records.progress_key(node.run_id), await make_value()))
        await asyncio.sleep(2.0)
    return {"stores_attempted": attempts, "stores_accepted_somewhere": stored}


async def huge_ints(node, args) -> dict:
    metrics = dict(peer_id=GHOST, epoch=1, loss=1.0, samples_per_second=1.0, mini_steps=1, samples_total=1,
                   round_seconds=1.0, device="cpu", time=clock.now(), group_size=2, bytes_sent=2**64 - 1, bytes_received=0)
    results = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        results.append(bool(await _store_raw(node, records.metrics_key(node.run_id), metrics)))
        results.append(bool(await _store_raw(node, records.progress_key(node.run_id), _progress(epoch=2**64 - 1))))
        await asyncio.sleep(2.0)
    return {"stores_attempted": len(results), "stores_accepted_somewhere": sum(results)}


async def far_epoch(node, args) -> dict:
    async def value():
        return _progress(epoch=10**9, time=clock.now())
    return await _republish(node, args.seconds, value)


async def inflated_samples(node, args) -> dict:
    async def value():
        epochs = sorted(p.epoch for p in await _honest(node))
        epoch = epochs[len(epochs) // 2] if epochs else 0
        return _progress(epoch=epoch, samples=MAX_SAMPLES, samples_per_second=MAX_RATE, time=clock.now())
    return await _republish(node, args.seconds, value)


async def infinite_weight(node, args) -> dict:
    replies: dict[str, int] = {}
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        for p in await _honest(node):
            if not p.training or p.role == "client":
                continue
            for weight, bandwidth in ((math.inf, 1e6), (1.0, math.inf)):
                request = swarm_pb2.JoinRequest(run_id=node.run_id, epoch=p.epoch, peer_id=str(node.peer_id), role="client",
                                                weight=weight, upload_bps=bandwidth, download_bps=1e6, schema_hash=b"\0" * 32)
                try:
                    reply = await asyncio.wait_for(node.p2p.call_protobuf_handler(
                        PeerID.from_base58(p.peer_id), JOIN_HANDLER, request, swarm_pb2.GroupInfo), 5.0)
                    key = f"{swarm_pb2.GroupInfo.Status.Name(reply.status)}: {reply.reason}"
                except Exception as e:
                    key = f"error: {type(e).__name__}"
                replies[key] = replies.get(key, 0) + 1
        await asyncio.sleep(1.0)
    return {"replies": replies}


async def forged_config(node, args) -> dict:
    value = dict(run_id=node.run_id, task="swav", target_batch_size=1, fingerprint={}, hyperparameters={}, created_at=0.0, run_config="")
    stored = await _store_raw(node, records.config_key(node.run_id), value, ttl=args.seconds + 60)
    await asyncio.sleep(args.seconds)
    return {"stored": bool(stored)}


async def huge_chunk(node, args) -> dict:
    _, reader, writer = await node.p2p.call_binary_stream_handler(PeerID.from_base58(args.target), AGGREGATE_HANDLER)
    sent = 0
    block = b"\0" * 2**20
    started = time.monotonic()
    try:
        writer.write(P2P.MESSAGE_MARKER + HUGE_CHUNK.to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER))
        async with asyncio.timeout(args.seconds):
            while sent < HUGE_CHUNK:
                writer.write(block)
                await writer.drain()
                sent += len(block)
        outcome = "all sent"
    except Exception as e:
        outcome = f"stream closed by the target ({type(e).__name__})"
    finally:
        writer.close()
    return {"announced_bytes": HUGE_CHUNK, "sent_bytes": sent, "outcome": outcome, "seconds": round(time.monotonic() - started, 2)}


async def idle_streams(node, args) -> dict:
    peer = PeerID.from_base58(args.target)
    streams = []
    for _ in range(args.streams):
        try:
            streams.append(await asyncio.wait_for(node.p2p.call_binary_stream_handler(peer, STATE_HANDLER), 5.0))
        except Exception:
            break
    opened = time.monotonic()
    closed_at: list[float] = []

    async def watch(reader) -> None:
        try:
            await reader.read(1)          # b"" (EOF) once the target closes the stream
        except Exception:
            pass
        closed_at.append(time.monotonic() - opened)

    watchers = [asyncio.create_task(watch(r)) for _, r, _ in streams]
    await asyncio.wait(watchers, timeout=args.seconds) if watchers else None
    for task in watchers:
        task.cancel()
    for _, _, w in streams:
        w.close()
    return {"opened": len(streams), "closed_by_target": len(closed_at), "held_s": args.seconds,
            "closed_after_s_max": round(max(closed_at), 1) if closed_at else None}


async def attack(observer: Observer, args) -> dict:
    return await globals()[args.kind](observer.node, args)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="peers.attack.attacker")
    p.add_argument("kind", choices=KINDS)
    p.add_argument("--run-id", required=True)
    p.add_argument("--initial-peers", nargs="+", required=True)
    p.add_argument("--target", help="peer id (huge_chunk, idle_streams)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--streams", type=int, default=300)
    args = p.parse_args(argv)
    # a hostile build: its own node does not check what it stores (the receivers' validators must)
    records.SchemaValidator.validate = lambda self, record: True   # type: ignore[method-assign]
    observer = Observer(args.run_id, initial_peers=args.initial_peers)
    print("READY", flush=True)   # the harness's window starts here: our own start-up is not the attack
    try:
        result = observer.loop.run(attack(observer, args), timeout=args.seconds + 90)
        result = {"kind": args.kind, "attacker": observer.peer_id, **result}
    except Exception as e:
        result = {"kind": args.kind, "error": f"{type(e).__name__}: {e}"}
    finally:
        observer.shutdown()
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
