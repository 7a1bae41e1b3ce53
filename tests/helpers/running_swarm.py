"""A running swarm for integration tests: a coordinator (`swarm launch`) and `swarm join` peers on loopback.

    def test_something(running_swarm):
        swarm = running_swarm(peers=2)                       # coordinator + 2 ALBERT-tiny peers
        status = swarm.wait_status(lambda s: len(s["peers"]) == 2, timeout=240)
        swarm.api("/api/history?metric=loss")

or, for a module-wide swarm, `RunningSwarm(tmp_path_factory.mktemp("swarm"))` and `.close()` it.

Every process is started in a session of its own and remembered with its descendants (p2pd,
the Reaper's watchdog); `close()` SIGINTs, then SIGKILLs every process group and remembered
descendant, so nothing outlives the test (a leaked p2pd keeps CI hanging).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

import pytest

from swarm.process.lifecycle import descendants, pids_alive

REPO = Path(__file__).resolve().parents[2]


class Proc:
    """A child process with its output in a log file, in a session (process group) of its own."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log = log
        self.known: set[int] = set()
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_line(self, prefix: str, timeout: float) -> str:
        """The rest of the first output line that starts with `prefix`."""
        end = time.monotonic() + timeout
        while True:
            for line in self.text().splitlines():
                if line.startswith(prefix):
                    return line[len(prefix):].strip()
            if self.proc.poll() is not None or time.monotonic() > end:
                tail = "\n".join(self.text().splitlines()[-15:])
                raise AssertionError(f"no {prefix!r} line from {' '.join(self.args[2:5])} (exit {self.proc.poll()}):\n{tail}")
            time.sleep(0.2)

    def remember(self) -> None:
        if self.proc.poll() is None:
            self.known.update(descendants(self.proc.pid))

    def kill9(self) -> None:
        """SIGKILL the process itself only (its own Reaper must take its children down)."""
        self.remember()
        self.proc.kill()
        self.proc.wait(10)

    def stop(self, grace: float = 20.0) -> int | None:
        self.remember()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.reap()
        return self.proc.returncode

    def reap(self) -> None:
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for pid in pids_alive(self.known):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def swarm_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "swarm.cli", *args]


class RunningSwarm:
    """A coordinator and its peers (ALBERT tiny by default) under `root`; see the module docstring."""

    def __init__(self, root: Path, *, run_id: str = "itest", task_args: tuple[str, ...] = ("--task", "albert", "--size", "tiny"),
                 target_batch_size: int = 64, micro_batch_size: int = 8):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.root / "runs"
        self.run_id = run_id
        self.run_args = [*task_args, "--run-id", run_id, "--target-batch-size", str(target_batch_size),
                         "--micro-batch-size", str(micro_batch_size)]
        self.coordinator: Proc | None = None
        self.coordinators: list[Proc] = []
        self.peers: list[Proc] = []
        self.url = ""
        self.bootstrap = ""
        self.config_path = self.runs_dir / run_id / "experiment.yaml"

    @property
    def run_dir(self) -> Path:
        return self.runs_dir / self.run_id

    def start_coordinator(self, *extra: str, timeout: float = 180) -> Proc:
        n = len(self.coordinators)
        proc = Proc(swarm_cli("launch", *self.run_args, "--runs-dir", str(self.runs_dir), "--port", "0",
                              "--p2p-host", "127.0.0.1", *extra), self.root / f"coordinator{n}.log")
        self.coordinators.append(proc)
        self.coordinator = proc
        self.url = proc.wait_line("dashboard:", timeout).rstrip("/")
        self.bootstrap = proc.wait_line("bootstrap:", 10)
        proc.remember()
        return proc

    def add_peer(self, *extra: str, duration: float = 600) -> Proc:
        assert self.bootstrap, "start_coordinator() first"
        i = len(self.peers)
        proc = Proc(swarm_cli("join", "--config", str(self.config_path), "--initial-peers", self.bootstrap,
                              "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--worker-seed", str(i), "--duration", str(duration),
                              "--metrics-file", str(self.root / f"peer{i}.jsonl"), *extra), self.root / f"peer{i}.log")
        self.peers.append(proc)
        return proc

    def peer_steps(self, i: int) -> list[dict]:
        path = self.root / f"peer{i}.jsonl"
        rows = []
        for line in (path.read_text().splitlines() if path.exists() else []):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not row.get("final"):
                rows.append(row)
        return rows

    # -- the coordinator's HTTP API ----------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return response.read()

    def api(self, path: str = "/api/status") -> Any:
        return json.loads(self.get(path))

    def wait_status(self, predicate: Callable[[dict], bool], timeout: float, what: str = "") -> dict:
        end = time.monotonic() + timeout
        status: dict = {}
        while time.monotonic() < end:
            try:
                status = self.api()
                if predicate(status):
                    return status
            except OSError:
                pass
            time.sleep(1.0)
        logs = "\n".join(f"--- {p.log.name}\n" + "\n".join(p.text().splitlines()[-8:]) for p in [*self.coordinators[-1:], *self.peers])
        brief = {k: status.get(k) for k in ("epoch", "samples_per_second", "loss", "peers_by_role", "checkpoints")}
        raise AssertionError(f"timed out waiting for {what or 'a status'}: {brief}\n{logs}")

    def close(self) -> None:
        for p in [*self.peers, *self.coordinators]:
            p.remember()
        for p in self.peers:
            p.stop()
        for c in self.coordinators:
            c.stop()


@pytest.fixture
def running_swarm(tmp_path):
    """A factory: `running_swarm(peers=N, **RunningSwarm kwargs)` starts a coordinator and N peers; all end with the test."""
    swarms: list[RunningSwarm] = []

    def start(peers: int = 2, launch_args: tuple[str, ...] = (), peer_args: tuple[str, ...] = (), **kwargs: Any) -> RunningSwarm:
        swarm = RunningSwarm(tmp_path / f"swarm{len(swarms)}", **kwargs)
        swarms.append(swarm)
        swarm.start_coordinator(*launch_args)
        for _ in range(peers):
            swarm.add_peer(*peer_args)
        return swarm

    yield start
    for swarm in swarms:
        swarm.close()
