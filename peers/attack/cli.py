"""`swarm attack`: a loopback run (coordinator + honest peers) under hostile input, and a JSON report of what held.

    swarm attack --task albert --peers 3 --seconds 20 --report attack.json [--attacks far_epoch,idle_streams]

A command of its own rather than a `swarm chaos` fault kind: chaos faults happen *to* honest peers (a crash,
a stall, a cut) and are injected through them; an attack comes from a stranger with its own identity
(peers.attack.attacker, a separate process) and is judged by other measures: the target's memory and file
descriptors, steps taken before the swarm had its batch, the coordinator's survival. It reuses chaos's process
control (peers.chaos.harness.ChaosSwarm: owned children, restarts, orphan checks, metrics following).

Sequence: start the coordinator and `--peers` trainers, wait for the first global epoch, watch a baseline of a few
rounds, then run each attack kind in turn (items 1-7 of issue 13) for `--seconds`, watching the swarm meanwhile
and `--settle` seconds after; forged_config then starts a newcomer with `swarm join --config` and checks that it
joins. Report (peers.attack.report): coordinator crashes, longest stall vs one round, premature steps, RSS and
fd growth of the target per hostile stream, parameters identical on the honest peers.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

logger = logging.getLogger(__name__)

SETTLE = 8.0
JOIN_TIMEOUT = 300.0


def register_attack(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_run_options
    from . import KINDS

    p = sub.add_parser("attack", help="run a loopback swarm under hostile input and report what held",
                       description="Replay hostile records, messages and streams against a loopback run.")
    add_run_options(p)
    p.add_argument("--peers", type=int, default=3, help="honest trainers")
    p.add_argument("--attacks", help=f"comma-separated kinds (default: all, in this order): {', '.join(KINDS)}")
    p.add_argument("--seconds", type=float, default=20.0, help="how long each attack lasts")
    p.add_argument("--streams", type=int, default=300, help="idle_streams: streams opened at the target")
    p.add_argument("--settle", type=float, default=SETTLE, help="seconds watched after each attack")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="logs and metrics go to RUN_DIR/RUN_ID/")
    p.add_argument("--warmup-timeout", type=float, default=600.0, help="give up if no global epoch by then")
    p.add_argument("--byzantine", metavar="KIND:COUNT[,...]", help="instead of hostile input: runs with COUNT byzantine "
                   "trainers of KIND (sign_flip, gaussian, huge, alie, inflated_weight, lying_reducer, equivocating_reducer) each, "
                   "against an honest run "
                   "(peers.attack.byzantine_run)")
    p.add_argument("--epochs", type=int, default=8, help="--byzantine: global epochs each run trains")
    p.add_argument("--phase-timeout", type=float, default=900.0, help="--byzantine: seconds one run may take")
    p.set_defaults(func=cmd_attack)


def _kinds(text: str | None) -> list[str]:
    from swarm.errors import ConfigError

    from . import KINDS

    kinds = [k.strip() for k in (text or ",".join(KINDS)).split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            raise ConfigError(f"unknown attack {k!r}: one of {', '.join(KINDS)}")
    return kinds


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def proc_fds(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def healthz(dashboard: str) -> bool:
    try:
        with urllib.request.urlopen(dashboard.rstrip("/") + "/healthz", timeout=5) as reply:
            return reply.status == 200
    except Exception:
        return False


def _target(h):
    """The honest trainer the stream attacks aim at: the oldest base peer that has committed a step."""
    for inst in h.peers(base=True):
        if inst.alive and inst.rows and inst.rows[-1].get("peer_id"):
            return inst
    return None


def run_attack(h, kind: str, args: argparse.Namespace, run_id: str) -> dict:
    from swarm.process.lifecycle import set_parent_death_signal

    target = _target(h)
    event: dict = {"kind": kind, "t0": time.monotonic()}
    # the live peers too: a stranger reaches the DHT through anyone (and the coordinator may be the one that fell)
    cmd = [sys.executable, "-m", "peers.attack.attacker", kind, "--run-id", run_id, "--initial-peers", h.bootstrap, *h.peer_maddrs(),
           "--seconds", f"{args.seconds:g}", "--streams", str(args.streams)]
    if target is not None:
        cmd += ["--target", target.rows[-1]["peer_id"]]
        event["target"] = target.name
        event["rss_before_mb"] = proc_rss_mb(target.proc.pid)
        event["fds_before"] = proc_fds(target.proc.pid)
    coordinator_pid = h.coordinator.proc.pid if h.coordinator is not None else None
    log = h.run_dir / f"attack-{kind}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=set_parent_death_signal)
    # the window opens once the attacker has joined: its start-up (imports, p2pd) competes for the CPU, not the swarm
    h.wait_for(lambda: proc.poll() is not None or "READY" in log.read_text(errors="replace"), 120.0)
    event["t0"] = time.monotonic()
    rss, fds = [], []
    deadline = time.monotonic() + args.seconds + 120
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            h.sleep(0.5)
            if target is not None:
                rss.append(proc_rss_mb(target.proc.pid) or 0.0)
                fds.append(proc_fds(target.proc.pid) or 0)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    event["t_attack_end"] = time.monotonic()
    settle_end = time.monotonic() + args.settle
    while time.monotonic() < settle_end:
        h.sleep(0.5)
        if target is not None:
            rss.append(proc_rss_mb(target.proc.pid) or 0.0)
            fds.append(proc_fds(target.proc.pid) or 0)
    if target is not None:
        event["rss_peak_mb"] = round(max(rss, default=0.0), 1)
        event["rss_after_mb"] = proc_rss_mb(target.proc.pid)
        event["fds_peak"] = max(fds, default=None)
        event["fds_after"] = proc_fds(target.proc.pid)
    event["coordinator_alive"] = h.coordinator is not None and h.coordinator.alive and h.coordinator.proc.pid == coordinator_pid
    event["healthz"] = healthz(h.dashboard)
    found = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("RESULT ")]
    event["attacker"] = json.loads(found[-1][7:]) if found else {"error": "no result line (see " + str(log) + ")"}
    if kind == "forged_config":
        event["newcomer"] = _newcomer_joins(h)
    event["t1"] = time.monotonic()
    return event


def _newcomer_joins(h) -> dict:
    """A peer started now with the run's own config file must join although a forged config record is in the DHT."""
    started = time.monotonic()
    inst = h.spawn("newcomer", base=False, worker_seed=50)
    joined = h.wait_for(lambda: "joined run" in inst.log.read_text(errors="replace") or not inst.alive, JOIN_TIMEOUT)
    text = inst.log.read_text(errors="replace")
    refused = next((line for line in text.splitlines() if "this run trains task" in line), None)
    result = {"joined": joined and "joined run" in text, "refused": refused, "seconds": round(time.monotonic() - started, 1)}
    h.stop(inst)
    return result


