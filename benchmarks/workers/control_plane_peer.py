"""Toy trainers whose P2P bytes are counted per protocol (benchmarks.control_plane's peers).

    python -m benchmarks.workers.control_plane_peer --run-id R [--initial-peers MADDR] --target T [--count K]

Each of the `--count` peers of this process (a full peer each: its own p2p daemon, DHT node, engine loop and
training thread) trains a small MLP (micro-batches of 8, `--step-sleep` between them) in a swarm whose global
batch is `--target` samples (10**9: no round ever starts, only the control plane runs). Several peers share one
process so that 64 fit in this machine's memory: one peer alone is ~330 MB (263 MB of it the interpreter with
torch and hivemind, 64 MB its p2pd); the bytes counted are the process's, i.e. the sum over its peers. Prints
JSON events on stdout: `ready` (the first peer's multiaddr) once all joined, then `counts` (the per-protocol
bytes so far, the rounds completed, summed over its peers) each time the parent writes `{"cmd": "mark"}` on
stdin; `{"cmd": "stop"}` leaves.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict

import torch

import swarm
from benchmarks.protocol_bytes import ProtocolBytes
from swarm.config import EngineConfig


def _emit(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _ticks(stat_path: str) -> int:
    fields = open(stat_path).read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime


def cpu_seconds() -> dict[str, float]:
    """CPU seconds used so far by this process's threads, grouped by name (train, swarm-engine, ...), and by its child
    processes by command (p2pd, the reapers' python): where an idle peer's CPU goes, per part."""
    hz = os.sysconf("SC_CLK_TCK")
    names = {t.native_id: t.name.rstrip("0123456789") for t in threading.enumerate()}
    used: dict[str, float] = defaultdict(float)
    for tid in os.listdir("/proc/self/task"):
        try:
            used[names.get(int(tid), "native")] += _ticks(f"/proc/self/task/{tid}/stat") / hz
            children = open(f"/proc/self/task/{tid}/children").read().split()
        except OSError:   # a thread that just ended
            continue
        for pid in children:
            try:
                comm = open(f"/proc/{pid}/comm").read().strip()
                used[f"child:{comm}"] += _ticks(f"/proc/{pid}/stat") / hz
            except OSError:
                continue
    return dict(used)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--target", type=int, default=10**9)
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summaries", action="store_true", help="EngineConfig.progress_summaries on")
    parser.add_argument("--full-reads", action="store_true", help="EngineConfig.progress_replicas off (every read and "
                        "publish traverses the DHT)")
    parser.add_argument("--count", type=int, default=1, help="peers in this process")
    parser.add_argument("--params", type=int, default=0, help="values added to each peer's model (a vector of real "
                        "size: the rounds then move its bytes, not a toy's 2 KB)")
    args = parser.parse_args()
    # timestamps, so that one round's lines can be lined up across the processes' logs; more with SWARM_BENCH_LOG=INFO
    logging.basicConfig(level=os.environ.get("SWARM_BENCH_LOG", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s.%(msecs)03d %(levelname).1s %(name)s: %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(1)
    counter = ProtocolBytes(args.run_id)
    counter.install()
    cfg = EngineConfig(target_batch_size=args.target, compression="fp16", averaging_timeout=15, sender_timeout=3.0,
                       matchmaking_timeout=10.0, gather_timeout=1.5, progress_summaries=args.summaries,
                       progress_replicas=not args.full_reads)
    stop = threading.Event()
    peers = []
    try:
        for k in range(args.count):
            torch.manual_seed(1234)
            model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
            if args.params > 0:   # its gradient is a fixed random direction: cheap to compute, incompressible to fp16
                model.register_parameter("bulk", torch.nn.Parameter(torch.zeros(args.params)))
            # the first peer of the first process has no one to join; the others of this process join through it
            initial = args.initial_peers or ([peers[0][0].visible_maddrs()[0]] if peers else [])
            collab = swarm.join(run_id=args.run_id, initial_peers=initial, config=cfg)
            peers.append((collab, model, collab.optimizer(model.parameters(), torch.optim.SGD, lr=0.01)))

        reported = [0] * len(peers)
        # each peer's view size, sampled every second between marks: is a small view one that never grew, or one that
        # shrank, and how did that peer read the swarm meanwhile (issue 15's views of 1 peer at 64)
        view_samples: list[list[int]] = [[] for _ in peers]
        views_lock = threading.Lock()

        def watch_views() -> None:
            while not stop.wait(1.0):
                with views_lock:
                    for k, (c, _, _) in enumerate(peers):
                        view_samples[k].append(len(c.tracker.view.peers))

        def views_since_mark() -> list[dict]:
            with views_lock:
                out = [{"peer": f"{args.seed}.{k}", "min": min(v, default=0), "median": sorted(v)[len(v) // 2] if v else 0,
                        "last": v[-1] if v else 0, "samples": len(v), "small": sum(1 for x in v if x <= 2),
                        "reads": dict(c.tracker.reads), "dht_peers": c.node.dht_peers() if c.node is not None else None}
                       for k, ((c, _, _), v) in enumerate(zip(peers, view_samples))]
                for v in view_samples:
                    v.clear()
            return out

        def commands() -> None:
            for line in sys.stdin:
                try:
                    cmd = json.loads(line).get("cmd")
                except (json.JSONDecodeError, AttributeError):
                    continue
                if cmd == "mark":
                    reports = []   # the rounds each peer applied since the last mark: who committed what
                    for k, (_, _, opt) in enumerate(peers):
                        for r in list(opt.history)[reported[k]:]:
                            reports.append({"peer": f"{args.seed}.{k}", "round_id": r.round_id, "epoch": r.epoch,
                                            "hash": r.params_hash, "group": r.group_size, "seconds": r.round_seconds,
                                            "predicted": r.predicted_seconds, "subgroups": r.subgroups})
                        reported[k] = len(opt.history)
                    _emit("counts", time=time.monotonic(), bytes=counter.snapshot(), peers=len(peers), cpu=cpu_seconds(),
                          reports=reports, failed=sum(opt.rounds_failed for _, _, opt in peers),
                          rounds=sum(opt.rounds_completed for _, _, opt in peers), epoch=max(opt.epoch for _, _, opt in peers),
                          seen=min(len(c.tracker.view.peers) for c, _, _ in peers), views=views_since_mark(),
                          reads={k: sum(c.tracker.reads.get(k, 0) for c, _, _ in peers) for k in ("full", "summary", "aggregated", "partial")})
                elif cmd == "stop":
                    break
            stop.set()

        def train(k: int, model: torch.nn.Module, opt) -> None:
            gen = torch.Generator().manual_seed(args.seed * 1000 + k)
            w_true = torch.randn(32, 1, generator=torch.Generator().manual_seed(7))
            bulk = torch.randn(args.params, generator=gen) if args.params > 0 else None
            while not stop.is_set():
                x = torch.randn(8, 32, generator=gen)
                loss = torch.nn.functional.mse_loss(model(x), x @ w_true)
                if bulk is not None:
                    loss = loss + (model.bulk * bulk).sum() * 1e-6
                loss.backward()
                opt.step(samples=8)
                opt.zero_grad()
                time.sleep(args.step_sleep)

        trainers = [threading.Thread(target=train, args=(k, model, opt), name=f"train{k}", daemon=True)
                    for k, (_, model, opt) in enumerate(peers)]
        _emit("ready", maddr=peers[0][0].visible_maddrs()[0], peers=len(peers))
        threading.Thread(target=commands, name="commands", daemon=True).start()
        threading.Thread(target=watch_views, name="views", daemon=True).start()
        for t in trainers:
            t.start()
        stop.wait()
        for t in trainers:
            t.join(timeout=30)
    finally:
        for collab, _, _ in peers:
            collab.shutdown()


if __name__ == "__main__":
    main()
