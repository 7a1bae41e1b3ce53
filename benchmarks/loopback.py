"""swarm's all-reduce on loopback against the transport's ceiling and against hivemind's averager.

    python -m benchmarks.loopback [--params 16M] [--rounds 3] [--json results/loopback.json] [--profile DIR]

Three measurements in one run, each with two peers (processes) on 127.0.0.1, no shaping:

- `p2p_stream`: the raw throughput of one hivemind P2P stream carrying PartChunk messages of one chunk
  (benchmarks.workers.p2p_stream): the ceiling of the transport swarm's all-reduce runs on.
- `swarm`: swarm's all-reduce of `params` float32 values between two peers (Collaboration.average).
- `hivemind`: hivemind's DecentralizedAverager on the same vector (timed from the trigger, after matchmaking).

Throughput of an all-reduce is its bus bandwidth, bytes each peer sends per second (with 2 peers and halves,
each peer sends the vector's size: half its slice of the other's part, half the averaged part back), so it
compares with one stream's bytes per second. Each figure is the median of `rounds` (after one warm-up).
`--profile DIR` also writes a cProfile of each swarm peer's engine thread during the measured rounds and
prints the top functions.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from swarm.simulate.emulate import PeerProcess, gather
from swarm.simulate.scenario import parse_count

MIB = 2**20
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_by_program(procs: list[PeerProcess]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by these processes and everything below them, by program name
    (python, p2pd, the reaper's watchdog). A figure that a busy machine changes less than wall time."""
    from swarm.process.lifecycle import descendants

    totals: dict[str, float] = {}
    for proc in procs:
        for pid in [proc.proc.pid, *descendants(proc.proc.pid)]:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, tail = f.read().rsplit(")", 1)
                fields = tail.split()
                name = head.split("(", 1)[1]
                totals[name] = totals.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
            except (OSError, IndexError, ValueError):
                continue
    return totals


def cpu_seconds(procs: list[PeerProcess]) -> float:
    return sum(cpu_by_program(procs).values())


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def _spawn(procs: list[PeerProcess], log_dir: Path, name: str, module: str, *args: str) -> PeerProcess:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    proc = PeerProcess(name, [sys.executable, "-m", module, *args], log_dir / f"{name}.log", env=env)
    procs.append(proc)
    return proc


def bench_stream(log_dir: Path, mbytes: int, rounds: int) -> dict[str, Any]:
    procs: list[PeerProcess] = []
    try:
        sink = _spawn(procs, log_dir, "sink", "benchmarks.workers.p2p_stream", "--sink")
        maddr = sink.expect("ready", 60)["maddrs"][0]
        rates, sink_cpu = [], []
        for r in range(rounds + 1):
            before = cpu_by_program([sink])
            for attempt in range(3):  # the sink's one-message reply is now and then lost when the stream closes
                source = _spawn(procs, log_dir, f"source{r}-{attempt}", "benchmarks.workers.p2p_stream", "--source", maddr, "--mbytes", str(mbytes))
                try:
                    result = source.expect("result", 300)
                    break
                except Exception:
                    if attempt == 2:
                        raise
                finally:
                    source.stop()
            by_program = _delta(cpu_by_program([sink]), before)
            sink_cpu.append(sum(by_program.values()))
            if r > 0:
                rates.append(result["mib_per_s"])
        # the source's CPU includes its start-up, so only the receiving side is counted: CPU seconds per GiB received
        return {"mib_per_s": statistics.median(rates), "rounds": rates, "mbytes": mbytes,
                "receiver_cpu_s_per_gib": statistics.median(sink_cpu[1:]) / (mbytes / 1024), "receiver_cpu_last_by_program": by_program}
    finally:
        for p in procs:
            p.stop()


def bench_swarm(log_dir: Path, params: int, rounds: int, profile_dir: Path | None) -> dict[str, Any]:
    procs: list[PeerProcess] = []
    try:
        boot = _spawn(procs, log_dir, "swarm-bootstrap", "swarm.simulate.worker", "--mode", "bootstrap", "--run-id", "loopback", "--host", "127.0.0.1")
        initial = boot.expect("ready", 60)["maddrs"]
        engine = json.dumps({"averaging_timeout": 300.0, "sender_timeout": 60.0, "matchmaking_timeout": 60.0})
        peers = []
        for i in range(2):
            extra = ["--profile", str(profile_dir / f"swarm-peer{i}.prof")] if profile_dir else []
            peers.append(_spawn(procs, log_dir, f"swarm{i}", "swarm.simulate.worker", "--mode", "allreduce", "--run-id", "loopback",
                                "--host", "127.0.0.1", "--initial-peers", *initial, "--index", str(i), "--peers", "2",
                                "--trainer-indices", "0,1", "--params", str(params), "--engine", engine, *extra))
        gather(peers, "ready", 120)
        seconds, sent, cpu = [], [], []
        for r in range(rounds + 1):
            for p in peers:
                p.send(cmd="prepare", round=r)
            gather(peers, "prepared", 60)
            before = cpu_by_program(peers)
            for p in peers:
                p.send(cmd="go", round=r)
            reports = gather(peers, "round", 400)
            by_program = _delta(cpu_by_program(peers), before)
            cpu.append(sum(by_program.values()))
            if not all(x["ok"] for x in reports):
                raise RuntimeError(f"swarm round failed: {reports}")
            if r > 0:
                seconds.append(max(x["seconds"] for x in reports))
                sent.append(max(x["bytes_sent"] for x in reports))
        t = statistics.median(seconds)
        return {"seconds": t, "rounds": seconds, "bytes_sent_per_peer": statistics.median(sent),
                "mib_per_s": statistics.median(sent) / t / MIB, "algorithm_mib_per_s": params * 4 / t / MIB,
                "cpu_s_per_round": statistics.median(cpu[1:]), "cpu_s_per_gib_sent": statistics.median(cpu[1:]) / (2 * statistics.median(sent) / 2**30),
                "cpu_last_round_by_program": by_program}
    finally:
        for p in procs:
            p.stop()


