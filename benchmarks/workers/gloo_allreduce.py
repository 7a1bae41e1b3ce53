"""A torch.distributed (gloo) rank: `python -m benchmarks.workers.gloo_allreduce`. The gloo baseline.

Every rank joins a TCP rendezvous at rank 0's address, then on each `go` waits at a barrier and times one
`all_reduce` of the vector (float32, or float16 with --compression fp16). gloo needs every rank to accept
connections, so the emulator lifts NAT filters for it; it has no notion of auxiliary peers (they sit out).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch
import torch.distributed as dist


def emit(event: str, **fields) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--master", required=True)
    parser.add_argument("--port", type=int, default=29555)
    parser.add_argument("--params", type=int, required=True)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "eth0")
    dist.init_process_group("gloo", init_method=f"tcp://{args.master}:{args.port}", rank=args.rank, world_size=args.world,
                            timeout=datetime.timedelta(seconds=args.timeout))
    dtype = torch.float16 if args.compression == "fp16" else torch.float32
    emit("ready")
    try:
        for line in sys.stdin:
            command = json.loads(line)
            if command.get("cmd") == "stop":
                break
            r = int(command.get("round", 0))
            shared = torch.randn(args.params, generator=torch.Generator().manual_seed(1000 + r))
            tensor = (shared + float(args.rank)).to(dtype)
            dist.barrier()
            started = time.monotonic()
            dist.all_reduce(tensor)
            emit("round", round=r, ok=True, seconds=time.monotonic() - started)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
