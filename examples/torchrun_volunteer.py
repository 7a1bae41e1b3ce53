"""A volunteer with several GPUs joins a swarm as one peer: its local ranks average inside the machine.

    torchrun --nproc_per_node 4 examples/torchrun_volunteer.py --initial-peers ADDR   # a 4-GPU volunteer
    python examples/torchrun_volunteer.py --initial-peers ADDR                        # a 1-GPU (or CPU) one

Each rank trains on its own shard (here: a synthetic regression, a small MLP with BatchNorm);
`LocalRanksOptimizer` all-reduces the ranks' gradients inside the machine (NCCL on GPUs, gloo on
CPU), rank 0 steps with the swarm, and every rank receives rank 0's parameters after each global
step. Rank 0 prints `MADDR <address>` (what other volunteers pass as --initial-peers). With
--report, each rank writes {rank, epoch, params_hash, hashes: {epoch: hash}} to REPORT.rankN.json.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from swarm.config import EngineConfig
from swarm.integrations.local_ranks import LocalRanksOptimizer
from swarm.integrations.start_together import wait_for_peers


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-id", default="torchrun-volunteer")
    p.add_argument("--initial-peers", nargs="*", default=[])
    p.add_argument("--target-batch-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8, help="each rank's micro-batch")
    p.add_argument("--max-epochs", type=int, default=10, help="stop once the swarm reached this epoch")
    p.add_argument("--seed", type=int, default=0, help="this volunteer's data (each rank adds its rank)")
    p.add_argument("--wait-peers", type=int, default=1, help="wait (up to 5 min) until this many volunteers train")
    p.add_argument("--report")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if "RANK" in os.environ:   # launched by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)   # same initial model everywhere (rank 0's is broadcast anyway)
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(), torch.nn.Linear(32, 1)).to(device)
    opt = LocalRanksOptimizer(model, torch.optim.SGD, lr=0.05, momentum=0.9,
                              join={"run_id": args.run_id, "initial_peers": args.initial_peers,
                                    "config": EngineConfig(target_batch_size=args.target_batch_size)})
    if rank == 0:
        print("MADDR", opt.collab.visible_maddrs()[0], flush=True)
        wait_for_peers(opt.collab, args.wait_peers)
    if dist.is_initialized():
        dist.barrier()   # the other ranks wait for rank 0's swarm
    hashes: dict[int, str] = {}
    gen = torch.Generator().manual_seed(args.seed * 1000 + rank)
    weights = torch.linspace(-1, 1, 8)
    try:
        while opt.epoch < args.max_epochs:
            x = torch.randn(args.batch_size, 8, generator=gen)
            y = (x @ weights).unsqueeze(1)
            loss = torch.nn.functional.mse_loss(model(x.to(device)), y.to(device))
            loss.backward()
            if opt.step(samples=args.batch_size):
                hashes[opt.epoch] = opt.params_hash
            opt.zero_grad()
        if args.report:
            with open(f"{args.report}.rank{rank}.json", "w") as f:
                json.dump({"rank": rank, "epoch": opt.epoch, "params_hash": opt.params_hash, "hashes": hashes,
                           "loss": float(loss.detach())}, f)
    finally:
        opt.shutdown()
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
