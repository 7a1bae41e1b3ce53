"""What each peer sends beside the rounds, per protocol per second, at several swarm sizes.

    python -m benchmarks.control_plane --peers 4,8,16 [--duration 60] [--phases idle,training] [--summaries] [--per-process K]
        [--step-sleep S] [--target-per-peer K] [--churn K [--churn-pool P]] [--params V] --json PATH

For each N and phase, N toy peers (benchmarks.workers.control_plane_peer) join one swarm on the loopback of
a fresh network namespace (needs root), warm up `--warmup` seconds, then are measured for `--duration`:

- `idle`: the global batch is 10**9 samples, so no round ever starts: only the control plane runs
  (progress records written and read, DHT maintenance, metrics records);
- `training`: a global batch of `--target` samples (rounds every second or two), everything runs.

`--shape-mbit R` shapes the namespace's loopback to R Mbit/s (tc tbf): every byte of every peer crosses it once, so the
swarm shares one link of that rate. `--params V` adds V values to every peer's model, so that the rounds move a real vector (fp16 on the wire) and their
time is the host's bytes and not only its latency (benchmarks.model_vs_real checks the model against both).

Per category (benchmarks.protocol_bytes: progress.read, progress.write, metrics.write, dht.maintenance,
matchmaking, allreduce, state, clock, access) the mean over peers of the bytes each peer sent (and
received) per second, counted at the protobuf level inside each process; and `wire`: the namespace
loopback's transmitted bytes (every TCP byte any process sent, libp2p framing, encryption and the p2p
daemons' own protocols included) per peer per second, with `p2pd_own` = wire minus the counted sum. With several peers to a process and a churn pool the
measured peers are not all the peers (the pool's are not counted), and which of them serve the progress key's
replicas is chance: a protocol's `sent` alone then says whether they do (16 peers: 50 KB/s of reads in one run, 6 in
the next); the mean of `sent` and `received` is the fair figure per peer (benchmarks.model_vs_real uses it).
The load average is recorded beside every figure (a shared machine's CPUs slow the peers down), and where each
peer's CPU goes (`cpu_pct_per_peer`, % of one core: the peer processes' threads by name, `train` being the toy
training itself, and their children by command, `child:p2pd` the p2p daemons).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from swarm.errors import NetworkError
from swarm.simulate.emulate import PeerProcess, gather

IDLE_TARGET = 10**9


class Namespace:
    """A network namespace with only its loopback up; deleted on exit."""

    def __init__(self, name: str, shape_mbit: float = 0.0):
        self.name = name
        self.shape_mbit = shape_mbit

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
        if self.shape_mbit > 0:   # every peer's every byte crosses this loopback once: one shared link of this rate
            # a burst above loopback's 64 KB packets (tbf drops a packet larger than its burst)
            subprocess.run(["ip", "netns", "exec", self.name, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
                            f"{self.shape_mbit}mbit", "burst", "256kb", "latency", "100ms"], check=True, capture_output=True)
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)

    def tx_bytes(self) -> int:
        out = subprocess.run(["ip", "netns", "exec", self.name, "cat", "/sys/class/net/lo/statistics/tx_bytes"],
                             check=True, capture_output=True, text=True).stdout
        return int(out.strip())


def _load() -> float:
    return os.getloadavg()[0]


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def measure(n: int, phase: str, *, duration: float, warmup: float, target: int, step_sleep: float, log_dir: Path,
            summaries: bool = False, full_reads: bool = False, per_process: int = 1, churn: float = 0.0, churn_pool: int = 8,
            params: int = 0, shape_mbit: float = 0.0) -> dict[str, Any]:
    """One swarm of `n` peers in one phase, `per_process` peers to a process; the per-peer per-second figures.
    `churn`: kills per minute in the measured window, each a SIGKILL of one of `churn_pool` single-peer processes and
    its restart at once (a new peer joining); the figures per peer are then the other (stable) peers'."""
    run_id = f"cp{n}{phase[0]}"
    procs: list[PeerProcess] = []
    pool_size = min(churn_pool, n - 2) if churn else 0
    kills = 0
    with Namespace(f"swcp-{os.getpid()}-{n}-{phase}", shape_mbit) as ns:
        try:
            def spawn(i: int, count: int, initial: list[str]) -> PeerProcess:
                argv = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "benchmarks.workers.control_plane_peer",
                        "--run-id", run_id, "--target", str(target if phase == "training" else IDLE_TARGET),
                        "--step-sleep", str(step_sleep), "--seed", str(i), *(["--summaries"] if summaries else []),
                        *(["--full-reads"] if full_reads else []),
                        "--count", str(count), "--params", str(params), "--initial-peers", *initial]
                proc = PeerProcess(f"peer{i}", argv, log_dir / f"{run_id}-peer{i}.log", env=dict(os.environ))
                procs.append(proc)
                return proc

            stable_n = n - pool_size
            counts = [min(per_process, stable_n - start) for start in range(0, stable_n, per_process)] + [1] * pool_size
            first = spawn(0, counts[0], [])
            maddrs = [first.expect("ready", 240)["maddr"]]
            if per_process == 1:
                for i in range(1, n):
                    spawn(i, 1, maddrs)
                gather(procs[1:], "ready", 300)
            else:
                # one process at a time, through the last three that joined: 63 peers joining at once through one
                # bootstrap peer on 2 cores left one unable to reach it ("none of the initial_peers responded")
                for i, count in enumerate(counts[1:], start=1):
                    maddrs.append(spawn(i, count, maddrs[-3:]).expect("ready", 180 + 30 * count)["maddr"])
            stable, pool = procs[:len(counts) - pool_size], procs[len(counts) - pool_size:]
            time.sleep(warmup)
            load_before = _load()
            tx0 = ns.tx_bytes()
            for p in stable:
                p.send(cmd="mark")
            start = gather(stable, "counts", 60)
            began = time.monotonic()
            every = 60.0 / churn if churn else math.inf
            next_kill = began + every / 2
            while time.monotonic() < began + duration:
                time.sleep(max(0.0, min(next_kill, began + duration) - time.monotonic()))
                if time.monotonic() >= next_kill and pool:
                    j = kills % len(pool)
                    victim = pool[j]
                    victim.proc.kill()   # its reaper's watchdog ends its p2pd
                    victim.proc.wait(10)
                    victim.stop()
                    pool[j] = spawn(len(counts) + kills, 1, maddrs[:len(stable)][-3:])   # a new peer in its place
                    kills += 1
                    next_kill += every
            tx1 = ns.tx_bytes()
            for p in stable:
                p.send(cmd="mark")
            end = gather(stable, "counts", 60)
            load_after = _load()
            rejoined = sum(1 for p in pool if any(e.get("event") == "ready" for e in p.history))
        finally:
            for p in procs:
                p.stop()
    n_stable = sum(e.get("peers", 1) for e in end)
    seconds = [e["time"] - s["time"] for s, e in zip(start, end)]
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    calls: dict[str, float] = {}
    streams: dict[str, float] = {}
    for s, e, dt in zip(start, end, seconds):
        for into, key in ((sent, "sent"), (received, "received"), (calls, "calls"), (streams, "streams")):
            for cat, b in _delta(e["bytes"].get(key, {}), s["bytes"].get(key, {})).items():
                into[cat] = into.get(cat, 0.0) + b / dt / n_stable
    counted = sum(sent.values())
    wire = (tx1 - tx0) / duration / n
    rounds = _rounds([r for e in end for r in e.get("reports", [])],
                     failed=sum(e.get("failed", 0) - s.get("failed", 0) for s, e in zip(start, end)),
                     streams=sum(_delta(e["bytes"].get("streams", {}), s["bytes"].get("streams", {})).get("allreduce", 0)
                                for s, e in zip(start, end)))
    cpu: dict[str, float] = {}   # % of one core per peer, by part (the processes' threads by name, their children by command)
    for s, e, dt in zip(start, end, seconds):
        for part, used in e.get("cpu", {}).items():
            cpu[part] = cpu.get(part, 0.0) + 100 * (used - s.get("cpu", {}).get(part, 0.0)) / dt / n_stable
    return {
        "peers": n, "phase": phase, "duration_s": duration, "params": params, "shape_mbit": shape_mbit, "target": target if phase == "training" else IDLE_TARGET,
        "sent_Bps": dict(sorted(sent.items(), key=lambda kv: -kv[1])),
        "received_Bps": dict(sorted(received.items(), key=lambda kv: -kv[1])),
        "calls_per_s": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        # with several peers to a process, its peers' mean: the busiest process's, not the busiest peer's
        "max_peer_sent_Bps": max(sum(_delta(e["bytes"]["sent"], s["bytes"]["sent"]).values()) / dt / e.get("peers", 1)
                                 for s, e, dt in zip(start, end, seconds)),
        "peers_per_process": per_process,
        "control_sent_Bps": sum(v for k, v in sent.items() if k not in ("allreduce", "state")),
        "counted_sent_Bps": counted, "wire_Bps": wire, "p2pd_own_Bps": wire - counted,
        "rounds": [e["rounds"] - s["rounds"] for s, e in zip(start, end)],
        "round_stats": rounds,
        "churn_per_min": churn, "kills": kills, "measured_peers": n_stable,
        "rejoined": rejoined if pool_size else None,   # replacements that were ready by the end of the window
        "seen": [e["seen"] for e in end],
        # the measured peers whose view held 2 peers or fewer at some second of the window: its sizes and its reads
        "small_views": [v for e in end for v in e.get("views", []) if v["samples"] and v["min"] <= 2],
        "summaries": summaries,
        "full_reads": full_reads,
        # how the peers' refreshes read the swarm in the window: every record, summaries, or as an aggregator
        "reads": {k: sum(e.get("reads", {}).get(k, 0) - s.get("reads", {}).get(k, 0) for s, e in zip(start, end))
                  for k in ("full", "summary", "aggregated", "partial")},
        "cpu_pct_per_peer": dict(sorted(((k, round(v, 3)) for k, v in cpu.items() if v > 0), key=lambda kv: -kv[1])),
        "load": [round(load_before, 2), round(load_after, 2)],
    }


