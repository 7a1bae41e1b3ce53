"""Scale (issue 15): N members in one process average with the hierarchical all-reduce, on loopback.

    python -m benchmarks.scale --peers 16,32 --max-group-size 4 --rounds 3 --json benchmarks/results/scale.json

A skeleton of issue 15's benchmark. For each N it starts N hivemind P2P daemons driven by one event loop
(the all-reduce only: no matchmaking, no training, no emulated links), each with its AggregateService, and
runs `--rounds` rounds in which every member averages a `--params`-value vector with equal LP shares and
unequal weights: a HierarchicalRound (swarm.averaging.hierarchy) when N > --max-group-size, else the flat
AllReduceRound. Per N it reports: rounds attempted and committed (every member got every part), peer-rounds
committed, whether the committers' results were bitwise identical in every round, the median round time (the
slowest member's), streams per peer per round (max and mean, counted as the streams each member's P2P opened;
the issue's goal is at most 2 sqrt(N)), and this process's peak RSS (the p2pd daemons not included).
`--compare-flat` runs each round again right after as one flat group, so that both see the same load.

Not measured yet (issue 15): --churn, control-plane bytes, the LP bound of the structure, one process per peer.
On a shared 2-core machine keep N <= 16; 32 and 64 need a machine of their own.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import resource
import secrets
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from hivemind.p2p import P2P

from swarm.averaging.allreduce import AllReduceRound
from swarm.averaging.group import GroupView
from swarm.averaging.hierarchy import HierarchicalRound
from swarm.averaging.layout import TensorLayout
from swarm.averaging.service import AggregateService
from swarm.averaging.subgroups import plan_hierarchy
from swarm.compression.codecs import get_codec


def count_streams(p2p: P2P) -> list[str]:
    """Record the peer of every stream this P2P opens from now on (the instance's method is wrapped)."""
    opened: list[str] = []
    original = p2p.call_binary_stream_handler   # under iterate_protobuf_handler and the members' ReplyStream alike

    def counting(peer_id, *args, **kwargs):
        opened.append(str(peer_id))
        return original(peer_id, *args, **kwargs)

    p2p.call_binary_stream_handler = counting  # type: ignore[method-assign]
    return opened


async def start_members(n: int) -> tuple[list[P2P], list[AggregateService]]:
    """n P2P daemons on loopback, each with an aggregate service, all bootstrapped from the first (also the
    integration tests' members: tests/integration/test_allreduce.py)."""
    first = await P2P.create()
    members = [first]
    maddrs = await first.get_visible_maddrs()
    for _ in range(n - 1):
        members.append(await P2P.create(initial_peers=maddrs))
    services = []
    for p in members:
        service = AggregateService(p)
        await service.start()
        services.append(service)
    return members, services


EXACT = 0.01   # the largest difference from the weighted mean a round of these values may have (see _one_round)


async def _one_round(members: list[P2P], services: list[AggregateService], layout: TensorLayout, values: list[list[torch.Tensor]],
                     max_group_size: int, timeout: float) -> dict[str, Any]:
    n = len(members)
    ids = tuple(str(p.peer_id) for p in members)
    roles, weights, shares = ("trainer",) * n, tuple(float(1 + i % 5) for i in range(n)), (1.0 / n,) * n
    plan = plan_hierarchy(roles, shares, max_group_size)
    round_id = secrets.token_bytes(16)
    rounds: list[Any] = []
    for i, p in enumerate(members):
        group = GroupView(round_id=round_id, peer_ids=ids, roles=roles, weights=weights, shares=shares, my_index=i, timeout=timeout,
                          max_group_size=max_group_size if plan is not None else 0)
        if plan is None:
            flat = AllReduceRound(p, group, layout, values[i], sender_timeout=5.0)
            services[i].open(flat)
            rounds.append(flat)
        else:
            rounds.append(HierarchicalRound(p, group, layout, values[i], plan, service=services[i], chunk_elements=2**17,
                                            sender_timeout=5.0, column_silence=5.0, column_seconds=timeout / 2))
    started = time.monotonic()

    async def timed(r: Any) -> tuple[Any, float]:
        out = await r.run()
        return out, time.monotonic() - started

    outcomes = await asyncio.gather(*(timed(r) for r in rounds), return_exceptions=True)
    if plan is None:
        for service in services:
            service.close(round_id)
    ok = [o for o in outcomes if not isinstance(o, BaseException)]
    identical = all(all(torch.equal(a, b) for a, b in zip(ok[0][0], other[0])) for other in ok[1:]) if ok else False
    # identical is not enough: a round whose reducers excluded senders is identical and wrong. fp16 on both ways
    # leaves about 1e-3 of error on these N(0, 1) values; a missing sender leaves about 1/N of one, far above EXACT.
    mean = [sum(w * v[b] for w, v in zip(weights, values)) / sum(weights) for b in range(len(values[0]))]
    error = max((float((a - m).abs().max()) for o in ok for a, m in zip(o[0], mean)), default=float("nan"))
    return {"committed": len(ok), "identical": identical, "max_error": error, "exact": error <= EXACT,
            "seconds": max((o[1] for o in ok), default=float("nan")),
            "subgroups": len(plan.subgroups) if plan is not None else 1,
            "errors": sorted({f"{type(o).__name__}: {o}"[:200] for o in outcomes if isinstance(o, BaseException)})}


async def bench(n: int, rounds: int, params: int, max_group_size: int, timeout: float, compare_flat: bool = False) -> dict[str, Any]:
    members, services = await start_members(n)
    try:
        opened = [count_streams(p) for p in members]
        layout = TensorLayout.build([(params,)], lambda i, numel: get_codec("fp16"))
        generator = torch.Generator().manual_seed(n)
        values = [layout.flatten([torch.randn(params, generator=generator)]) for _ in range(n)]
        results, streams, flat = [], [], []
        for _ in range(rounds):
            before = [len(o) for o in opened]
            results.append(await _one_round(members, services, layout, values, max_group_size, timeout))
            streams.append([len(o) - b for o, b in zip(opened, before)])
            if compare_flat:   # the same members right after, so that both see the machine's load of the moment
                flat.append(await _one_round(members, services, layout, values, n, timeout))
        committed = [r for r in results if r["committed"] == n]
        per_peer = [s for rnd in streams for s in rnd]
        flat_committed = [r["seconds"] for r in flat if r["committed"] == n]
        return {
            **({"flat_median_round_s": statistics.median(flat_committed) if flat_committed else float("nan"),
                "flat_rounds_committed": len(flat_committed)} if compare_flat else {}),
            "peers": n, "max_group_size": max_group_size, "subgroups": results[0]["subgroups"], "params": params,
            "rounds_attempted": rounds, "rounds_committed": len(committed),
            "peer_rounds_committed": sum(r["committed"] for r in results), "peer_rounds": n * rounds,
            "identical_in_every_round": all(r["identical"] for r in results),
            "exact_in_every_round": all(r["exact"] for r in results),   # equal to the weighted mean of all N (fp16 error)
            "max_error": max(r["max_error"] for r in results),
            **({"flat_exact_in_every_round": all(r["exact"] for r in flat), "flat_max_error": max(r["max_error"] for r in flat)}
               if compare_flat else {}),
            "median_round_s": statistics.median(r["seconds"] for r in committed) if committed else float("nan"),
            "streams_per_peer_per_round_max": max(per_peer), "streams_per_peer_per_round_mean": statistics.fmean(per_peer),
            "streams_goal_2sqrtN": 2 * math.sqrt(n), "flat_streams": n - 1,
            "errors": sorted({e for r in results for e in r["errors"]}),
        }
    finally:
        for service in services:
            service.stop()
        for p in members:
            await p.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", default="8,16", help="comma-separated N")
    parser.add_argument("--max-group-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--params", type=int, default=1_000_000, help="values per vector")
    parser.add_argument("--timeout", type=float, default=120.0, help="each round's deadline")
    parser.add_argument("--compare-flat", action="store_true", help="after each round, the same round flat (one group)")
    parser.add_argument("--churn", type=float, default=0.0, help="kills per minute (not implemented yet)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.churn:
        parser.error("--churn is not implemented yet")
    peers = [int(x) for x in args.peers.split(",") if x]
    if any(n < 2 for n in peers) or args.max_group_size < 2 or args.rounds < 1:
        parser.error("need N >= 2, --max-group-size >= 2 and --rounds >= 1")
    rows = []
    for n in peers:
        row = asyncio.run(bench(n, args.rounds, args.params, args.max_group_size, args.timeout, args.compare_flat))
        row["peak_rss_mib_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
        print(f"N={n}: {row['subgroups']} subgroups, {row['rounds_committed']}/{row['rounds_attempted']} rounds committed, "
              f"identical={row['identical_in_every_round']}, exact={row['exact_in_every_round']} (max error {row['max_error']:.1e}), "
              f"median {row['median_round_s']:.2f}s, "
              f"streams/peer/round max {row['streams_per_peer_per_round_max']} (2 sqrt N = {row['streams_goal_2sqrtN']:.1f}, flat {n - 1})"
              + (f"; flat round median {row['flat_median_round_s']:.2f}s, exact={row['flat_exact_in_every_round']}" if args.compare_flat else ""))
    report = {"benchmark": "scale", "python": sys.version.split()[0], "machine": platform.machine(), "rows": rows,
              "load_avg": list(os.getloadavg())}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