def cmd_attack(args: argparse.Namespace) -> int:
    from swarm.errors import ConfigError, NetworkError

    from ..chaos.cli import prepare_loopback_run
    from ..chaos.harness import ChaosSwarm
    from ..chaos.report import publish
    from .report import build_report

    if args.byzantine:
        from .byzantine_run import cmd_byzantine, write_report

        report = cmd_byzantine(args)
        write_report(report, args.report)
        attacked = [p for p in report["phases"] if p["robust"] == "on"]
        return 1 if any(p["nan"] or not p["identical_params"] for p in attacked) else 0
    if args.peers < 2:
        raise ConfigError("--peers must be at least 2 (parameters are compared across honest peers)")
    kinds = _kinds(args.attacks)
    config, run_dir, config_path = prepare_loopback_run(args, "attack")
    h = ChaosSwarm(config_path, args.run_dir, run_dir, restart_after=10.0)
    events: list[dict] = []
    baseline = (time.monotonic(), time.monotonic())
    wall = time.monotonic()
    try:
        h.start_coordinator(fresh=True)
        print(f"bootstrap peer: {h.bootstrap}\ndashboard: {h.dashboard}", flush=True)
        for i in range(args.peers):
            h.spawn(f"p{i}", base=True, worker_seed=i)
        if not h.wait_for(lambda: h.max_epoch >= 1, args.warmup_timeout):
            raise NetworkError(f"no global epoch within {args.warmup_timeout:.0f} s: see {run_dir}/*.log")
        first = h.max_epoch
        start = time.monotonic()
        h.wait_for(lambda: h.max_epoch >= first + 4, 120.0)
        baseline = (start, time.monotonic())
        intervals = [b[0] - a[0] for a, b in zip(h.new_epochs, h.new_epochs[1:]) if a[0] >= start]
        print(f"baseline: epoch {first} -> {h.max_epoch}, median round interval "
              f"{statistics.median(intervals) if intervals else float('nan'):.1f} s", flush=True)
        for kind in kinds:
            event = run_attack(h, kind, args, config.run_id)
            events.append(event)
            print(f"epoch {h.max_epoch:4d} | {kind:17s} coordinator {'up' if event['coordinator_alive'] and event['healthz'] else 'DOWN'} | "
                  f"{json.dumps(event['attacker'])[:160]}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: stopping the swarm", flush=True)
    finally:
        print("stopping every process...", flush=True)
        h.close()
    report = build_report(h, events, baseline=baseline, target_batch_size=config.engine.target_batch_size,
                          wall_s=time.monotonic() - wall, summary={"task": config.task, "run_id": config.run_id, "peers": args.peers,
                                                                   "seconds_per_attack": args.seconds, "run_dir": str(run_dir)})
    return publish(report, args.report, {k: report[k] for k in report if k not in ("attacks", "timeline")}, run_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m peers.attack.cli ...`: the same command where the `swarm` entry point predates it."""
    from swarm.cli import setup_logging
    from swarm.errors import SwarmError

    parser = argparse.ArgumentParser(prog="swarm")
    register_attack(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["attack", *(sys.argv[1:] if argv is None else argv)])
    setup_logging()
    try:
        return args.func(args)
    except SwarmError as e:
        print(f"swarm: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    sys.exit(main())
