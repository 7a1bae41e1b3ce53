"""`swarm simulate emulate`: real peers on an emulated network (swarm.simulate.network).

`Emulation` owns everything it starts: the namespaces, a bootstrap node in the router namespace,
and one worker process per peer (`ip netns exec NS python -m MODULE ...`), each in a session of its
own (Ctrl-C reaches only the emulator, which then stops them in order) and with PR_SET_PDEATHSIG, so
a SIGKILLed emulator takes its workers along; each worker's own Reaper ends its p2pd. Closing (also
on an exception, Ctrl-C or SIGTERM) stops the workers (`stop`, then SIGTERM, then SIGKILL) and then
deletes the namespaces.

`run_allreduce` is the allreduce workload: every round, the emulator waits until every peer's
view shows the whole swarm at the round's epoch, then says `go` to all at once; each peer
reports the all-reduce seconds (from group formation to its last averaged byte), bytes, shares, its
bandwidth estimates and a hash of its result. A round's time is the largest all-reduce seconds of
its members (the bound `lp_bound_s` is also for the whole group).

`run_training` is the training workload: every trainer trains the task for the same duration, in the
workload's mode (sync, overlap, DiLoCo; see TrainingWorkload); `training_figures` turns the peers' events
into compute utilization, bytes per sample and a loss curve.
"""
from __future__ import annotations

import json
import logging
import math
import os
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from swarm.averaging.balancing import round_seconds, uniform_shares
from swarm.process.lifecycle import set_parent_death_signal

from ..errors import NetworkError
from .network import ROUTER_ADDRESS, EmulatedNetwork, LinkSpec
from .scenario import AllreduceWorkload, PeerInstance, Scenario, TrainingWorkload

logger = logging.getLogger(__name__)

_REPO_ROOT = str(Path(__file__).resolve().parents[2])


