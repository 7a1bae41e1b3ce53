"""A toy trainer whose P2P bytes are counted per protocol (benchmarks.control_plane's peer).

    python -m benchmarks.workers.control_plane_peer --run-id R [--initial-peers MADDR] --target T

Trains a small MLP (micro-batches of 8, `--step-sleep` between them) in a swarm whose global batch is
`--target` samples (10**9: no round ever starts, only the control plane runs). Prints JSON events on
stdout: `ready` (its multiaddr) once joined, then `counts` (the per-protocol bytes so far, the rounds
completed) each time the parent writes `{"cmd": "mark"}` on stdin; `{"cmd": "stop"}` leaves.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import torch

import swarm
from benchmarks.protocol_bytes import ProtocolBytes
from swarm.config import EngineConfig


def _emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--target", type=int, default=10**9)
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summaries", action="store_true", help="EngineConfig.progress_summaries on")
    args = parser.parse_args()
    torch.set_num_threads(1)
    counter = ProtocolBytes(args.run_id)
    counter.install()
    torch.manual_seed(1234)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    cfg = EngineConfig(target_batch_size=args.target, compression="fp16", averaging_timeout=15, sender_timeout=3.0,
                       matchmaking_timeout=10.0, gather_timeout=1.5, progress_summaries=args.summaries)
    collab = swarm.join(run_id=args.run_id, initial_peers=args.initial_peers, config=cfg)
    opt = collab.optimizer(model.parameters(), torch.optim.SGD, lr=0.01)
    stop = threading.Event()

    def commands() -> None:
        for line in sys.stdin:
            try:
                cmd = json.loads(line).get("cmd")
            except (json.JSONDecodeError, AttributeError):
                continue
            if cmd == "mark":
                _emit("counts", time=time.monotonic(), bytes=counter.snapshot(), rounds=opt.rounds_completed, epoch=opt.epoch,
                      seen=len(collab.tracker.view.peers), reads=dict(collab.tracker.reads))
            elif cmd == "stop":
                break
        stop.set()

    _emit("ready", maddr=collab.visible_maddrs()[0])
    threading.Thread(target=commands, name="commands", daemon=True).start()
    gen = torch.Generator().manual_seed(args.seed)
    w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(7))
    try:
        while not stop.is_set():
            x = torch.randn(8, 32, generator=gen)
            torch.nn.functional.mse_loss(model(x), x @ w_true).backward()
            opt.step(samples=8)
            opt.zero_grad()
            time.sleep(args.step_sleep)
    finally:
        collab.shutdown()


if __name__ == "__main__":
    main()
