"""One emulated peer: `python -m swarm.simulate.worker`, started by the emulator inside its namespace.

It talks to the emulator through JSON lines: commands on stdin, events on stdout (logs go to
stderr). Modes:

- `bootstrap`: a node (p2pd + DHT) that trains nothing; the others join through it.
- `allreduce`: joins the run as a trainer, client or aux peer (a Collaboration, like any peer) and
  averages a vector with the swarm on command. Round r: on `prepare` it reports epoch r and waits
  until its view of the swarm shows every peer at r (so every leader candidate agrees); on `go` it
  calls `Collaboration.submit_round`, the same call the collaborative optimizer makes, and reports the
  all-reduce seconds, bytes, shares, its bandwidth estimates and a hash of the result.
  Trainer i averages x_i = g_r + i (g_r a random vector shared by round), so the exact mean is
  known and each peer reports its largest error.
- `training`: trains the scenario's task plug-in for a duration in the workload's mode (sync, overlap,
  DiLoCo: swarm.modes.mode_optimizer, the volunteer daemon's); each local step takes at least
  step_seconds / compute (it sleeps the difference). Reports one event per micro-batch (loss), one per
  global step (loss, bytes, round seconds) and a summary (samples, compute and round-wait seconds,
  bytes sent by the rounds and by the namespace's interfaces).

Every command has an answer; `stop` (or EOF on stdin, or SIGTERM) leaves the swarm cleanly.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import torch

logger = logging.getLogger("swarm.simulate.worker")
_out_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    with _out_lock:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()


def commands():
    """Commands from stdin, one JSON object per line, until EOF."""
    for line in sys.stdin:
        line = line.strip()
        if line:
            yield json.loads(line)


def _record_rounds(collab) -> None:
    """Keep the last AllReduceRound of this peer, for its stats."""
    global _RecordingRound
    from swarm import collaboration
    from swarm.averaging.allreduce import AllReduceRound

    class Recording(AllReduceRound):
        last = None

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            Recording.last = self

    _RecordingRound = Recording
    if hasattr(collab, "round_class"):
        collab.round_class = Recording
    else:
        collaboration.AllReduceRound = Recording


class _NoRound:
    last = None


_RecordingRound: type = _NoRound


def run_bootstrap(args: argparse.Namespace) -> None:
    from swarm.observer import Observer

    observer = Observer(args.run_id, host_maddrs=[f"/ip4/{args.host}/tcp/0"])
    try:
        emit("ready", maddrs=observer.visible_maddrs(), peer_id=observer.peer_id)
        for command in commands():
            if command.get("cmd") == "stop":
                break
    finally:
        observer.shutdown() if hasattr(observer, "shutdown") else None


def _join(args: argparse.Namespace, config_overrides: dict[str, Any]):
    from swarm.collaboration import join
    from swarm.config import EngineConfig

    config = EngineConfig(**config_overrides)
    collab = join(
        run_id=args.run_id, initial_peers=args.initial_peers, role=args.role, config=config,
        host_maddrs=[f"/ip4/{args.host}/tcp/0"],
    )
    return collab


def _wait_for_view(collab, epoch: int, expected: int, timeout: float) -> int:
    """Publish epoch `epoch` and wait until the view shows `expected` peers there; returns how many it saw."""
    tracker = collab.tracker
    tracker.report(epoch=epoch, samples=1)
    end = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < end:
        tracker.poke()
        collab.loop.run(tracker.wait_refresh(0.5), timeout=5)
        seen = len(tracker.view.at_epoch(epoch))
        if seen >= expected:
            break
    return seen


def run_allreduce(args: argparse.Namespace) -> None:
    from swarm.averaging.balancing import split_sizes
    from swarm.averaging.layout import TensorLayout
    from swarm.averaging.rounds import RoundRequest
    from swarm.compression.codecs import get_codec
    from swarm.compression.policy import FixedRoundCodec
    from swarm.errors import RoundFailed

    engine = json.loads(args.engine)
    collab = _join(args, engine)
    try:
        codec = get_codec(args.compression)
        layout = TensorLayout.build([(args.params,)], lambda i, n: codec)
        round_codec = FixedRoundCodec.from_layout(layout)
        collab.begin_training(layout, lambda: None)
        captured: dict[str, Any] = {}
        form_group = collab.matchmaker.form_group

        async def capturing_form_group(request, deadline):  # remember the group's shares for the report
            info = await form_group(request, deadline)
            captured["info"] = info
            return info

        collab.matchmaker.form_group = capturing_form_group
        _record_rounds(collab)
        emit("ready", maddrs=collab.visible_maddrs(), peer_id=collab.peer_id, role=args.role)
        trainers = [int(i) for i in args.trainer_indices.split(",") if i]
        profiler = _EngineProfiler(collab, args.profile) if args.profile else None

        def vectors(r: int) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
            shared = torch.randn(args.params, generator=torch.Generator().manual_seed(1000 + r))
            return shared, None if args.role == "aux" else [shared + float(args.index)]

        # A round's vectors are built while it is prepared, not after "go": at 50M values that took each peer seconds on
        # a loaded host, and the first to finish formed its group without those still building (session 28: 6/12)
        built: dict[int, tuple[torch.Tensor, list[torch.Tensor] | None]] = {}
        for command in commands():
            cmd = command.get("cmd")
            if cmd == "stop":
                break
            r = int(command.get("round", 0))
            if cmd == "prepare":
                built.clear()
                built[r] = vectors(r)
                seen = _wait_for_view(collab, r, args.peers, float(command.get("timeout", 30)))
                emit("prepared", round=r, seen=seen)
                continue
            if cmd != "go":
                emit("error", message=f"unknown command {cmd!r}")
                continue
            shared, local = built.pop(r) if r in built else vectors(r)
            captured.clear()
            started = time.monotonic()
            if profiler is not None:
                profiler.enable()
            try:
                averaged, outcome = collab.submit_round(RoundRequest(r, 0.0 if local is None else 1.0), round_codec, local).wait()
                result = averaged.tensors
            except RoundFailed as e:
                emit("round", round=r, ok=False, error=str(e), wall=time.monotonic() - started,
                     upload_est=collab.upload.value, download_est=collab.download.value)
                continue
            wall = time.monotonic() - started
            if profiler is not None:
                profiler.disable()
            info = captured.get("info")
            fields: dict[str, Any] = dict(
                round=r, ok=True, peer_id=collab.peer_id, seconds=outcome.round_seconds, wall=wall, group=outcome.group_size,
                bytes_sent=outcome.bytes_sent, bytes_received=outcome.bytes_received,
                upload_est=collab.upload.value, download_est=collab.download.value,
                excluded=len(outcome.excluded),
            )
            stats = _RecordingRound.last.stats if _RecordingRound.last is not None else None
            if stats is not None:
                fields.update(send_seconds=stats.send_seconds, receive_seconds=stats.receive_seconds,
                              recovered=sorted(set(stats.recovered_parts)), refetches=stats.refetches)
                if args.trace:
                    fields.update(send_log=stats.send_log, receive_log=stats.receive_log, ack_log=stats.ack_log,
                                      output_log=stats.output_log, streams=stats.streams)
            if info is not None:
                fields.update(shares=list(info.shares), members=[m.peer_id for m in info.members])
            if result is not None:
                flat = result[0]
                expected = shared + (sum(trainers) / len(trainers) if trainers else 0.0)
                fields.update(
                    hash=hashlib.sha256(flat.numpy().tobytes()).hexdigest()[:16],
                    max_error=float((flat - expected).abs().max()),
                )
                if info is not None:  # each reducer's part hashed apart: which part differs when committers disagree
                    parts = torch.split(flat, split_sizes(flat.numel(), list(info.shares)))
                    fields.update(part_hashes=[hashlib.sha256(p.numpy().tobytes()).hexdigest()[:8] for p in parts])
            emit("round", **fields)
        if profiler is not None:
            profiler.dump()
    finally:
        collab.shutdown()


class _EngineProfiler:
    """cProfile of the engine loop's thread (where the all-reduce runs), across the rounds it is enabled for."""

    def __init__(self, collab, path: str):
        import cProfile

        self.collab, self.path, self.profile = collab, path, cProfile.Profile()

    def _on_loop(self, method) -> None:
        async def call() -> None:
            method()

        self.collab.loop.run(call(), timeout=10)

    def enable(self) -> None:
        self._on_loop(self.profile.enable)

    def disable(self) -> None:
        self._on_loop(self.profile.disable)

    def dump(self) -> None:
        self.profile.dump_stats(self.path)