class PeerProcess:
    """A worker process whose stdout is JSON events, read by a thread into a queue."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_path
        self._log = open(log_path, "ab")
        parent = os.getpid()
        self.proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
            start_new_session=True, env=env, cwd=_REPO_ROOT,
            preexec_fn=lambda: set_parent_death_signal(signal.SIGKILL, expected_parent=parent),
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.history: list[dict[str, Any]] = []  # every event, in order (expect() skips the ones it is not after)
        self._reader = threading.Thread(target=self._read, name=f"read-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            start = line.find('{"event"')   # a library's own output without a newline may precede an event on its line
            if start < 0:
                continue
            line = line[start:]
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            self.history.append(event)
            self.events.put(event)
        self.events.put(None)

    def send(self, **command: Any) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise NetworkError(f"{self.name} is gone ({e}); see {self.log_path}") from None

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event named `event` (others are dropped); NetworkError on timeout or exit."""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise NetworkError(f"{self.name} sent no {event!r} within {timeout:.0f}s; see {self.log_path}: {self.log_tail()}")
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if item is None:
                self.events.put(None)
                raise NetworkError(f"{self.name} exited ({self.proc.poll()}) before {event!r}; see {self.log_path}: {self.log_tail()}")
            if item.get("event") == event:
                return item

    def log_tail(self, lines: int = 3) -> str:
        try:
            tail = deque(self.log_path.read_text(errors="replace").splitlines(), maxlen=lines)
        except OSError:
            return ""
        return " | ".join(tail)

    def stop(self, grace: float = 8.0) -> None:
        """`stop`, then SIGTERM, then SIGKILL; always reaps the process."""
        if self.proc.poll() is None:
            try:
                self.send(cmd="stop")
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            except (NetworkError, OSError, ValueError):
                pass
            for sig, wait in ((None, grace), (signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
                if sig is not None and self.proc.poll() is None:
                    try:
                        self.proc.send_signal(sig)
                    except ProcessLookupError:
                        pass
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self._log.close()


def gather(procs: Sequence[PeerProcess], event: str, timeout: float) -> list[dict[str, Any]]:
    """One `event` from every process (in order), all within `timeout`."""
    end = time.monotonic() + timeout
    return [p.expect(event, max(0.1, end - time.monotonic())) for p in procs]


@dataclass
class Emulation:
    """An emulated network with a bootstrap node; `spawn` starts workers inside it. Use as a context manager."""

    scenario: Scenario
    log_dir: Path
    nat_filters: bool = True
    peers: list[PeerInstance] = field(init=False)
    network: EmulatedNetwork = field(init=False)
    procs: list[PeerProcess] = field(default_factory=list, init=False)
    bootstrap_maddrs: list[str] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self.peers = self.scenario.peers_expanded()
        self.log_dir = Path(self.log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        links = [LinkSpec(p.upload_bps, p.download_bps, nat=self.nat_filters and p.role == "client") for p in self.peers]
        self.network = EmulatedNetwork(links)

    def __enter__(self) -> "Emulation":
        self._old_term = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up on SIGTERM like on Ctrl-C
        try:
            self.network.start()
        except BaseException:
            self._restore_signals()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _restore_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._old_term)

    def close(self) -> None:
        try:
            threads = [threading.Thread(target=p.stop) for p in self.procs]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            self.procs.clear()
        finally:
            self.network.close()
            self._restore_signals()

    def python(self, i: int | None, module: str, args: Sequence[str], name: str, env: dict[str, str] | None = None) -> PeerProcess:
        """Start `python -m module args` as peer i (None: in the router namespace)."""
        argv = [*self.network.exec_prefix(i), sys.executable, "-m", module, *args]
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, environment.get("PYTHONPATH")]))
        environment.update(env or {})
        proc = PeerProcess(name, argv, self.log_dir / f"{name}.log", env=environment)
        self.procs.append(proc)
        return proc

    def start_bootstrap(self, run_id: str, timeout: float = 90.0) -> list[str]:
        proc = self.python(None, "swarm.simulate.worker", ["--mode", "bootstrap", "--run-id", run_id, "--host", ROUTER_ADDRESS], "bootstrap")
        ready = proc.expect("ready", timeout)
        self.bootstrap_maddrs = [m for m in ready["maddrs"] if ROUTER_ADDRESS in m] or ready["maddrs"]
        return self.bootstrap_maddrs


def _raise_interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def allreduce_timeouts(scenario: Scenario, vector_bytes: int, chunk_bytes: int) -> dict[str, float]:
    """Deadlines that a healthy round on this (maybe divided-down) network meets with room to spare."""
    peers = scenario.peers_expanded()
    links = [p.link() for p in peers]
    uniform = round_seconds(vector_bytes, links, uniform_shares(links))
    streams = max(1, sum(p.can_reduce for p in peers))
    slowest_stream = min(min(p.upload_bps, p.download_bps) for p in peers) / streams
    engine = scenario.engine_config()
    # at least 15 s: on a loaded 2-core machine a healthy peer can stall for seconds (the engine's default, 5 s,
    # then drops about one peer-round in twenty on mini-hetero); scaled with the slowest stream's chunk time
    sender = max(engine.sender_timeout, 15.0, 4 * chunk_bytes / slowest_stream)
    return {
        "averaging_timeout": max(engine.averaging_timeout, 4 * uniform + 30),
        "sender_timeout": sender,
        "matchmaking_timeout": max(engine.matchmaking_timeout, 30.0),
        "gather_timeout": max(engine.gather_timeout, 3.0),
    }


