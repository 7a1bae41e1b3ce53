"""The volunteer peer daemon: joins a run, checks it agrees with the run's config, and trains a task.

Lifecycle: start the collaboration (p2pd + DHT, children owned by a Reaper), fetch the
run's config record (publish ours if this is the first peer), refuse with one line if
the task, model or tokenizer differ, download the current state, then train until
stopped. SIGINT and SIGTERM stop it cleanly: an averaging round in flight is abandoned
(the group finishes without us), the progress record is withdrawn and every child
process ends, within a few seconds.

Each global step is logged (epoch, loss, swarm samples/s, group size) and, with
`metrics_path`, appended as a JSON line; the peer also publishes a signed MetricsRecord.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from swarm.collaboration import Collaboration
from swarm.config import RunConfig
from swarm.errors import AuthError, ConfigError
from swarm.modes import mode_optimizer
from swarm.net import records
from swarm.net.auth import InviteAccess
from swarm.optim.schedule import warmup_linear_decay

from .precision import MixedPrecision
from .startup import DownloadBar, StageLog
from .tasks import TaskSettings, get_task

logger = logging.getLogger(__name__)


@dataclass
class PeerOptions:
    initial_peers: Sequence[str] = ()
    role: str = "trainer"                      # trainer | client | aux
    host_maddrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",)
    announce_maddrs: Sequence[str] | None = None
    identity_path: str | None = None
    metrics_path: Path | None = None
    duration: float | None = None              # seconds; None: until stopped
    max_epochs: int | None = None
    worker_seed: int = 0
    threads: int = 1
    publish_config: bool = True                # the first peer of a run publishes the config record
    print_progress: bool = True
    metrics_port: int | None = None            # serve this peer's Prometheus /metrics on this port (0: any)
    metrics_host: str = "127.0.0.1"
    final_state_path: Path | None = None       # write the model (and its epoch) here when training ends (swarm eval reads it)
    access: InviteAccess | None = None         # joined with an invite: the organizer's config only, and a token if invite-only
    on_collaboration: Callable[[Collaboration], None] | None = None   # called once it exists (swarm chaos injects faults here)
    say: Callable[[str], None] | None = None   # one line per start-up stage (peers.startup.StageLog in `swarm join`)


@dataclass
class PeerSummary:
    peer_id: str
    epochs: int
    samples: int
    rounds_completed: int
    rounds_failed: int
    state_downloads: int
    hashes: dict[int, str] = field(default_factory=dict)


class StopFlag:
    """Set by SIGINT/SIGTERM; also interrupts an averaging round in flight."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.on_set: list = []

    def set(self, *_: Any) -> None:
        first = not self._event.is_set()
        self._event.set()
        if first:
            for callback in self.on_set:
                callback()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.set)
        signal.signal(signal.SIGTERM, self.set)


def config_record(config: RunConfig, fingerprint: dict[str, str]) -> records.ConfigRecord:
    return records.ConfigRecord(
        run_id=config.run_id, task=config.task, target_batch_size=config.engine.target_batch_size,
        fingerprint=fingerprint, hyperparameters=config.hyperparameters(), created_at=time.time(),
        run_config=config.model_copy(update={"data_path": None}).model_dump_json(),  # a data path is each peer's own
    )


def check_config(run: records.ConfigRecord, mine: records.ConfigRecord) -> None:
    """Refuse to train with a config that differs from the run's: one clear line."""
    if run.task != mine.task:
        raise ConfigError(f"this run trains task {run.task!r}, not {mine.task!r}")
    for key in sorted(set(run.fingerprint) | set(mine.fingerprint)):
        if run.fingerprint.get(key) != mine.fingerprint.get(key):
            raise ConfigError(
                f"this peer's {key} hash {mine.fingerprint.get(key, '-')[:12]} differs from the run's "
                f"{run.fingerprint.get(key, '-')[:12]}: use the run's config (swarm join fetches it) and the same data"
            )
    if run.target_batch_size != mine.target_batch_size:
        raise ConfigError(f"target_batch_size {mine.target_batch_size} differs from the run's {run.target_batch_size}")
    for key in sorted(set(run.hyperparameters) | set(mine.hyperparameters)):
        if key == "micro_batch_size":
            continue  # each volunteer picks what fits its memory
        if run.hyperparameters.get(key) != mine.hyperparameters.get(key):
            raise ConfigError(f"hyperparameter {key}={mine.hyperparameters.get(key)!r} differs from the run's {run.hyperparameters.get(key)!r}")


