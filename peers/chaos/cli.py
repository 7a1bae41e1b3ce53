"""`swarm chaos`: the demo swarm under random faults, and a JSON report of the invariants that must hold.

    swarm chaos --task albert --peers 4 --duration 300 --report r.json [--seed N] [--faults kill_leader,sigint]

Starts the run's coordinator and N volunteer peers on loopback (as `swarm demo` does), waits for the first
global epoch, then for `--duration` seconds injects faults (peers.chaos.faults), one after another in a
seeded random order that covers every kind before repeating one, restarting killed peers after
`--restart-after` seconds. Then it stops everything, checks that no child process outlived its parent by
5 s, and writes the report (peers.chaos.report). Exit code 1 when an invariant failed.
"""
from __future__ import annotations

import argparse
import logging
import random
import time
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)


def register_chaos(sub: argparse._SubParsersAction) -> None:
    from ..cli import add_run_options
    from .faults import FAULTS

    p = sub.add_parser("chaos", help="run the demo swarm under random faults and report what held",
                       description="Inject faults into a loopback swarm (coordinator + N peers) and check the invariants.")
    add_run_options(p)
    p.add_argument("--peers", type=int, default=4, help="volunteer peers (base slots, restarted after they die)")
    p.add_argument("--duration", type=float, default=300.0, help="seconds of faults, counted from the first global epoch")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault order and targets")
    p.add_argument("--faults", help=f"comma-separated kinds (default: all): {', '.join(FAULTS)}")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="logs and metrics go to RUN_DIR/RUN_ID/")
    p.add_argument("--newcomers", type=int, default=3, help="peers of a newcomer burst (scale to the machine)")
    p.add_argument("--skew-minutes", type=float, default=5.0, help="how far off the clock_skew peer's clock is")
    p.add_argument("--restart-after", type=float, default=10.0, help="seconds before a dead peer is restarted")
    p.add_argument("--gap", type=float, default=5.0, help="seconds between two faults")
    p.add_argument("--warmup-timeout", type=float, default=600.0, help="give up if no global epoch by then")
    p.add_argument("--checkpoint-every", type=int, default=2, help="the coordinator checkpoints every N epochs")
    p.set_defaults(func=cmd_chaos)


def _kinds(text: str | None) -> list[str]:
    from swarm.errors import ConfigError

    from .faults import FAULTS, SKIPPED

    if not text:
        return list(FAULTS)
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    for k in kinds:
        if k in SKIPPED:
            raise ConfigError(f"fault {k} is not covered by swarm chaos: {SKIPPED[k]}")
        if k not in FAULTS:
            raise ConfigError(f"unknown fault {k!r}: one of {', '.join(FAULTS)}")
    return kinds


def _order(kinds: list[str], rng: random.Random):
    """Every kind once in a random order, then again in another, and so on."""
    while True:
        batch = list(kinds)
        rng.shuffle(batch)
        yield from batch


def write_run_folder(runs_dir: Path, config) -> tuple[Path, Path]:
    """RUN_DIR/RUN_ID/ cleared of an earlier run's logs and metrics, holding `config` as experiment.yaml."""
    run_dir = runs_dir / config.run_id
    run_dir.mkdir(parents=True, exist_ok=True)
    for old in [*run_dir.glob("*.jsonl"), *run_dir.glob("*.log")]:
        old.unlink()
    config_path = run_dir / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))
    return run_dir, config_path


def prepare_loopback_run(args: argparse.Namespace, default_run_id: str):
    """The demo config from the flags, a clean RUN_DIR/RUN_ID/ holding it as experiment.yaml, and the task's caches
    built once here (not by every peer at once): (config, run folder, config path)."""
    from ..demo import demo_config
    from ..tasks import TaskSettings, get_task

    args.run_id = args.run_id or default_run_id
    config = demo_config(args)
    run_dir, config_path = write_run_folder(args.run_dir, config)
    print(f"preparing task {config.task} (its data caches; the first run builds them)...", flush=True)
    get_task(config.task, TaskSettings(data_path=config.data_path, micro_batch_size=config.micro_batch_size, seed=config.seed,
                                       options=dict(config.task_options))).fingerprint()
    return config, run_dir, config_path