def run_training(args: argparse.Namespace) -> None:
    """Train the scenario's task in the workload's mode (swarm.modes.mode_optimizer, as the volunteer daemon does);
    compute slowed to `compute` by sleeping. Events: `local` per micro-batch (time, loss, samples), `step` per global
    step (epoch, loss since the last one, bytes, round seconds), and a `summary`."""
    from swarm.averaging.linkmeter import read_counters
    from swarm.modes import mode_optimizer

    from .scenario import TrainingWorkload

    workload = TrainingWorkload.model_validate(json.loads(args.workload))
    engine = json.loads(args.engine)
    module_name, function_name = workload.task_plugin.split(":")
    factory = getattr(importlib.import_module(module_name), function_name)
    settings_cls = getattr(importlib.import_module(module_name), "TaskSettings", None)
    settings = settings_cls(micro_batch_size=workload.micro_batch_size, seed=0, options=dict(workload.task_options)) if settings_cls else None
    task = factory(workload.task, settings)
    if args.prepare:  # build the task's caches once, before the peers start
        task.fingerprint()
        task.build_model()
        next(iter(task.batches(0)))
        emit("prepared")
        return
    torch.manual_seed(0)
    model = task.build_model()
    config = workload.run_config(engine, trainers=args.trainers)
    collab = _join(args, config.engine.model_dump())
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        opt = mode_optimizer(collab, model, task.make_optimizer, config)
        emit("ready", maddrs=collab.visible_maddrs(), peer_id=collab.peer_id, role=args.role,
             target_batch_size=config.engine.target_batch_size)
        go = next(commands(), {})
        if go.get("cmd") != "go":
            return
        deadline = time.monotonic() + float(go.get("duration", workload.duration))
        counters = read_counters()
        if args.role == "aux":
            collab.run_auxiliary(opt.codec, lambda: stop.is_set() or time.monotonic() > deadline)
            emit("summary", role="aux", rounds=len(collab.rounds), bytes_sent=sum(r.bytes_sent for r in collab.rounds),
                 bytes_received=sum(r.bytes_received for r in collab.rounds), **net_sent(counters, read_counters()))
            return
        losses: list[float] = []
        sent = {"bytes_sent": 0, "bytes_received": 0}

        def on_step(report) -> None:
            sent["bytes_sent"] += report.bytes_sent
            sent["bytes_received"] += report.bytes_received
            emit("step", epoch=report.epoch, group=report.group_size, seconds=report.round_seconds, samples=report.samples,
                 time=report.time, hash=report.params_hash[:16], bytes_sent=report.bytes_sent, codec=report.codec,
                 staleness=report.staleness, loss=sum(losses) / len(losses) if losses else None)
            losses.clear()

        opt.on_step.append(on_step)
        step_seconds = (workload.step_seconds or 0.0) / max(args.compute, 1e-6)
        samples = compute_seconds = opt_seconds = 0.0
        started = time.monotonic()
        model.train()
        for batch in task.batches(args.index):
            if stop.is_set() or time.monotonic() > deadline:
                break
            t0 = time.monotonic()
            loss, n = task.loss(model, batch)
            loss.backward()
            spent = time.monotonic() - t0
            pad = max(0.0, step_seconds - spent) if step_seconds else spent * (1.0 / args.compute - 1.0)
            if pad > 0:
                time.sleep(pad)
            compute_seconds += time.monotonic() - t0
            samples += n
            value = float(loss.detach())
            losses.append(value)
            emit("local", time=time.time(), loss=value, samples=n)
            t1 = time.monotonic()
            opt.step(samples=n)
            opt.zero_grad()
            opt_seconds += time.monotonic() - t1
        elapsed = time.monotonic() - started
        emit("summary", role=args.role, samples=samples, elapsed=elapsed, compute_seconds=compute_seconds,
             round_wait_seconds=opt.round_wait_seconds, step_seconds=opt_seconds,
             inner_step_seconds=getattr(opt.strategy, "inner_step_seconds", 0.0),
             epoch=opt.epoch, rounds_completed=opt.rounds_completed, rounds_failed=opt.rounds_failed,
             hash=opt.params_hash()[:16], **sent, **net_sent(counters, read_counters()))
        if not stop.is_set():
            opt.finish()   # overlapped modes: apply the round still in flight (after the measured duration)
    finally:
        collab.shutdown()