def check_config_any(runs: list[records.ConfigRecord], mine: records.ConfigRecord) -> records.ConfigRecord:
    """The run's record among `runs` (config records of any owners, earliest first) that our config matches.

    In an open run anyone may publish a config record under the run's key, with any `created_at`: the
    earliest does not decide. A peer that brings the organizer's config matches the organizer's record,
    whatever else was published; if none matches, the error names the earliest record's difference."""
    for run in runs:
        try:
            check_config(run, mine)
            return run
        except ConfigError:
            continue
    check_config(runs[0], mine)   # raises: the one clear line
    raise AssertionError("unreachable")


def run_peer(config: RunConfig, options: PeerOptions, stop: StopFlag | None = None) -> PeerSummary:
    """Join the run and train (or reduce, for aux) until the duration, max_epochs or a stop signal."""
    stop = stop or StopFlag()
    torch.set_num_threads(options.threads)
    settings = TaskSettings(
        data_path=config.data_path, micro_batch_size=config.micro_batch_size, seed=config.seed, options=dict(config.task_options)
    )
    say = options.say or (lambda message: None)
    size = config.task_options.get("size")
    say(f"preparing task {config.task}{f' ({size})' if size else ''}: data, tokenizer and model")
    task = get_task(config.task, settings)
    fingerprint = task.fingerprint()
    model = task.build_model()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the all-reduce moves what it sends to the CPU itself
    model.to(device)
    mine = config_record(config, fingerprint)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"model ready: {n_params / 1e6:.1f}M parameters on {device}; starting the p2p node and joining the swarm"
        + (f" through {len(options.initial_peers)} initial peer{'s' if len(options.initial_peers) != 1 else ''}" if options.initial_peers else ""))

    access = options.access
    collab = Collaboration(
        config.run_id, initial_peers=options.initial_peers, role=options.role, config=config.engine,
        host_maddrs=options.host_maddrs, announce_maddrs=options.announce_maddrs, identity_path=options.identity_path,
        authorizer=access.authorizer() if access is not None else None,
    )
    stop.on_set.append(collab.interrupt)
    if options.say is not None and isinstance(options.say, StageLog):
        collab.download_progress = DownloadBar(options.say)
    if options.on_collaboration is not None:
        options.on_collaboration(collab)
    metrics = open(options.metrics_path, "a") if options.metrics_path else None
    exporter = None
    summary = PeerSummary(peer_id=collab.peer_id, epochs=0, samples=0, rounds_completed=0, rounds_failed=0, state_downloads=0)
    try:
        if options.metrics_port is not None:
            from .metrics_server import PeerMetricsServer

            exporter = PeerMetricsServer(options.metrics_port, options.metrics_host)
            logger.info("peer metrics on http://%s:%d/metrics", options.metrics_host, exporter.port)
        runs = collab.fetch_configs(owner=access.invite.organizer_key if access is not None else None)
        if not runs and access is not None:
            raise ConfigError(f"run {config.run_id} has no config record signed by its organizer: is its coordinator running?")
        if not runs and options.publish_config:
            collab.publish_config(mine)
        elif runs:
            check_config_any(runs, mine)
        # swarm chaos reads this line for the address its restarted peers bootstrap from (peers.chaos.harness VISIBLE)
        logger.info("peer %s joined run %s as %s; visible at %s", collab.peer_id[-8:], config.run_id, options.role, collab.visible_maddrs()[:1])
        say(f"joined run {config.run_id} as {options.role}, peer {collab.peer_id}")
        schedule = warmup_linear_decay(config.warmup_epochs, config.total_epochs) if config.warmup_epochs < config.total_epochs else None
        opt = make_optimizer(collab, model, task, config, schedule)
        deadline = time.monotonic() + options.duration if options.duration else math.inf
        say("averaging with the swarm (Ctrl-C leaves)" if options.role == "aux" else "training: a line per global step (Ctrl-C leaves)")
        if options.role == "aux":
            collab.run_auxiliary(opt.codec, lambda: stop.is_set() or time.monotonic() > deadline)
            return summary
        _train(task, model, opt, collab, config, options, stop, deadline, metrics, summary, exporter)
        return summary
    finally:
        if exporter is not None:
            exporter.close()
        if metrics is not None:
            metrics.close()
        collab.shutdown()