def run_allreduce(
    scenario: Scenario,
    log_dir: Path,
    *,
    run_id: str = "emulate",
    ready_timeout: float = 240.0,
    progress: Callable[[str], None] | None = None,
    engine_overrides: dict[str, Any] | None = None,
    trace: bool = False,
) -> dict[str, Any]:
    """Run the scenario's allreduce workload on an emulated network; returns the report (see summarize_rounds)."""
    workload = scenario.workload
    assert isinstance(workload, AllreduceWorkload)
    say = progress or (lambda s: None)
    vector_bytes = scenario.vector_bytes()
    engine = scenario.engine_config()
    chunk_bytes = engine.chunk_elements * {"none": 4, "fp16": 2}.get(workload.compression, 1)
    overrides = {**scenario.engine, **allreduce_timeouts(scenario, vector_bytes, chunk_bytes), **(engine_overrides or {})}
    with Emulation(scenario, log_dir) as emu:
        say(f"network up: {len(emu.peers)} peers in namespaces {emu.network.prefix}-*")
        initial = emu.start_bootstrap(run_id)
        trainers = ",".join(str(p.index) for p in emu.peers if p.brings)
        procs = []
        for p in emu.peers:
            args = [
                "--mode", "allreduce", "--run-id", run_id, "--role", p.role, "--host", emu.network.address(p.index),
                "--initial-peers", *initial, "--index", str(p.index), "--peers", str(len(emu.peers)),
                "--trainer-indices", trainers, "--params", str(workload.params), "--compression", workload.compression,
                "--engine", json.dumps(overrides), *(["--trace"] if trace else []),
            ]
            procs.append(emu.python(p.index, "swarm.simulate.worker", args, f"peer{p.index}-{p.name}"))
        gather(procs, "ready", ready_timeout)
        say(f"{len(procs)} peers joined")
        rounds = []
        round_budget = overrides["matchmaking_timeout"] + overrides["averaging_timeout"] + 30
        for r in range(workload.rounds):
            for proc in procs:
                proc.send(cmd="prepare", round=r, timeout=60)
            prepared = gather(procs, "prepared", 90)
            for proc in procs:
                proc.send(cmd="go", round=r)
            reports = gather(procs, "round", round_budget)
            for report, peer, pre in zip(reports, emu.peers, prepared):
                report.update(index=peer.index, name=peer.name, role=peer.role, seen=pre.get("seen"))
            rounds.append(reports)
            summary = summarize_round(reports)
            say(f"round {r}: {summary['seconds']:.2f}s all-reduce, {summary['ok']}/{len(reports)} ok, consistent={summary['consistent']}")
    return {
        "scenario": scenario.name, "peers": len(scenario.peers_expanded()), "params": workload.params,
        "compression": workload.compression, "vector_bytes": vector_bytes, "lp_bound_s": scenario.lp_bound(vector_bytes),
        "engine": overrides, "rounds": [summarize_round(r) | {"peers": r} for r in rounds],
    }


