"""Robust mode's cost in an honest round: the same all-reduce round with CenteredClip at every reducer and with the
weighted mean, side by side.

    python -m benchmarks.robust_round [--members 4] [--sizes-mb 1,4,40] [--repeats 5] [--threads 1] [--no-check-results]
                                      [--json results/robust-round.json]

Members are real P2P peers on loopback in one process (tests/integration/test_allreduce.py's harness), each a trainer
reducing an equal share; their values are honest gradients of one model (a common direction plus per-member noise,
unequal weights within bound_weights' ratio, so the mean is not reweighted). For each vector size the two modes
alternate, in an order reversed every other repeat, so that a busy machine slows them alike. Reported per size:
the median round time of each mode and `overhead`, the median over repeats of (robust / mean) - 1; the same in
CPU seconds of this process (`cpu_overhead`: every member's Python side, the reducers' arithmetic included, not
the p2pd daemons), which other processes on a busy machine disturb less than wall time. Every robust
round's result is checked against the mean round's (equal up to the order in which senders arrived, which differs
from round to round), so a faster but different result cannot pass unnoticed. Robust rounds check results as robust
mode does (reducers sign each part, members swap the statements after the all-gather) unless --no-check-results.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from hivemind.p2p import P2P
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.group import GroupView
from swarm.averaging.layout import TensorLayout
from swarm.averaging.reduction import Reduction
from swarm.averaging.robust import CenteredClipReduction
from swarm.averaging.service import AggregateService
from swarm.compression.policy import CompressionPolicy
from swarm.net.identity import identity_file


def honest_values(members: int, elements: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(elements, generator=g)
    return [base + 0.3 * torch.randn(elements, generator=g) for _ in range(members)]


async def one_round(peers, services, layout, values, weights, reduction, keys=None) -> tuple[float, float, list[torch.Tensor]]:
    """(wall seconds, CPU seconds of this process, member 0's result) of one round of every member; `keys`: the
    members' identity keys, to check results as robust mode does (signed statements, swapped after the all-gather)."""
    ids = tuple(str(p.peer_id) for p in peers)
    round_id = secrets.token_bytes(16)
    n = len(peers)
    rounds = []
    for i, p in enumerate(peers):
        group = GroupView(round_id=round_id, peer_ids=ids, roles=("trainer",) * n, weights=tuple(weights),
                          shares=(1 / n,) * n, my_index=i, timeout=120.0)
        r = AllReduceRound(p, group, layout, [values[i]], reduction=reduction, sender_timeout=60.0,
                           signer=keys[i] if keys is not None else None)
        services[i].open(r)
        rounds.append(r)
    start, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(r.run() for r in rounds))
    return time.perf_counter() - start, time.process_time() - cpu, results[0]


async def measure(members: int, sizes_mb: list[float], repeats: int, codec: str, check_results: bool = True) -> list[dict]:
    keys = [RSAPrivateKey() for _ in range(members)]
    peers = []
    services = []
    try:
        for key in keys:   # each identity is its signing key, as a Node's (swarm.net.identity)
            with identity_file(key) as path:
                initial = await peers[0].get_visible_maddrs() if peers else []
                peers.append(await P2P.create(initial_peers=initial, identity_path=path, check_if_identity_free=False))
        for p in peers:
            s = AggregateService(p)
            await s.start()
            services.append(s)
        rows = []
        weights = [1.0, 1.2, 0.9, 1.1, 1.0, 1.3, 0.8, 1.0][:members] + [1.0] * max(0, members - 8)
        for size_mb in sizes_mb:
            elements = int(size_mb * 2**20 / 4)
            policy = CompressionPolicy(default=codec, small_tensor_threshold=64)
            layout = TensorLayout.build([(elements,)], lambda i, n: policy.codec_for(str(i), n))
            values = honest_values(members, elements)
            await one_round(peers, services, layout, values, weights, Reduction)   # warm-up: streams, allocator
            times: dict[str, list[float]] = {"mean": [], "robust": []}
            cpu: dict[str, list[float]] = {"mean": [], "robust": []}
            ratios, cpu_ratios = [], []
            for rep in range(repeats):
                order = [("mean", Reduction), ("robust", CenteredClipReduction)]
                if rep % 2:
                    order.reverse()
                got = {}
                for name, reduction in order:
                    signers = keys if check_results and name == "robust" else None
                    seconds, cpu_seconds, result = await one_round(peers, services, layout, values, weights, reduction, signers)
                    times[name].append(seconds)
                    cpu[name].append(cpu_seconds)
                    got[name] = result
                for a, b in zip(got["mean"], got["robust"]):
                    # senders arrive in another order each round, so two rounds' sums differ in the last bits
                    if float((a - b).abs().max()) > 1e-3 * float(a.abs().max()):
                        raise AssertionError("an honest robust round must give the weighted mean")
                ratios.append(times["robust"][-1] / times["mean"][-1])
                cpu_ratios.append(cpu["robust"][-1] / cpu["mean"][-1])
            row = {"size_mb": size_mb, "members": members, "codec": codec, "repeats": repeats, "check_results": check_results,
                   "mean_round_s": statistics.median(times["mean"]), "robust_round_s": statistics.median(times["robust"]),
                   "overhead": statistics.median(ratios) - 1, "cpu_overhead": statistics.median(cpu_ratios) - 1,
                   "times": times, "cpu": cpu, "load": os.getloadavg()}
            print(f"{size_mb:g} MB: mean {row['mean_round_s']:.3f} s, robust {row['robust_round_s']:.3f} s, "
                  f"overhead {100 * row['overhead']:+.1f}%, in CPU seconds {100 * row['cpu_overhead']:+.1f}% "
                  f"(load {row['load'][0]:.1f})", flush=True)
            rows.append(row)
        return rows
    finally:
        for s in services:
            s.stop()
        for p in peers:
            await p.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--sizes-mb", default="1,4,40")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--codec", default="fp16")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a peer's default, peers/cli.py)")
    parser.add_argument("--no-check-results", action="store_true",
                        help="robust rounds without signed result statements (robust mode checks them)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = asyncio.run(measure(args.members, [float(s) for s in args.sizes_mb.split(",")], args.repeats, args.codec,
                                not args.no_check_results))
    if args.json:
        report = {"benchmark": "robust_round", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.node()} ({os.cpu_count()} cpus, torch threads {torch.get_num_threads()})",
                  "rows": rows}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