def epoch_line(report, loss: float, swarm_rate: float) -> str:
    """One line per global step: the epoch, this peer's loss, the swarm's rate and the round that got there."""
    return (f"epoch {report.epoch} | loss {loss:.4f} | swarm {swarm_rate:.1f} samples/s | averaged in a group of "
            f"{report.group_size} in {report.round_seconds:.2f}s | {report.codec or '-'}, {report.bytes_sent / 1e6:.2f} MB sent")


def make_optimizer(collab: Collaboration, model: torch.nn.Module, task, config: RunConfig, schedule):
    """The run's mode (sync, overlapped or DiLoCo) for this task: swarm.modes.mode_optimizer, the one the
    emulated trainers build too."""
    return mode_optimizer(collab, model, task.make_optimizer, config, schedule)


def _train(task, model, opt, collab: Collaboration, config: RunConfig, options: PeerOptions, stop: StopFlag, deadline: float, metrics, summary: PeerSummary, exporter=None) -> None:
    losses: list[float] = []
    mini_steps = 0
    samples_total = 0
    exported_samples = 0
    epoch_started = time.monotonic()
    train_started = time.monotonic()
    compute_seconds = 0.0          # forward + backward (the share of wall time that trains), over the whole run
    epoch_compute = 0.0
    data_seconds = step_seconds = 0.0   # waiting for the next micro-batch; in opt.step/zero_grad (rounds included)
    bytes_sent_total = bytes_received_total = 0

    def on_step(report) -> None:
        nonlocal losses, epoch_started, exported_samples, epoch_compute, bytes_sent_total, bytes_received_total
        loss = sum(losses) / len(losses) if losses else float("nan")
        elapsed = time.monotonic() - epoch_started
        swarm_rate = report.samples / elapsed if elapsed > 0 else 0.0
        line = {
            "epoch": report.epoch, "loss": loss, "samples": report.samples, "swarm_samples_per_second": swarm_rate,
            "local_samples_per_second": opt.samples_per_second, "group_size": report.group_size,
            "round_seconds": report.round_seconds, "bytes_sent": report.bytes_sent, "params_hash": report.params_hash,
            "time": report.time, "peer_id": collab.peer_id,
            "bytes_received": report.bytes_received, "codec": report.codec, "staleness": report.staleness, "mode": config.mode,
            "compute_seconds": round(epoch_compute, 4), "wall_seconds": round(elapsed, 4),
        }
        if math.isfinite(report.predicted_seconds):
            line["predicted_seconds"] = report.predicted_seconds
        bytes_sent_total += report.bytes_sent
        bytes_received_total += report.bytes_received
        epoch_compute = 0.0
        summary.hashes[report.epoch] = report.params_hash
        if metrics is not None:
            metrics.write(json.dumps(line) + "\n")
            metrics.flush()
        if options.print_progress:
            line = epoch_line(report, loss, swarm_rate)
            if options.say is not None:   # `swarm join`: the same format as its start-up lines
                options.say(line)
            else:
                logger.info(line)
        record = records.MetricsRecord(
            peer_id=collab.peer_id, epoch=report.epoch, loss=loss if math.isfinite(loss) else -1.0,
            samples_per_second=records.bounded(opt.samples_per_second, records.MAX_RATE), mini_steps=mini_steps,
            samples_total=samples_total, round_seconds=records.bounded(report.round_seconds, records.MAX_SECONDS), device=str(next(model.parameters()).device), time=time.time(),
            group_size=int(report.group_size), bytes_sent=int(report.bytes_sent), bytes_received=int(report.bytes_received),
        )
        collab.publish_metrics(record)
        if exporter is not None:
            exporter.on_step(epoch=report.epoch, loss=loss, samples_per_second=float(opt.samples_per_second),
                             round_seconds=float(report.round_seconds), bytes_sent=int(report.bytes_sent),
                             new_samples=samples_total - exported_samples)
            exported_samples = samples_total
        losses = []
        epoch_started = time.monotonic()

    opt.on_step.append(on_step)
    amp = MixedPrecision.from_config(config.precision, str(next(model.parameters()).device))
    if amp.dtype is not None:
        logger.info("mixed precision: autocast %s%s", amp.precision, " with a GradScaler" if amp.scaler is not None else "")
    model.train()
    task_epoch = opt.epoch
    task.set_epoch(task_epoch)   # the global epoch, for tasks that key their loss on it (SwAV's prototype freeze)
    body_ended = time.monotonic()
    for batch in task.batches(options.worker_seed):
        data_seconds += time.monotonic() - body_ended
        if collab.authorizer is not None and collab.authorizer.own_problem == "invite revoked":
            raise AuthError("the organizer revoked this peer's invite: the swarm refuses it, so it left the run")
        if stop.is_set() or time.monotonic() > deadline or (options.max_epochs is not None and opt.epoch >= options.max_epochs):
            break
        computing = time.monotonic()
        with amp.autocast():
            loss, n = task.loss(model, batch)
        amp.backward(loss)
        losses.append(float(loss.detach()))
        spent = time.monotonic() - computing
        compute_seconds += spent
        epoch_compute += spent
        mini_steps += 1
        stepping = time.monotonic()
        if amp.step(opt, samples=n):   # an overflowed fp16 step contributes no gradients and no samples
            samples_total += n
        opt.zero_grad()
        step_seconds += time.monotonic() - stepping
        if opt.epoch != task_epoch:   # a global step or a state download moved the epoch
            task_epoch = opt.epoch
            task.set_epoch(task_epoch)
        body_ended = time.monotonic()
    if not stop.is_set():
        opt.finish()   # overlapped modes: apply the round still in flight (bounded by its deadline)
    train_seconds = time.monotonic() - train_started
    summary.epochs = opt.epoch
    summary.samples = samples_total
    summary.rounds_completed = opt.rounds_completed
    summary.rounds_failed = opt.rounds_failed
    summary.state_downloads = opt.state_downloads
    if options.final_state_path is not None:
        from .eval.checkpoint import save_final_state

        save_final_state(options.final_state_path, model, epoch=opt.epoch, config=config, params_hash=opt.params_hash())
    if metrics is not None:
        metrics.write(json.dumps({"final": True, "peer_id": collab.peer_id, "epoch": opt.epoch, "params_hash": opt.params_hash(),
                                  "rounds_completed": opt.rounds_completed, "rounds_failed": opt.rounds_failed,
                                  "state_downloads": opt.state_downloads, "samples": samples_total, "mini_steps": mini_steps,
                                  "compute_seconds": round(compute_seconds, 3), "train_seconds": round(train_seconds, 3),
                                  "round_wait_seconds": round(getattr(opt, "round_wait_seconds", 0.0), 3),
                                  "data_seconds": round(data_seconds, 3), "step_seconds": round(step_seconds, 3),
                                  "bytes_sent": bytes_sent_total, "bytes_received": bytes_received_total, "mode": config.mode,
                                  "overlap": config.overlap, "compression": config.engine.compression,
                                  "precision": amp.precision, "amp_skipped_steps": amp.skipped_steps}) + "\n")