def run_training(
    scenario: Scenario,
    log_dir: Path,
    *,
    run_id: str = "emulate-train",
    ready_timeout: float = 300.0,
    progress: Callable[[str], None] | None = None,
    engine_overrides: dict[str, Any] | None = None,
    worker: str = "swarm.simulate.worker",
) -> dict[str, Any]:
    """Run the scenario's training workload (in its mode); returns swarm samples/s, each peer's solo rate, and the
    figures of `training_figures` (compute utilization, bytes per sample, loss curve). `worker`: the peers' module
    (a benchmark's wrapper of swarm.simulate.worker that counts more)."""
    workload = scenario.workload
    assert isinstance(workload, TrainingWorkload)
    say = progress or (lambda s: None)
    overrides = {**scenario.engine, "averaging_timeout": max(scenario.engine_config().averaging_timeout, 120.0),
                 "sender_timeout": max(scenario.engine_config().sender_timeout, 15.0), **(engine_overrides or {})}
    payload = json.dumps(workload.model_dump())
    with Emulation(scenario, log_dir) as emu:
        say(f"network up: {len(emu.peers)} peers in namespaces {emu.network.prefix}-*")
        initial = emu.start_bootstrap(run_id)
        # build the task's caches (tokenizer, corpus) once, before peers race to build them
        prep = emu.python(None, "swarm.simulate.worker", ["--mode", "training", "--prepare", "--host", ROUTER_ADDRESS, "--workload", payload], "prepare")
        prep.expect("prepared", ready_timeout)
        trainers = sum(p.brings for p in emu.peers)
        procs = []
        for p in emu.peers:
            args = ["--mode", "training", "--run-id", run_id, "--role", p.role, "--host", emu.network.address(p.index),
                    "--initial-peers", *initial, "--index", str(p.index), "--compute", str(p.compute), "--trainers", str(trainers),
                    "--workload", payload, "--engine", json.dumps(overrides)]
            procs.append(emu.python(p.index, worker, args, f"peer{p.index}-{p.name}"))
        ready = gather(procs, "ready", ready_timeout)
        say(f"{len(procs)} peers joined ({workload.mode}{', overlap' if workload.overlap else ''}, {workload.compression}, "
            f"target batch {ready[0].get('target_batch_size')}); training for {workload.duration:.0f}s")
        started = time.time()
        for proc in procs:
            proc.send(cmd="go", duration=workload.duration)
        summaries = gather(procs, "summary", workload.duration + 300)
        histories = [list(proc.history) for proc in procs]
    steps: dict[int, dict[str, Any]] = {}
    for history in histories:
        for item in history:
            if item.get("event") == "step" and item.get("time", 0) <= started + workload.duration:
                steps.setdefault(item["epoch"], item)
    trainer_summaries = [s for s, p in zip(summaries, emu.peers) if p.brings]
    solo = sum(s["samples"] / s["compute_seconds"] for s in trainer_summaries if s.get("compute_seconds"))
    nominal = sum(workload.micro_batch_size * p.compute / workload.step_seconds for p in emu.peers if p.brings) if workload.step_seconds else None
    averaged = sum(s["samples"] for s in steps.values())
    swarm_rate = averaged / workload.duration
    rounds = [s["seconds"] for s in steps.values()]
    return {
        "scenario": scenario.name, "peers": len(emu.peers), "duration": workload.duration, "epochs": len(steps),
        "mode": workload.mode, "overlap": workload.overlap, "compression": workload.compression,
        "target_batch_size": ready[0].get("target_batch_size"),
        "swarm_samples_per_second": swarm_rate, "solo_samples_per_second": solo, "nominal_solo_samples_per_second": nominal,
        "utilization": swarm_rate / solo if solo else float("nan"),
        "median_round_seconds": statistics.median(rounds) if rounds else float("nan"),
        "consistent": len({s.get("hash") for s in trainer_summaries}) == 1, "started": started,
        **training_figures([p.brings for p in emu.peers], summaries, histories, started, workload.duration),
        "peers_detail": summaries,
    }


def optimizer_share(trainers: Sequence[dict[str, Any]]) -> float | None:
    """The trainers' seconds in opt.step and zero_grad less their seconds blocked on rounds (where reported), over
    their training wall time."""
    elapsed = sum(s.get("elapsed", 0.0) for s in trainers)
    if not elapsed or any("step_seconds" not in s for s in trainers):
        return None
    return sum(s["step_seconds"] - s.get("round_wait_seconds", 0.0) for s in trainers) / elapsed


def training_utilization(trainers: Sequence[dict[str, Any]]) -> float | None:
    """The trainers' forward/backward and inner optimizer seconds over their training wall time (None: not reported)."""
    elapsed = sum(s.get("elapsed", 0.0) for s in trainers)
    if not elapsed or any("compute_seconds" not in s or "inner_step_seconds" not in s for s in trainers):
        return None
    return sum(s["compute_seconds"] + s["inner_step_seconds"] for s in trainers) / elapsed


