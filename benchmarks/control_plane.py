"""What each peer sends beside the rounds, per protocol per second, at several swarm sizes.

    python -m benchmarks.control_plane --peers 4,8,16 [--duration 60] [--phases idle,training] [--summaries] --json PATH

For each N and phase, N toy peers (benchmarks.workers.control_plane_peer) join one swarm on the loopback of
a fresh network namespace (needs root), warm up `--warmup` seconds, then are measured for `--duration`:

- `idle`: the global batch is 10**9 samples, so no round ever starts: only the control plane runs
  (progress records written and read, DHT maintenance, metrics records);
- `training`: a global batch of `--target` samples (rounds every second or two), everything runs.

Per category (benchmarks.protocol_bytes: progress.read, progress.write, metrics.write, dht.maintenance,
matchmaking, allreduce, state, clock, access) the mean over peers of the bytes each peer sent (and
received) per second, counted at the protobuf level inside each process; and `wire`: the namespace
loopback's transmitted bytes (every TCP byte any process sent, libp2p framing, encryption and the p2p
daemons' own protocols included) per peer per second, with `p2pd_own` = wire minus the counted sum.
The load average is recorded beside every figure (a shared machine's CPUs slow the peers down).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from swarm.simulate.emulate import PeerProcess, gather

IDLE_TARGET = 10**9


class Namespace:
    """A network namespace with only its loopback up; deleted on exit."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "Namespace":
        subprocess.run(["ip", "netns", "add", self.name], check=True, capture_output=True)
        subprocess.run(["ip", "netns", "exec", self.name, "ip", "link", "set", "lo", "up"], check=True, capture_output=True)
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
            summaries: bool = False) -> dict[str, Any]:
    """One swarm of `n` peers in one phase; the per-peer per-second figures."""
    run_id = f"cp{n}{phase[0]}"
    procs: list[PeerProcess] = []
    with Namespace(f"swcp-{os.getpid()}-{n}-{phase}") as ns:
        try:
            def spawn(i: int, initial: list[str]) -> PeerProcess:
                argv = ["ip", "netns", "exec", ns.name, sys.executable, "-m", "benchmarks.workers.control_plane_peer",
                        "--run-id", run_id, "--target", str(target if phase == "training" else IDLE_TARGET),
                        "--step-sleep", str(step_sleep), "--seed", str(i), *(["--summaries"] if summaries else []),
                        "--initial-peers", *initial]
                proc = PeerProcess(f"peer{i}", argv, log_dir / f"{run_id}-peer{i}.log", env=dict(os.environ))
                procs.append(proc)
                return proc

            first = spawn(0, [])
            maddr = first.expect("ready", 240)["maddr"]
            for i in range(1, n):
                spawn(i, [maddr])
            gather(procs[1:], "ready", 300)
            time.sleep(warmup)
            load_before = _load()
            tx0 = ns.tx_bytes()
            for p in procs:
                p.send(cmd="mark")
            start = gather(procs, "counts", 60)
            time.sleep(duration)
            tx1 = ns.tx_bytes()
            for p in procs:
                p.send(cmd="mark")
            end = gather(procs, "counts", 60)
            load_after = _load()
        finally:
            for p in procs:
                p.stop()
    seconds = [e["time"] - s["time"] for s, e in zip(start, end)]
    sent: dict[str, float] = {}
    received: dict[str, float] = {}
    calls: dict[str, float] = {}
    for s, e, dt in zip(start, end, seconds):
        for into, key in ((sent, "sent"), (received, "received"), (calls, "calls")):
            for cat, b in _delta(e["bytes"].get(key, {}), s["bytes"].get(key, {})).items():
                into[cat] = into.get(cat, 0.0) + b / dt / n
    counted = sum(sent.values())
    wire = (tx1 - tx0) / duration / n
    return {
        "peers": n, "phase": phase, "duration_s": duration, "target": target if phase == "training" else IDLE_TARGET,
        "sent_Bps": dict(sorted(sent.items(), key=lambda kv: -kv[1])),
        "received_Bps": dict(sorted(received.items(), key=lambda kv: -kv[1])),
        "calls_per_s": dict(sorted(calls.items(), key=lambda kv: -kv[1])),
        "max_peer_sent_Bps": max(sum(_delta(e["bytes"]["sent"], s["bytes"]["sent"]).values()) / dt for s, e, dt in zip(start, end, seconds)),
        "control_sent_Bps": sum(v for k, v in sent.items() if k not in ("allreduce", "state")),
        "counted_sent_Bps": counted, "wire_Bps": wire, "p2pd_own_Bps": wire - counted,
        "rounds": [e["rounds"] - s["rounds"] for s, e in zip(start, end)],
        "seen": [e["seen"] for e in end],
        "summaries": summaries,
        # how the peers' refreshes read the swarm in the window: every record, summaries, or as an aggregator
        "reads": {k: sum(e.get("reads", {}).get(k, 0) - s.get("reads", {}).get(k, 0) for s, e in zip(start, end))
                  for k in ("full", "summary", "aggregated")},
        "load": [round(load_before, 2), round(load_after, 2)],
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
    parser.add_argument("--step-sleep", type=float, default=0.05)
    parser.add_argument("--summaries", action="store_true", help="progress summaries on (EngineConfig.progress_summaries)")
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
    runs = []
    for n in [int(x) for x in args.peers.split(",")]:
        for phase in args.phases.split(","):
            result = measure(n, phase, duration=args.duration, warmup=args.warmup, target=args.target,
                             step_sleep=args.step_sleep, log_dir=log_dir, summaries=args.summaries)
            result["label"] = args.label
            runs.append(result)
            top = ", ".join(f"{k} {v / 1000:.1f}" for k, v in list(result["sent_Bps"].items())[:5])
            print(f"{n} peers, {phase}: control {result['control_sent_Bps'] / 1000:.1f} KB/s per peer, wire {result['wire_Bps'] / 1000:.1f} "
                  f"(p2pd own {result['p2pd_own_Bps'] / 1000:.1f}); {top}; load {result['load']}", flush=True)
    report: dict[str, Any] = {"runs": runs}
    if args.json:
        if args.append and args.json.exists():
            report["runs"] = json.loads(args.json.read_text())["runs"] + runs
        report["host"] = {"python": platform.python_version(), "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).isoformat()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    print(f"logs: {log_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