def _rounds(reports: list[dict[str, Any]], *, failed: int, streams: float) -> dict[str, Any]:
    """The measured window's rounds from the peers' reports: rounds and peer-rounds committed, the failed attempts,
    whether every round's committers hold identical parameters, round times against their LP bounds (the structure
    used, hierarchical above the group size), and all-reduce streams opened per peer per round."""
    by_round: dict[str, list[dict[str, Any]]] = {}
    for r in reports:
        by_round.setdefault(r["round_id"], []).append(r)
    if not by_round:
        return {"rounds": 0, "peer_rounds": 0, "peer_rounds_failed": failed}
    # one figure per round: its slowest committer's time, its bound as the committers computed it
    seconds = sorted(max(r["seconds"] for r in rs) for rs in by_round.values())
    bounds = sorted(max(r["predicted"] for r in rs) for rs in by_round.values() if all(r["predicted"] == r["predicted"] for r in rs))
    return {
        "rounds": len(by_round),
        "peer_rounds": len(reports),
        "peer_rounds_failed": failed,
        "committed_share": round(len(reports) / (len(reports) + failed), 4),
        "identical_rounds": sum(1 for rs in by_round.values() if len({r["hash"] for r in rs}) == 1),
        "committers_median": statistics.median(len(rs) for rs in by_round.values()),
        "group_median": statistics.median(r["group"] for r in reports),
        "subgroups_max": max(r["subgroups"] for r in reports),
        "round_s_median": round(statistics.median(seconds), 3),
        "lp_bound_s_median": round(statistics.median(bounds), 3) if bounds else None,
        "streams_per_peer_round": round(streams / len(reports), 2),
        # rounds whose committers do not agree: each parameter hash with its peers and the epochs they reached
        "split_rounds": [{"round_id": rid, "hashes": {h: sorted((r["peer"], r["epoch"]) for r in rs if r["hash"] == h)
                                                      for h in {r["hash"] for r in rs}}}
                         for rid, rs in by_round.items() if len({r["hash"] for r in rs}) > 1],
    }


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", default="4,8,16")
    parser.add_argument("--phases", default="idle,training")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--warmup", type=float, default=20)
    parser.add_argument("--target", type=int, default=256)
    parser.add_argument("--target-per-peer", type=int, default=0,
                        help="the training phase's global batch is this many samples per peer (overrides --target), "
                             "so that rounds come about as often at every N")
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--summaries", action="store_true", help="progress summaries on (EngineConfig.progress_summaries)")
    parser.add_argument("--full-reads", action="store_true", help="EngineConfig.progress_replicas off: every progress "
                        "read and publish traverses the DHT (the code before session 21)")
    parser.add_argument("--per-process", type=int, default=1,
                        help="peers to a process (each with its own p2pd): one peer alone takes ~330 MB, so 64 need several")
    parser.add_argument("--churn", type=float, default=0.0, help="kills per minute in the measured window (each restarted)")
    parser.add_argument("--churn-pool", type=int, default=8, help="single-peer processes that the churn kills in turn")
    parser.add_argument("--params", type=int, default=0, help="values added to each peer's model, so that the rounds move "
                        "a real vector (4 bytes each before fp16) and their time can be checked against a model")
    parser.add_argument("--shape-mbit", type=float, default=0.0, help="the namespace's loopback, which every byte of every "
                        "peer crosses once, shaped to this rate (tc tbf): one link that all the swarm shares, so that rounds "
                        "take the time of their bytes rather than of the host's latency")
    parser.add_argument("--label", default="", help="a name for this code version (e.g. before, after)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--append", action="store_true", help="add the runs to an existing --json")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("benchmarks.control_plane needs root (a network namespace per swarm)", file=sys.stderr)
        return 2
    # SIGTERM unwinds like Ctrl-C, so that every peer is stopped and every namespace deleted
    signal.signal(signal.SIGTERM, _interrupt)
    log_dir = Path(tempfile.mkdtemp(prefix="control-plane-"))
    earlier = json.loads(args.json.read_text())["runs"] if args.json and args.append and args.json.exists() else []
    runs: list[dict[str, Any]] = []

    def write() -> None:   # after every run: a swarm size that fails (64 peers on 2 cores) keeps the others' figures
        if args.json:
            report = {"runs": earlier + runs, "host": {"python": platform.python_version(), "cpus": os.cpu_count(),
                                                       "date": datetime.now(timezone.utc).isoformat()}}
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=1) + "\n")

    failed = 0
    for n in [int(x) for x in args.peers.split(",")]:
        for phase in args.phases.split(","):
            try:
                target = args.target_per_peer * n if args.target_per_peer else args.target
                result = measure(n, phase, duration=args.duration, warmup=args.warmup, target=target,
                                 step_sleep=args.step_sleep, log_dir=log_dir, summaries=args.summaries, full_reads=args.full_reads,
                                 per_process=args.per_process,
                                 churn=args.churn, churn_pool=args.churn_pool, params=args.params,
                                 shape_mbit=args.shape_mbit)
            except NetworkError as e:
                failed += 1
                runs.append({"peers": n, "phase": phase, "label": args.label, "summaries": args.summaries,
                             "peers_per_process": args.per_process, "error": str(e)[:1000], "load": [round(_load(), 2)]})
                print(f"{n} peers, {phase}: FAILED: {str(e)[:300]}", flush=True)
                write()
                continue
            result["label"] = args.label
            runs.append(result)
            top = ", ".join(f"{k} {v / 1000:.1f}" for k, v in list(result["sent_Bps"].items())[:5])
            print(f"{n} peers, {phase}: control {result['control_sent_Bps'] / 1000:.1f} KB/s per peer, wire {result['wire_Bps'] / 1000:.1f} "
                  f"(p2pd own {result['p2pd_own_Bps'] / 1000:.1f}); {top}; CPU % of a core per peer "
                  f"{sum(result['cpu_pct_per_peer'].values()):.2f} ({result['cpu_pct_per_peer']}); load {result['load']}", flush=True)
            write()
    print(f"logs: {log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
