"""`swarm demo`: a bootstrap peer and N volunteer peers on loopback pretrain a task together.

The demo prepares the task's caches once (tokenizer, tokenized corpus), starts the run's
coordinator (`swarm launch`, a child process: the bootstrap peer, the config record, the
dashboard and checkpoints), starts N `swarm join` processes against it, prints the dashboard
URL and one line per global epoch, and writes a JSON report. Every child is owned: children get
PR_SET_PDEATHSIG, and each one's Reaper ends its p2pd daemon too.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from swarm.config import RunConfig
from swarm.process.lifecycle import set_parent_death_signal

from .cli import add_run_options, run_config_from_args
from .local_swarm import (
    epochs_of,
    peer_command,
    read_jsonl,
    start_coordinator,
    stop_all,
)

logger = logging.getLogger(__name__)

FINAL_STATE = "final.pt"   # peer 0's model when the demo ends (swarm eval --checkpoint RUN_DIR/RUN_ID/final.pt)
DEMO_MARK = ".swarm-demo"   # in a run folder the demo made (and may start over)
DEMO_DEFAULTS = {"run_id": "demo", "target_batch_size": 256, "lr": 0.02, "warmup_epochs": 2, "total_epochs": 200}


def register_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a whole swarm on this machine", description="A bootstrap peer and N volunteers train together on loopback.")
    add_run_options(p)
    p.add_argument("--peers", type=int, default=3, help="volunteer peers to start")
    p.add_argument("--duration", type=float, default=90.0, help="seconds of training")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--run-dir", type=Path, default=Path("runs"), help="logs and metrics go to RUN_DIR/RUN_ID/")
    p.add_argument("--port", type=int, default=8080, help="port of the coordinator's dashboard (0: any free port)")
    p.add_argument("--checkpoint-every", type=int, default=2, help="the coordinator checkpoints every N epochs")
    p.set_defaults(func=cmd_demo)


def demo_config(args: argparse.Namespace) -> RunConfig:
    config = run_config_from_args(args)
    explicit = {k for k, v in vars(args).items() if v is not None}
    data = config.model_dump()
    if not args.config:  # demo-friendly defaults unless a file or flag says otherwise
        for key, value in DEMO_DEFAULTS.items():
            if key == "target_batch_size":
                if "target_batch_size" not in explicit:
                    data["engine"]["target_batch_size"] = value
            elif key not in explicit:
                data[key] = value
    if config.uses_diloco and "target_batch_size" not in explicit and "target_batch_size" not in config.engine.model_fields_set:
        # one outer step = inner_steps local steps of every peer; streaming: a fragment's share (swarm.config.DiLoCoConfig)
        data["engine"]["target_batch_size"] = config.outer_target_batch_size(args.peers * config.micro_batch_size)
    return RunConfig.model_validate(data)


def cmd_demo(args: argparse.Namespace) -> int:
    from swarm.errors import ConfigError

    from .tasks import TaskSettings, get_task

    if args.peers < 1:
        raise ConfigError("--peers must be at least 1")
    started = time.monotonic()
    config = demo_config(args)
    run_dir = args.run_dir / config.run_id
    made_by_demo = (run_dir / DEMO_MARK).exists() or any(run_dir.glob("peer*.log"))   # (older demos left no mark)
    if (run_dir / "coordinator.json").exists() and not made_by_demo:
        raise ConfigError(f"{run_dir} holds a run started with `swarm launch`: the demo does not take it over "
                          "(its identity, config and history); pass --run-dir OTHER_FOLDER")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / DEMO_MARK).touch()
    for old in [*run_dir.glob("peer*.jsonl"), run_dir / FINAL_STATE]:
        old.unlink(missing_ok=True)
    config_path = run_dir / "experiment.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(), sort_keys=False))

    print(f"preparing task {config.task} (its data caches; the first run builds them)...", flush=True)
    task = get_task(config.task, TaskSettings(data_path=config.data_path, micro_batch_size=config.micro_batch_size, seed=config.seed, options=dict(config.task_options)))
    task.fingerprint()

    procs: list[subprocess.Popen] = []
    logs = []
    coordinator: subprocess.Popen | None = None
    try:
        coordinator, bootstrap, dashboard = start_coordinator(config_path, args.run_dir, run_dir, port=args.port,
                                                              checkpoint_every=args.checkpoint_every)
        print(f"bootstrap peer: {bootstrap}", flush=True)
        print(f"dashboard: {dashboard}", flush=True)
        for i in range(args.peers):
            log = open(run_dir / f"peer{i}.log", "w")
            logs.append(log)
            cmd = peer_command(config_path, bootstrap, run_dir / f"peer{i}.jsonl", worker_seed=i, duration=args.duration)
            if i == 0:   # peer 0 leaves the trained model for `swarm eval`
                cmd += ["--save-final", str(run_dir / FINAL_STATE)]
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=set_parent_death_signal))
        print(f"started {args.peers} peers; logs in {run_dir}/", flush=True)
        _watch(procs, run_dir, args.peers, deadline=time.monotonic() + args.duration + 300)
    except KeyboardInterrupt:
        print("interrupted: stopping peers", flush=True)
    finally:
        stop_all(procs)
        for log in logs:
            log.close()
        if coordinator is not None:
            stop_all([coordinator])
    report = build_report(config, run_dir, args.peers, time.monotonic() - started)
    if (run_dir / FINAL_STATE).exists():
        report["final_state"] = str(run_dir / FINAL_STATE)
    text = json.dumps(report, indent=2)
    if args.report:
        args.report.write_text(text + "\n")
        print(f"report written to {args.report}: {summary_line(report)}")
    else:
        print(text)
    failed = [p.returncode for p in procs if p.returncode not in (0, None)]
    if failed:
        print(f"{len(failed)} peer(s) exited with errors (exit codes {failed}): see {run_dir}/peer*.log", file=sys.stderr)
    return 0


def summary_line(report: dict) -> str:
    """The report in one line, for the terminal (the file has every figure)."""
    loss = report.get("loss_first"), report.get("loss_last")
    losses = f", loss {loss[0]:.3f} -> {loss[1]:.3f}" if None not in loss else ""
    same = {True: ", every peer's parameters identical", False: ", PEERS' PARAMETERS DIFFER",
            None: ", no epoch common to every peer"}.get(report.get("params_identical"), "")
    return (f"{report.get('epochs', 0)} epochs, {report.get('samples_per_second', 0.0):.1f} samples/s{losses}, "
            f"{report.get('rounds_completed', 0)} rounds ({report.get('rounds_failed', 0)} failed){same}")


def _watch(procs: list[subprocess.Popen], run_dir: Path, n: int, deadline: float) -> None:
    """Print one line per global epoch until every peer has exited."""
    printed = 0
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(1.0)
        per_epoch = _epochs(run_dir, n)
        for epoch in sorted(e for e in per_epoch if e > printed):
            rows = per_epoch[epoch]
            if len(rows) < min(n, 2) and any(p.poll() is None for p in procs) and epoch == max(per_epoch):
                break  # wait until more peers report the newest epoch
            loss = statistics.fmean(r["loss"] for r in rows if r["loss"] == r["loss"]) if rows else float("nan")
            rate = max(r["swarm_samples_per_second"] for r in rows)
            print(f"epoch {epoch:4d} | loss {loss:7.4f} | {rate:7.1f} samples/s | group of {rows[0]['group_size']} averaged | round {statistics.median(r['round_seconds'] for r in rows):.2f}s", flush=True)
            printed = epoch


def _epochs(run_dir: Path, n: int) -> dict[int, list[dict]]:
    return epochs_of(run_dir / f"peer{i}.jsonl" for i in range(n))


def build_report(config: RunConfig, run_dir: Path, n: int, duration: float) -> dict:
    peers = [read_jsonl(run_dir / f"peer{i}.jsonl") for i in range(n)]
    steps = [[r for r in rows if not r.get("final")] for rows in peers]
    finals = [next((r for r in rows if r.get("final")), None) for rows in peers]
    per_epoch = _epochs(run_dir, n)
    epochs = sorted(per_epoch)
    losses = {e: statistics.fmean(r["loss"] for r in per_epoch[e] if r["loss"] == r["loss"]) for e in epochs if any(r["loss"] == r["loss"] for r in per_epoch[e])}
    hashes = [{r["epoch"]: r["params_hash"] for r in rows} for rows in steps]
    common = set.intersection(*(set(h) for h in hashes)) if hashes and all(hashes) else set()
    last_common = max(common) if common else None
    identical = None if last_common is None else len({h[last_common] for h in hashes}) == 1   # None: nothing to compare
    samples = sum(per_epoch[e][0]["samples"] for e in epochs)
    round_seconds = [r["round_seconds"] for rows in steps for r in rows]
    return {
        "task": config.task,
        "run_id": config.run_id,
        "peers": n,
        "duration_s": round(duration, 2),
        "epochs": len(epochs),
        "samples": samples,
        "samples_per_second": round(samples / duration, 2) if duration > 0 else 0.0,
        "loss_first": losses[epochs[0]] if epochs and epochs[0] in losses else None,
        "loss_last": losses[epochs[-1]] if epochs and epochs[-1] in losses else None,
        "rounds_completed": len(epochs),
        "rounds_failed": sum((f or {}).get("rounds_failed", 0) for f in finals),
        "round_seconds_median": round(statistics.median(round_seconds), 4) if round_seconds else None,
        "params_identical": identical,
        "last_common_epoch": last_common,
        "target_batch_size": config.engine.target_batch_size,
        "state_downloads": sum((f or {}).get("state_downloads", 0) for f in finals),
        **_mode_figures(config, steps, finals),
        "per_peer": [
            {"peer_id": (f or {}).get("peer_id"), "epoch": (f or {}).get("epoch"), "samples": (f or {}).get("samples"),
             "rounds_completed": (f or {}).get("rounds_completed"), "rounds_failed": (f or {}).get("rounds_failed")}
            for f in finals
        ],
    }


def _mode_figures(config: RunConfig, steps: list[list[dict]], finals: list[dict | None]) -> dict:
    """How the run communicated and computed: the mode, the codecs its rounds used, compute utilization (the share
    of the peers' training time spent in forward/backward), the share of it they were blocked waiting for rounds,
    and bytes sent per sample computed (all peers' bytes over all peers' samples)."""
    done = [f for f in finals if f and f.get("train_seconds")]
    compute = sum(f.get("compute_seconds", 0.0) for f in done)
    waited = sum(f.get("round_wait_seconds", 0.0) for f in done)
    data = sum(f.get("data_seconds", 0.0) for f in done)
    stepping = sum(f.get("step_seconds", 0.0) for f in done)
    wall = sum(f["train_seconds"] for f in done)
    samples = sum(f.get("samples", 0) for f in done)
    sent = sum(f.get("bytes_sent", 0) for f in done)
    codecs: dict[str, int] = {}
    for rows in steps:
        for r in rows:
            if r.get("codec"):
                codecs[r["codec"]] = codecs.get(r["codec"], 0) + 1
    return {
        "mode": config.mode, "overlap": config.overlap, "compression": config.engine.compression,
        "inner_steps": config.diloco.inner_steps if config.uses_diloco else None,
        "fragments": config.diloco.fragments if config.mode == "streaming-diloco" else None,
        "compute_utilization": round(compute / wall, 4) if wall > 0 else None,
        "round_wait_share": round(waited / wall, 4) if wall > 0 else None,
        # the rest of the wall time: the next micro-batch, and opt.step's own work (accumulation, DiLoCo's inner step)
        "data_share": round(data / wall, 4) if wall > 0 else None,
        "optimizer_share": round(max(0.0, stepping - waited) / wall, 4) if wall > 0 else None,
        "bytes_sent_per_sample": round(sent / samples, 2) if samples else None,
        "codecs": codecs,
        "max_staleness": max((r.get("staleness", 0) for rows in steps for r in rows), default=0),
    }
