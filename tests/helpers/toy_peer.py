"""A toy trainer for integration tests: a small MLP on a synthetic regression task.

Run as `python -m tests.helpers.toy_peer --run-id R --initial-peers ADDR --out FILE [...]`.
It prints its multiaddr as `MADDR <addr>` and writes one JSON line per global step to --out.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time

import torch

import swarm
from swarm.config import EngineConfig


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", default="toy")
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--out", required=True)
    parser.add_argument("--role", default="trainer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--target", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--step-sleep", type=float, default=0.02)
    parser.add_argument("--compression", default="fp16")
    parser.add_argument("--averaging-timeout", type=float, default=15)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s [{args.role}:{args.seed}] %(name)s: %(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))

    torch.manual_seed(1234)  # identical initial parameters on every peer
    model = torch.nn.Sequential(torch.nn.Linear(32, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, 1))
    cfg = EngineConfig(target_batch_size=args.target, compression=args.compression, averaging_timeout=args.averaging_timeout,
                       sender_timeout=3.0, matchmaking_timeout=10.0, gather_timeout=1.5)
    collab = swarm.join(run_id=args.run_id, initial_peers=args.initial_peers, role=args.role, config=cfg)
    print("MADDR", collab.visible_maddrs()[0], flush=True)
    out = open(args.out, "a")
    try:
        opt = collab.optimizer(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9)
        if args.role == "aux":
            collab.run_auxiliary(opt.layout, lambda: stop["flag"])
            return
        gen = torch.Generator().manual_seed(args.seed)
        w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(7))
        end = time.monotonic() + args.duration
        opt.on_step.append(lambda r: (out.write(json.dumps({"epoch": r.epoch, "hash": r.params_hash, "group": r.group_size, "seconds": r.round_seconds, "time": r.time}) + "\n"), out.flush()))
        while not stop["flag"] and time.monotonic() < end and opt.epoch < args.steps:
            x = torch.randn(8, 32, generator=gen)
            y = x @ w_true
            loss = torch.nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step(samples=8)
            opt.zero_grad()
            time.sleep(args.step_sleep)
        out.write(json.dumps({"final": True, "epoch": opt.epoch, "hash": opt.params_hash(), "failed": opt.rounds_failed, "downloads": opt.state_downloads}) + "\n")
    finally:
        out.close()
        collab.shutdown()


if __name__ == "__main__":
    main()
