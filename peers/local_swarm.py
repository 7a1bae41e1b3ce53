"""A whole swarm on this machine, as child processes: the pieces `swarm demo` and `swarm chaos` share.

- `start_coordinator`: `swarm launch` as an owned child; waits for its bootstrap multiaddr and dashboard URL.
- `peer_command`: the `swarm join` command line of one loopback volunteer.
- `read_jsonl`, `epochs_of`: the peers' metrics files (one JSON line per global step, then a final line).
- `stop_all`: SIGINT, then SIGKILL after a grace period.

Children get PR_SET_PDEATHSIG (they die with the process that started them: start them from its main
thread, see swarm.process.lifecycle.set_parent_death_signal), and each one's Reaper ends its p2pd daemon too.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from swarm.process.lifecycle import set_parent_death_signal


def start_coordinator(config_path: Path, runs_dir: Path, run_dir: Path, *, port: int = 0, checkpoint_every: int = 2,
                      fresh: bool = True, log_path: Path | None = None, timeout: float = 180.0,
                      sleep: Callable[[float], None] = time.sleep) -> tuple[subprocess.Popen, str, str]:
    """`swarm launch` as an owned child; returns it with its bootstrap multiaddr and dashboard URL.

    `fresh=False` restarts a run's coordinator on its folder (same identity, p2p port, history and checkpoints);
    `sleep` is how to wait between looks at its log (a caller with its own watch to keep going passes its own)."""
    from swarm.errors import NetworkError

    log_path = log_path or run_dir / "coordinator.log"
    cmd = [
        sys.executable, "-m", "swarm.cli", "launch", "--config", str(config_path), "--runs-dir", str(runs_dir),
        "--port", str(port), "--p2p-host", "127.0.0.1", "--checkpoint-every", str(checkpoint_every),
    ]
    if fresh:
        cmd.append("--fresh")
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=set_parent_death_signal)
    found: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(found) < 2:
        for line in log_path.read_text().splitlines():
            for key in ("bootstrap", "dashboard"):
                if line.startswith(key + ": "):
                    found[key] = line.split(": ", 1)[1].strip()
        if proc.poll() is not None:
            errors = [l for l in log_path.read_text().splitlines() if l.startswith("swarm: error:")]
            raise NetworkError(errors[-1].removeprefix("swarm: error: ") if errors else f"the coordinator exited ({proc.returncode}): see {log_path}")
        sleep(0.2)
    if len(found) < 2:
        stop_all([proc])
        raise NetworkError(f"the coordinator did not start in {timeout:.0f} s: see {log_path}")
    return proc, found["bootstrap"], found["dashboard"]


def peer_command(config_path: Path, bootstrap: str | Sequence[str], metrics_path: Path, *, worker_seed: int, duration: float | None = None,
                 module: Sequence[str] = ("-m", "swarm.cli"), extra: Sequence[str] = ()) -> list[str]:
    """The command line of one loopback volunteer (`module` may name a wrapper that takes the same arguments);
    `bootstrap`: the coordinator's multiaddr, or several initial peers."""
    initial = [bootstrap] if isinstance(bootstrap, str) else list(bootstrap)
    cmd = [
        sys.executable, *module, "join", "--config", str(config_path), "--initial-peers", *initial,
        "--host-maddrs", "/ip4/127.0.0.1/tcp/0", "--metrics-file", str(metrics_path), "--worker-seed", str(worker_seed),
    ]
    if duration is not None:
        # --duration is training time: each peer counts it from the moment it is ready to train,
        # so a slow start (a loaded machine, a cold cache) does not eat the run
        cmd += ["--duration", f"{duration:.1f}"]
    return [*cmd, *extra]


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written right now
    return out


def epochs_of(paths: Iterable[Path]) -> dict[int, list[dict]]:
    """Each global epoch's step lines, from every metrics file."""
    per_epoch: dict[int, list[dict]] = {}
    for path in paths:
        for row in read_jsonl(path):
            if not row.get("final"):
                per_epoch.setdefault(row["epoch"], []).append(row)
    return per_epoch


def stop_all(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
