"""A hivemind DecentralizedAverager peer (the baseline): `python -m benchmarks.workers.hivemind_averager`.

Modes: `--bootstrap` (a plain hivemind DHT that the others join) or an averaging peer. Commands on stdin
(JSON lines), events on stdout, like swarm.simulate.worker:

- `match` r: start a step with `require_trigger=True` and wait until the group is formed (stage
  AWAITING_TRIGGER): matchmaking is done, nothing has been sent yet. Answers `matched`.
- `go` r: allow the all-reduce and wait for it; answers `round` with its seconds (trigger to result).

`--bandwidth` types this peer's bandwidth in (hivemind_tuned); without it hivemind splits the vector
uniformly (hivemind_uniform). hivemind quirks handled here: the averager is created in the main thread,
it makes the process ignore SIGINT (the emulator stops us with `stop` or SIGTERM), and a Reaper makes
sure its DHT/averager children and their p2pd daemons die with us.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import torch


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", action="store_true")
    parser.add_argument("--host", required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--peers", type=int, default=2, help="group size to wait for")
    parser.add_argument("--params", type=int, default=0)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--role", default="trainer", choices=["trainer", "client", "aux"])
    parser.add_argument("--bandwidth", type=float, default=None, help="Mbit/s typed in (hivemind_tuned)")
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--chunk-bytes", type=int, default=2**19)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s [hivemind:{args.index}] %(name)s: %(message)s")
    torch.set_num_threads(1)

    from swarm.process.lifecycle import Reaper

    reaper = Reaper().start()
    import hivemind

    client = args.role == "client"
    dht = hivemind.DHT(initial_peers=args.initial_peers, host_maddrs=[f"/ip4/{args.host}/tcp/0"], client_mode=client, start=True)
    reaper.scan()
    averager = None
    try:
        if args.bootstrap:
            emit("ready", maddrs=[str(m) for m in dht.get_visible_maddrs()])
            for line in sys.stdin:
                if json.loads(line).get("cmd") == "stop":
                    break
            return
        from hivemind.compression import Float16Compression, NoCompression

        compression = Float16Compression() if args.compression == "fp16" else NoCompression()
        tensor = torch.zeros(args.params)
        averager = hivemind.averaging.DecentralizedAverager(
            [tensor], dht, prefix="bench", target_group_size=args.peers, min_group_size=args.peers, start=True,
            min_matchmaking_time=6.0, request_timeout=3.0, allreduce_timeout=args.timeout,  # request < min time, as hivemind asks
            compression=compression,
            part_size_bytes=args.chunk_bytes, bandwidth=args.bandwidth, auxiliary=args.role == "aux", client_mode=client,
        )
        reaper.scan()
        emit("ready", maddrs=[str(m) for m in dht.get_visible_maddrs()])
        control = None
        for line in sys.stdin:
            command = json.loads(line)
            cmd, r = command.get("cmd"), int(command.get("round", 0))
            if cmd == "stop":
                break
            if cmd == "match":
                with averager.get_tensors() as tensors:
                    shared = torch.randn(args.params, generator=torch.Generator().manual_seed(1000 + r))
                    tensors[0].copy_(shared + float(args.index))
                started = time.monotonic()
                control = averager.step(wait=False, require_trigger=True, timeout=args.timeout, allow_retries=True)
                from hivemind.averaging.control import AveragingStage

                while control.stage != AveragingStage.AWAITING_TRIGGER and not control.done() and time.monotonic() - started < args.timeout:
                    time.sleep(0.01)
                emit("matched", round=r, ok=control.stage == AveragingStage.AWAITING_TRIGGER, seconds=time.monotonic() - started)
            elif cmd == "go" and control is not None:
                started = time.monotonic()
                control.allow_allreduce()
                try:
                    gathered = control.result(timeout=args.timeout)
                    ok = gathered is not None
                    group = len(gathered) if gathered else 0
                except Exception as e:  # a failed baseline round is a result too
                    ok, group = False, 0
                    logging.warning("round %d failed: %r", r, e)
                emit("round", round=r, ok=ok, seconds=time.monotonic() - started, group=group)
                control = None
    finally:
        if averager is not None:
            averager.shutdown()
        dht.shutdown()
        reaper.close()


if __name__ == "__main__":
    main()