def training_figures(brings: Sequence[bool], summaries: Sequence[dict[str, Any]], histories: Sequence[Sequence[dict[str, Any]]],
                     started: float, duration: float | None = None, bin_seconds: float = 15.0) -> dict[str, Any]:
    """The figures of a training run from its peers' `summary` events and event histories (swarm's emulated
    trainers and benchmarks' hivemind trainers report the same fields); `brings[i]`: peer i trains.

    - compute_utilization: the trainers' forward/backward seconds over their training wall time (summed);
      training_utilization: forward/backward and the inner optimizer's steps (local-step modes: DiLoCo, streaming)
      over the same, issue 19's "compute" (the rest, waiting, encoding, sending, applying outer updates, is overhead);
      round_wait_share: the share they were blocked on rounds (where reported), optimizer_share: the share in
      opt.step and zero_grad less the rounds' (with no round-wait figure, as hivemind's: rounds included);
    - bytes_sent_per_sample: bytes the rounds sent (all peers, aux included) over the samples the trainers
      computed; net_bytes_sent_per_sample: the same from the namespaces' interface counters (all traffic);
    - loss_curve: [seconds since `started`, mean loss of the micro-batches in that bin, samples computed by
      then], one point per `bin_seconds` (the micro-batch losses of every trainer: DiLoCo's are its inner models');
      a bin's seconds are its end, or `duration` for the last, shorter one."""
    trainers = [s for s, b in zip(summaries, brings) if b]
    samples = sum(s.get("samples", 0) for s in trainers)
    elapsed = sum(s.get("elapsed", 0.0) for s in trainers)

    def share(key: str) -> float | None:
        if not elapsed or any(key not in s for s in trainers):
            return None
        return sum(s[key] for s in trainers) / elapsed

    def per_sample(key: str) -> float | None:
        if not samples or any(key not in s for s in summaries):
            return None
        return sum(s[key] for s in summaries) / samples

    points: dict[int, list[float]] = {}
    counts: dict[int, float] = {}
    nan_losses = 0
    for history in (h for h, b in zip(histories, brings) if b):
        for item in history:
            if item.get("event") == "local" and item.get("loss") != item.get("loss"):   # NaN: counted, left out of the curve
                nan_losses += 1
            elif item.get("event") == "local":
                k = max(0, int((item["time"] - started) // bin_seconds))
                if duration is not None:   # a micro-batch begun before the end and finished after it: the last bin
                    k = min(k, max(0, math.ceil(duration / bin_seconds) - 1))
                points.setdefault(k, []).append(float(item["loss"]))
                counts[k] = counts.get(k, 0.0) + float(item.get("samples", 0))
    curve, seen = [], 0.0
    for k in sorted(points):
        seen += counts[k]
        end = (k + 1) * bin_seconds if duration is None else min((k + 1) * bin_seconds, duration)
        curve.append([round(end, 2), round(sum(points[k]) / len(points[k]), 4), int(seen)])
    return {
        "samples": samples, "compute_utilization": share("compute_seconds"), "round_wait_share": share("round_wait_seconds"),
        "training_utilization": training_utilization(trainers),
        "optimizer_share": optimizer_share(trainers), "bytes_sent_per_sample": per_sample("bytes_sent"),
        "net_bytes_sent_per_sample": per_sample("net_bytes_sent"),
        "rounds_completed": max((s.get("rounds_completed", 0) for s in trainers), default=0),
        "failed_rounds": sum(s.get("rounds_failed", 0) for s in trainers), "nan_losses": nan_losses, "loss_curve": curve,
    }


def summarize_round(reports: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in reports if r.get("ok")]
    hashes = {r["hash"] for r in ok if "hash" in r}
    shares = None
    with_info = next((r for r in ok if "shares" in r and "members" in r), None)
    if with_info is not None:  # the group lists members by peer id: put the shares in scenario order
        by_id = dict(zip(with_info["members"], with_info["shares"]))
        shares = [by_id.get(r.get("peer_id"), 0.0) for r in reports]
    return {
        "ok": len(ok),
        "seconds": max((r["seconds"] for r in ok), default=float("nan")),
        "wall": max((r["wall"] for r in ok), default=float("nan")),
        "consistent": len(hashes) <= 1,
        "max_error": max((r.get("max_error", 0.0) for r in ok), default=float("nan")),
        "shares": shares,
    }


def median_round_seconds(report: dict[str, Any], skip: int = 0) -> float:
    """Median all-reduce seconds over the rounds after the first `skip` (failed rounds count as missing)."""
    values = [r["seconds"] for r in report["rounds"][skip:] if r["ok"] == len(r["peers"])]
    return statistics.median(values) if values else float("nan")