def cmd_chaos(args: argparse.Namespace) -> int:
    from swarm.errors import ConfigError, NetworkError, SwarmError

    from .faults import FAULTS, FaultContext
    from .harness import ChaosSwarm
    from .report import build_report, publish

    if args.peers < 3:
        raise ConfigError("--peers must be at least 3 (faults kill one peer while two keep training)")
    kinds = _kinds(args.faults)
    wall = time.monotonic()
    config, run_dir, config_path = prepare_loopback_run(args, "chaos")

    rng = random.Random(args.seed)
    h = ChaosSwarm(config_path, args.run_dir, run_dir, checkpoint_every=args.checkpoint_every, restart_after=args.restart_after)
    ctx = FaultContext(rng=rng, deadline_s=config.engine.averaging_timeout, newcomers=args.newcomers,
                       skew_minutes=args.skew_minutes * rng.choice((-1, 1)))
    events: list[dict] = []
    window = (time.monotonic(), time.monotonic())
    try:
        h.start_coordinator(fresh=True)
        print(f"bootstrap peer: {h.bootstrap}\ndashboard: {h.dashboard}", flush=True)
        for i in range(args.peers):
            h.spawn(f"p{i}", base=True, worker_seed=i)
        for clock in ctx.standbys(kinds):
            h.add_standby(clock)
        print(f"started {args.peers} peers; logs in {run_dir}/; waiting for the first global epoch", flush=True)
        if not h.wait_for(lambda: h.max_epoch >= 1, args.warmup_timeout):
            raise NetworkError(f"no global epoch within {args.warmup_timeout:.0f} s: see {run_dir}/*.log")
        start = ctx.started = time.monotonic()
        ctx.end = start + args.duration
        print(f"epoch {h.max_epoch}: injecting faults for {args.duration:.0f} s ({', '.join(kinds)})", flush=True)
        order = _order(kinds, rng)
        while time.monotonic() < start + args.duration:
            kind = next(order)
            try:
                event = FAULTS[kind](h, ctx)
            except SwarmError as e:   # e.g. the coordinator did not come back: that is the fault's outcome, the run goes on
                event = {"kind": kind, "target": None, "outcome": f"failed: {e}", "ok": False}
            except Exception as e:   # a harness bug: logged with its traceback, reported, and the run goes on
                logger.exception("fault %s", kind)
                event = {"kind": kind, "target": None, "outcome": f"harness error: {type(e).__name__}: {e}", "ok": False}
            event.setdefault("t", ctx.at())
            events.append(event)
            print(f"[{ctx.at():7.1f}s] epoch {h.max_epoch:4d} | {kind:20s} {event.get('target') or '-':14s} {event['outcome']}", flush=True)
            h.sleep(min(args.gap, max(0.0, start + args.duration - time.monotonic())))
        window = (start, time.monotonic())
        if h.followups:
            print(f"waiting (at most {ctx.join_timeout:.0f} s) for the newcomers still training to leave...", flush=True)
            h.wait_for(lambda: not h.followups, ctx.join_timeout)
    except KeyboardInterrupt:
        print("interrupted: stopping the swarm", flush=True)
        window = (ctx.started, time.monotonic())
    finally:
        print("stopping every process, then checking for orphans...", flush=True)
        h.close()
    summary = {"task": config.task, "run_id": config.run_id, "peers": args.peers, "seed": args.seed, "run_dir": str(run_dir)}
    report = build_report(h, events, history=ctx.history, deadline_s=config.engine.averaging_timeout, window=window,
                          wall_s=time.monotonic() - wall, config_summary=summary, kinds=kinds)
    keys = ("duration_s", "faults", "rounds_completed", "rounds_failed", "round_seconds_max", "deadline_s", "divergent_commits",
            "orphan_processes", "history_lost", "longest_stall_s")
    return publish(report, args.report, {k: report[k] for k in keys}, run_dir)
