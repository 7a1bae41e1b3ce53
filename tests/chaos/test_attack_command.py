"""`swarm attack` end to end, briefly: 3 ALBERT-tiny peers and a coordinator on loopback under a ghost's far epoch,
inflated samples, a 400 MB chunk and idle streams; the report's invariants must hold and no process may outlive it.
(Each attack lasts 15 s, longer than the 10 s idle timeout of a state stream. The full run, every attack kind, stays a command: `swarm attack --report r.json`.)
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

import pytest

from swarm.lifecycle import descendants, pids_alive

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_attack_command_report_holds_the_invariants(tmp_path):
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "peers.attack.cli", "--task", "albert", "--peers", "3", "--seconds", "15", "--settle", "5",
        "--attacks", "far_epoch,inflated_samples,huge_chunk,idle_streams", "--streams", "100", "--target-batch-size", "96",
        "--warmup-timeout", "200", "--run-dir", str(tmp_path / "runs"), "--report", str(report_path),
    ]
    with open(tmp_path / "attack.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen: set[int] = set()
    done = threading.Event()

    def remember() -> None:   # every process of the run, so that the test can tell none outlived it
        while not done.is_set() and proc.poll() is None:
            seen.update(descendants(proc.pid))
            done.wait(1.0)

    watcher = threading.Thread(target=remember, daemon=True)
    watcher.start()
    try:
        proc.wait(380)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)   # it still stops its swarm and writes the report
        try:
            proc.wait(30)
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
    tail = "\n".join((tmp_path / "attack.log").read_text(errors="replace").splitlines()[-25:])
    assert not left, f"processes of the attack run outlived it: {left}\n{tail}"
    assert report_path.exists(), f"no report (exit {proc.returncode}):\n{tail}"
    report = json.loads(report_path.read_text())
    assert [a["kind"] for a in report["attacks"]] == ["far_epoch", "inflated_samples", "huge_chunk", "idle_streams"]
    assert report["invariants"] == {k: True for k in report["invariants"]}, (report["invariants"], tail)
    streams = next(a for a in report["attacks"] if a["kind"] == "idle_streams")
    assert streams["attacker"]["closed_by_target"] == streams["attacker"]["opened"] > 0
    assert proc.returncode == 0
