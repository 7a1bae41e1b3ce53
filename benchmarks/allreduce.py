"""One averaging round on an emulated network: swarm vs hivemind's averager vs gloo, against the LP bound.

    python -m benchmarks.allreduce --scenario mini-hetero --params 5M --json results/allreduce-mini-hetero.json

For each system (each on a fresh emulated network of the scenario, needs root), it times >= 3 rounds and
reports the median, with fp32 values and again with fp16 on the wire:

- `swarm`: swarm's butterfly all-reduce with LP shares from its own bandwidth estimates
  (Collaboration.average, as the collaborative optimizer calls it). The estimates start at the prior,
  so the first `--warmup` rounds are run and reported apart (`first_round_s` is the very first, on
  uniform shares), then `--rounds` rounds are measured.
- `hivemind_uniform`: hivemind.averaging.DecentralizedAverager, no bandwidths (uniform parts).
- `hivemind_tuned`: the same with each peer's bandwidth typed in (min of its upload and download).
- `gloo`: torch.distributed all_reduce over gloo (ring). gloo needs every rank reachable, so NAT filters
  are lifted for it ("nat_lifted": true), and it has no auxiliary peers (they sit out).

A round's seconds: for swarm, the slowest member's all-reduce (from group formation to its last byte);
for hivemind, from the trigger (matchmaking done) to the slowest member's result; for gloo, the slowest
rank's all_reduce after a barrier. Matchmaking is timed apart. `lp_bound_s` is DeDLOC's LP optimum
(swarm.averaging.balancing) for the scenario's links and the vector's bytes; ratio_to_bound = seconds / lp_bound_s.
Writes JSON and a PNG bar chart next to it.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from swarm.simulate.emulate import Emulation, gather, run_allreduce
from swarm.simulate.network import ROUTER_ADDRESS, require_root
from swarm.simulate.scenario import MBIT, Scenario, load_scenario, parse_count

logger = logging.getLogger("benchmarks.allreduce")
SYSTEMS = ("swarm", "hivemind_uniform", "hivemind_tuned", "gloo")
# also accepted: swarm_robust_off, swarm with robust mode off (the peers here form an open run, where it is on), to
# measure robust mode's cost on the same network (issue 16)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def bench_swarm(scenario: Scenario, rounds: int, warmup: int, log_dir: Path, say: Callable[[str], None],
                engine: dict[str, Any] | None = None) -> dict[str, Any]:
    total = warmup + rounds
    report = run_allreduce(scenario.with_workload(rounds=total), log_dir, progress=say, engine_overrides=engine)
    per_round = [r["seconds"] if r["ok"] == len(r["peers"]) else float("nan") for r in report["rounds"]]
    measured = [s for s in per_round[warmup:] if s == s]
    return {
        "seconds": _median(measured), "rounds": per_round[warmup:], "warmup_rounds": per_round[:warmup],
        "first_round_s": per_round[0], "shares": report["rounds"][-1].get("shares"),
        "failed_rounds": sum(1 for s in per_round if s != s),
        # a round fails when any member misses a part: say who, and why, in the report
        "failures": [{"round": i, "ok": r["ok"], "of": len(r["peers"]),
                      "errors": {p["name"]: p.get("error", "") for p in r["peers"] if not p.get("ok")}}
                     for i, r in enumerate(report["rounds"]) if r["ok"] < len(r["peers"])],
        # the last round per peer: what it sent and how fast it took its links to be (the LP's inputs for the next)
        "last_round_peers": [{k: p.get(k) for k in ("name", "ok", "seconds", "bytes_sent", "bytes_received", "upload_est",
                                                     "download_est", "send_seconds", "receive_seconds")}
                             for p in report["rounds"][-1]["peers"]],
        # whether every committer holds the same result, and each peer's hash, error and exclusions when not
        "inconsistent": [{"round": i, "peers": [{k: p.get(k) for k in ("name", "ok", "hash", "part_hashes", "max_error", "group", "excluded", "recovered", "refetches", "error")}
                                                for p in r["peers"]]}
                         for i, r in enumerate(report["rounds"]) if not r["consistent"]],
        "matchmaking_s": _median([max(p["wall"] - p["seconds"] for p in r["peers"] if p.get("ok")) for r in report["rounds"] if r["ok"]]),
    }


def bench_hivemind(scenario: Scenario, rounds: int, warmup: int, log_dir: Path, tuned: bool, say: Callable[[str], None]) -> dict[str, Any]:
    workload = scenario.workload
    timeout = _timeout(scenario)
    with Emulation(scenario, log_dir) as emu:
        boot = emu.python(None, "benchmarks.workers.hivemind_averager", ["--bootstrap", "--host", ROUTER_ADDRESS], "hivemind-bootstrap")
        initial = [m for m in boot.expect("ready", 120)["maddrs"] if ROUTER_ADDRESS in m]
        procs = []
        for p in emu.peers:
            args = ["--host", emu.network.address(p.index), "--initial-peers", *initial, "--index", str(p.index),
                    "--peers", str(len(emu.peers)), "--params", str(workload.params), "--compression", workload.compression,
                    "--role", p.role, "--timeout", str(timeout)]
            if tuned:
                args += ["--bandwidth", f"{min(p.upload_bps, p.download_bps) / MBIT:.6g}"]
            procs.append(emu.python(p.index, "benchmarks.workers.hivemind_averager", args, f"hivemind{p.index}-{p.name}"))
        gather(procs, "ready", 240)
        say(f"hivemind{'_tuned' if tuned else '_uniform'}: {len(procs)} peers up")
        per_round, matchmaking = [], []
        for r in range(warmup + rounds):
            for proc in procs:
                proc.send(cmd="match", round=r)
            matched = gather(procs, "matched", timeout + 30)
            matchmaking.append(max(m["seconds"] for m in matched))
            for proc in procs:
                proc.send(cmd="go", round=r)
            done = gather(procs, "round", timeout + 30)
            ok = all(m["ok"] for m in matched) and all(d["ok"] and d.get("group") in (None, len(procs)) for d in done)
            seconds = max(d["seconds"] for d in done) if ok else float("nan")
            per_round.append(seconds)
            say(f"  round {r}: {seconds:.2f}s (matchmaking {matchmaking[-1]:.2f}s){'' if ok else ' FAILED: ' + json.dumps(done)[:300]}")
    measured = [s for s in per_round[warmup:] if s == s]
    return {"seconds": _median(measured), "rounds": per_round[warmup:], "warmup_rounds": per_round[:warmup],
            "failed_rounds": sum(1 for s in per_round if s != s), "matchmaking_s": _median(matchmaking)}


def bench_gloo(scenario: Scenario, rounds: int, warmup: int, log_dir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    workload = scenario.workload
    has_nat = any(p.role == "client" for p in scenario.peers_expanded())
    with Emulation(scenario, log_dir, nat_filters=False) as emu:
        ranks = [p for p in emu.peers if p.brings]
        master = emu.network.address(ranks[0].index)
        procs = []
        for rank, p in enumerate(ranks):
            args = ["--rank", str(rank), "--world", str(len(ranks)), "--master", master, "--params", str(workload.params),
                    "--compression", workload.compression, "--timeout", str(_timeout(scenario) * 2)]
            procs.append(emu.python(p.index, "benchmarks.workers.gloo_allreduce", args, f"gloo{rank}-{p.name}"))
        gather(procs, "ready", 240)
        say(f"gloo: {len(procs)} ranks up")
        per_round = []
        for r in range(warmup + rounds):
            for proc in procs:
                proc.send(cmd="go", round=r)
            done = gather(procs, "round", _timeout(scenario) * 2 + 30)
            per_round.append(max(d["seconds"] for d in done))
            say(f"  round {r}: {per_round[-1]:.2f}s")
    return {"seconds": _median(per_round[warmup:]), "rounds": per_round[warmup:], "warmup_rounds": per_round[:warmup],
            "nat_lifted": has_nat, "ranks": len(procs), "aux_sit_out": sum(1 for p in scenario.peers_expanded() if not p.brings)}


def probe_tcp(scenario: Scenario, log_dir: Path, seconds: float = 6.0) -> dict[str, Any]:
    """Raw TCP goodput of the slowest peer's links, both ways at once, on the same emulated network.

    The LP bound assumes links carry their nominal rate; TCP through tbf carries about 95% of it at best
    (headers), less on a loaded machine. This is the reference for how close to the bound any system can get.
    """
    with Emulation(scenario, log_dir, nat_filters=False) as emu:
        probe = min(emu.peers, key=lambda p: min(p.upload_bps, p.download_bps))
        others = sorted((p for p in emu.peers if p.index != probe.index), key=lambda p: -min(p.upload_bps, p.download_bps))[:3]
        down_bytes = int(probe.download_bps * seconds / len(others))
        up_bytes = int(probe.upload_bps * seconds / len(others))
        servers = [emu.python(p.index, "benchmarks.workers.tcp_probe", ["--serve", emu.network.address(p.index), "--bytes", str(down_bytes)],
                              f"tcp-serve{p.index}") for p in others]
        gather(servers, "ready", 60)
        client = emu.python(probe.index, "benchmarks.workers.tcp_probe",
                            ["--connect", ",".join(emu.network.address(p.index) for p in others), "--bytes", str(up_bytes)], "tcp-client")
        result = client.expect("result", seconds * 10 + 60)
        received = gather(servers, "received", seconds * 10 + 60)
    up = sum(r["bytes"] for r in received) / max(r["seconds"] for r in received) / probe.upload_bps
    down = result["download_bps"] / probe.download_bps
    return {"peer": probe.name, "upload_efficiency": up, "download_efficiency": down, "efficiency": min(up, down)}


def _timeout(scenario: Scenario) -> float:
    from swarm.averaging.balancing import round_seconds, uniform_shares

    links = [p.link() for p in scenario.peers_expanded()]
    return max(60.0, 5 * round_seconds(scenario.vector_bytes(), links, uniform_shares(links)) + 30)


def run_benchmark(scenario: Scenario, systems: list[str], rounds: int, warmup: int, log_root: Path,
                  say: Callable[[str], None] = print) -> dict[str, Any]:
    vector_bytes = scenario.vector_bytes()
    bound = scenario.lp_bound(vector_bytes)
    say(f"{scenario.name} {scenario.workload.compression}: {scenario.size} peers, {vector_bytes / 1e6:.1f} MB, LP bound {bound:.2f}s")
    results: dict[str, Any] = {}
    for system in systems:
        started = time.monotonic()
        log_dir = log_root / f"{system}-{scenario.workload.compression}"
        try:
            if system == "swarm":
                result = bench_swarm(scenario, rounds, warmup, log_dir, say)
            elif system == "swarm_robust_off":
                result = bench_swarm(scenario, rounds, warmup, log_dir, say, engine={"robust": "off"})
            elif system.startswith("hivemind"):
                result = bench_hivemind(scenario, rounds, 1, log_dir, system == "hivemind_tuned", say)
            elif system == "gloo":
                result = bench_gloo(scenario, rounds, 1, log_dir, say)
            else:
                raise ValueError(f"unknown system {system}")
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one system failing must not lose the others' figures
            logger.exception("%s failed", system)
            result = {"seconds": float("nan"), "error": f"{type(e).__name__}: {e}"[:500]}
        result["ratio_to_bound"] = result["seconds"] / bound if bound > 0 else float("nan")
        result["wall_s"] = time.monotonic() - started
        results[system] = result
        say(f"{system}: {result['seconds']:.2f}s = {result['ratio_to_bound']:.2f}x bound")
    return {"vector_bytes": vector_bytes, "lp_bound_s": bound, "results": results}


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # the first section is the first codec run: fp32 ("none") unless only fp16 was asked for
    first = "fp16" if report.get("compression") == "fp16" else "fp32"
    sections = [(first, report)] + ([("fp16", report["fp16"])] if "fp16" in report else [])
    fig, axes = plt.subplots(1, len(sections), figsize=(5.5 * len(sections), 4), squeeze=False)
    for ax, (label, section) in zip(axes[0], sections):
        names = list(section["results"])
        values = [section["results"][n]["seconds"] for n in names]
        ax.bar(names, values, color=["tab:green" if n == "swarm" else "tab:gray" for n in names])
        ax.axhline(section["lp_bound_s"], color="tab:red", linestyle="--", label=f"LP bound {section['lp_bound_s']:.2f}s")
        for x, v in enumerate(values):
            if v == v:
                ax.text(x, v, f"{v:.1f}s", ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{report['scenario']}: {section['vector_bytes'] / 1e6:.0f} MB {label}")
        ax.set_ylabel("seconds per all-reduce (median)")
        ax.tick_params(axis="x", labelrotation=20)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from swarm.cli import prefer_huge_pages

    prefer_huge_pages()  # inherited by the peers this benchmark starts
    parser = argparse.ArgumentParser(prog="python -m benchmarks.allreduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", required=True)
    parser.add_argument("--params", type=parse_count, help="values per vector (default: the scenario's)")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per system (median)")
    parser.add_argument("--warmup", type=int, default=2, help="swarm: rounds before measuring (bandwidth estimates converge)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--compression", default="both", choices=["none", "fp16", "both"])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--log-dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname).1s %(name)s: %(message)s")
    try:
        require_root("benchmarks.allreduce")
    except Exception as e:
        print(f"benchmarks.allreduce: {e}", file=sys.stderr)
        return 2
    if args.rounds < 3:
        print("benchmarks.allreduce: --rounds must be at least 3 (the result is a median)", file=sys.stderr)
        return 2
    scenario = load_scenario(args.scenario).with_workload("allreduce", params=args.params)
    systems = [s for s in args.systems.split(",") if s]
    log_root = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-allreduce-"))
    say = lambda s: print(s, flush=True)  # noqa: E731
    codecs = ["none", "fp16"] if args.compression == "both" else [args.compression]
    report: dict[str, Any] = {
        "benchmark": "allreduce", "scenario": scenario.name, "peers": scenario.size, "params": scenario.workload.params,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": _machine(),
        "bandwidth_divisor": scenario.bandwidth_divisor, "rounds": args.rounds, "swarm_warmup": args.warmup,
    }
    try:
        report["tcp_probe"] = probe_tcp(scenario, log_root / "tcp-probe")
        eff = report["tcp_probe"]["efficiency"]
        say(f"raw TCP on the slowest peer's links: {eff:.0%} of the nominal rate (both ways at once)")
    except Exception as e:  # a reference, not a result: go on without it
        report["tcp_probe"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    for codec in codecs:
        section = run_benchmark(scenario.with_workload(compression=codec), systems, args.rounds, args.warmup, log_root, say)
        eff = report["tcp_probe"].get("efficiency")
        if eff:
            section["tcp_bound_s"] = section["lp_bound_s"] / eff  # the bound at the goodput raw TCP reached
            for result in section["results"].values():
                result["ratio_to_tcp_bound"] = result["seconds"] / section["tcp_bound_s"]
        if codec == codecs[0]:
            report.update(section | {"compression": codec})
        else:
            report[codec] = section
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n")
    plot(report, args.json.with_suffix(".png"))
    print(f"wrote {args.json} and {args.json.with_suffix('.png')}")
    return 0


def _machine() -> str:
    import os

    try:
        with open("/proc/loadavg") as f:
            load = f.read().split()[0]
    except OSError:
        load = "?"
    return f"{platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()}, load {load} at start"


if __name__ == "__main__":
    sys.exit(main())