def bench_hivemind(log_dir: Path, params: int, rounds: int) -> dict[str, Any]:
    procs: list[PeerProcess] = []
    try:
        boot = _spawn(procs, log_dir, "hivemind-bootstrap", "benchmarks.workers.hivemind_averager", "--bootstrap", "--host", "127.0.0.1")
        initial = boot.expect("ready", 90)["maddrs"]
        peers = [_spawn(procs, log_dir, f"hivemind{i}", "benchmarks.workers.hivemind_averager", "--host", "127.0.0.1",
                        "--initial-peers", *initial, "--index", str(i), "--peers", "2", "--params", str(params), "--timeout", "300")
                 for i in range(2)]
        gather(peers, "ready", 180)
        seconds, cpu = [], []
        for r in range(rounds + 1):
            for p in peers:
                p.send(cmd="match", round=r)
            gather(peers, "matched", 120)
            before = cpu_by_program(peers)
            for p in peers:
                p.send(cmd="go", round=r)
            reports = gather(peers, "round", 400)
            by_program = _delta(cpu_by_program(peers), before)
            cpu.append(sum(by_program.values()))
            if r > 0 and all(x["ok"] for x in reports):
                seconds.append(max(x["seconds"] for x in reports))
        t = statistics.median(seconds) if seconds else float("nan")
        # hivemind's butterfly with 2 peers and equal parts moves the same bytes as swarm's: the vector per peer
        return {"seconds": t, "rounds": seconds, "mib_per_s": params * 4 / t / MIB, "failed_rounds": rounds - len(seconds),
                "cpu_s_per_round": statistics.median(cpu[1:]), "cpu_s_per_gib_sent": statistics.median(cpu[1:]) / (2 * params * 4 / 2**30),
                "cpu_last_round_by_program": by_program}
    finally:
        for p in procs:
            p.stop()


def top_functions(profile_dir: Path, limit: int = 25) -> list[str]:
    files = sorted(profile_dir.glob("swarm-peer*.prof"))
    if not files:
        return []
    stats = pstats.Stats(*[str(f) for f in files])
    rows = []
    for (filename, line, name), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        rows.append((tt, ct, nc, f"{Path(filename).name}:{line}({name})"))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    return [f"{tt:8.2f}s self {tt / total:6.1%}  {ct:8.2f}s cum  {nc:8d} calls  {where}" for tt, ct, nc, where in rows[:limit]]


def main(argv: list[str] | None = None) -> int:
    from swarm.cli import prefer_huge_pages

    prefer_huge_pages()  # inherited by the peers this benchmark starts
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loopback", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=parse_count, default=parse_count("16M"), help="float32 values in the vector")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stream-mbytes", type=int, default=256)
    parser.add_argument("--systems", default="p2p_stream,swarm,hivemind")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/loopback.json"))
    parser.add_argument("--profile", type=Path, help="write cProfiles of the swarm peers' engine threads here")
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-loopback-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    systems = args.systems.split(",")
    report: dict[str, Any] = {"benchmark": "loopback", "params": args.params, "vector_bytes": args.params * 4,
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start",
                              "results": {}}
    for system in systems:
        started = time.monotonic()
        try:
            if system == "p2p_stream":
                result = bench_stream(log_dir, args.stream_mbytes, args.rounds)
            elif system == "swarm":
                result = bench_swarm(log_dir, args.params, args.rounds, args.profile)
            elif system == "hivemind":
                result = bench_hivemind(log_dir, args.params, args.rounds)
            else:
                raise SystemExit(f"unknown system {system}")
        except (RuntimeError, OSError, ValueError, KeyError) as e:  # one system failing must not lose the others' figures
            result = {"mib_per_s": float("nan"), "error": f"{type(e).__name__}: {e}"[:500]}
        except Exception as e:  # NetworkError and the like
            result = {"mib_per_s": float("nan"), "error": f"{type(e).__name__}: {e}"[:500]}
        result["wall_s"] = time.monotonic() - started
        report["results"][system] = result
        print(f"{system}: {result['mib_per_s']:.0f} MiB/s", flush=True)
    report["machine"] += f", {os.getloadavg()[0]:.1f} at end"
    res = report["results"]
    if "swarm" in res and "p2p_stream" in res:
        report["swarm_vs_stream"] = res["swarm"]["mib_per_s"] / res["p2p_stream"]["mib_per_s"]
    if "swarm" in res and "hivemind" in res:
        report["swarm_vs_hivemind"] = res["swarm"]["mib_per_s"] / res["hivemind"]["mib_per_s"]
    if args.profile:
        report["profile_top"] = top_functions(args.profile)
        print("\n".join(report["profile_top"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    _plot(report, args.json.with_suffix(".png"))
    print(json.dumps({k: v for k, v in report.items() if k != "profile_top"}, indent=2))
    return 0


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    values = [report["results"][n]["mib_per_s"] for n in names]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(names, values, color=["tab:blue" if n == "p2p_stream" else "tab:green" if n == "swarm" else "tab:gray" for n in names])
    for x, v in enumerate(values):
        ax.text(x, v, f"{v:.0f}", ha="center", va="bottom")
    ax.set_ylabel("MiB/s per peer (loopback)")
    ax.set_title(f"loopback, {report['vector_bytes'] / 2**20:.0f} MiB fp32, 2 peers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