def net_sent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> dict[str, int]:
    """Bytes this namespace's interfaces sent and received between two read_counters() (everything: DHT, headers)."""
    if before is None or after is None:
        return {}
    return {"net_bytes_received": after[0] - before[0], "net_bytes_sent": after[1] - before[1]}


def main(argv: list[str] | None = None) -> None:
    from swarm.cli import prefer_huge_pages

    prefer_huge_pages()
    parser = argparse.ArgumentParser(prog="python -m swarm.simulate.worker")
    parser.add_argument("--mode", choices=["bootstrap", "allreduce", "training"], required=True)
    parser.add_argument("--run-id", default="simulate")
    parser.add_argument("--role", default="trainer", choices=["trainer", "client", "aux"])
    parser.add_argument("--host", required=True, help="this peer's address in its namespace")
    parser.add_argument("--initial-peers", nargs="*", default=[])
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--peers", type=int, default=1, help="peers in the swarm (the view every round waits for)")
    parser.add_argument("--trainers", type=int, default=1, help="training: peers that bring samples (DiLoCo's outer batch)")
    parser.add_argument("--trainer-indices", default="", help="comma-separated indices of the peers that bring values")
    parser.add_argument("--params", type=int, default=0)
    parser.add_argument("--compression", default="none")
    parser.add_argument("--compute", type=float, default=1.0)
    parser.add_argument("--engine", default="{}", help="EngineConfig fields as JSON")
    parser.add_argument("--workload", default="{}", help="training workload as JSON")
    parser.add_argument("--profile", help="allreduce: write a cProfile of the engine thread during rounds here")
    parser.add_argument("--prepare", action="store_true", help="training: build the task's caches and exit")
    parser.add_argument("--trace", action="store_true", help="report each round's per-message send and receive times")
    # the emulator starts workers with the environment it runs in: SWARM_WORKER_LOG=DEBUG traces a benchmark's rounds
    parser.add_argument("--log-level", default=os.environ.get("SWARM_WORKER_LOG", "INFO"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname).1s [{args.mode}:{args.index}] %(name)s: %(message)s")
    for noisy in ("hivemind", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the emulator owns Ctrl-C; it stops us with `stop` or SIGTERM
    {"bootstrap": run_bootstrap, "allreduce": run_allreduce, "training": run_training}[args.mode](args)


if __name__ == "__main__":
    main()
