"""Launch real peer processes for integration tests, and make sure none outlives its test.

`PeerProcess` starts a command, collects its stdout lines in a thread (so `MADDR ...` and
`CHILDREN ...` lines can be awaited), and remembers every descendant it saw; `stop()`
SIGINTs, then SIGKILLs the process and SIGKILLs any remembered descendant still alive.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from swarm.process.lifecycle import descendants, pids_alive

REPO = Path(__file__).resolve().parents[2]


class PeerProcess:
    def __init__(self, args: list[str], *, log: Path | None = None, env: dict | None = None):
        self.args = args
        self.lines: list[str] = []
        self.children: set[int] = set()
        self._log = open(log, "w") if log else subprocess.DEVNULL
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL, text=True, cwd=REPO, env=full_env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    @classmethod
    def toy(cls, out: Path, *extra: str, log: Path | None = None) -> "PeerProcess":
        return cls([sys.executable, "-m", "tests.helpers.toy_peer", "--out", str(out), *extra], log=log)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            if line.startswith("CHILDREN"):
                self.children.update(int(x) for x in line.split()[1:])

    def wait_line(self, prefix: str, timeout: float = 180) -> str:  # a peer can take a minute to start on a busy 2-core box
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines:
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise TimeoutError(f"no {prefix!r} line from {self.args[:4]} (exit code {self.proc.poll()}); got {self.lines[-5:]}")

    @property
    def maddr(self) -> str:
        return self.wait_line("MADDR").split()[1]

    def remember_children(self) -> None:
        if self.proc.poll() is None:
            self.children.update(descendants(self.proc.pid))

    def stop(self, grace: float = 10.0) -> None:
        self.remember_children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        for pid in pids_alive(self.children):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return rows


def wait_until(predicate, timeout: float, interval: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def run_command_owning_all(cmd: list[str], log_path: Path, *, cwd: Path, timeout: float, interrupt_grace: float = 30.0) -> tuple[int, list[int]]:
    """Run a command that starts a whole swarm (`swarm chaos`, `swarm attack`) in its own session, remembering every
    process it ever started; past `timeout` it gets SIGINT (it still stops its swarm and writes its report), then
    SIGKILL. Returns its exit code and the pids of its processes that outlived it by 10 s (killed now, but reported)."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: set[int] = set()
    done = threading.Event()

    def remember() -> None:
        while not done.is_set() and proc.poll() is None:
            seen.update(descendants(proc.pid))
            done.wait(1.0)

    watcher = threading.Thread(target=remember, daemon=True)
    watcher.start()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(interrupt_grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    finally:
        done.set()
        watcher.join(5)
        deadline = time.monotonic() + 10
        while pids_alive(seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = pids_alive(seen)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    return proc.returncode, left
