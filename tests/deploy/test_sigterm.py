"""SIGTERM, as `docker stop`, Kubernetes and systemd (KillMode=mixed) send it to the main process: a peer and the
coordinator leave the swarm as Ctrl-C does, exit 0 well within the shipped grace periods (compose 30 s, Kubernetes
30 s, systemd 60 s), and leave no child behind (p2pd, the DHT process, the Reaper's watchdog).

Runs after the Prometheus tests (file order), on the same live swarm: trainer first, then the aux peer, then the
coordinator.
"""
from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request

import pytest

from swarm.lifecycle import pids_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

GRACE = 30.0  # the shortest grace period deploy/ ships


def terminate(proc) -> tuple[int, float, list[int]]:
    proc.remember()
    children = set(proc.known)
    assert children, "the process has children (p2pd at least) to clean up"
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    try:
        code = proc.proc.wait(GRACE)
    except subprocess.TimeoutExpired:
        code = None
    took = time.monotonic() - started
    deadline = time.monotonic() + 5
    while pids_alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    return code, took, pids_alive(children)


def test_sigterm_stops_peers_and_coordinator_cleanly(live_swarm):
    deadline = time.monotonic() + 180
    while True:  # both peers in the swarm (this test may run alone)
        try:
            with urllib.request.urlopen(f"{live_swarm.url}/api/status", timeout=10) as response:
                if json.loads(response.read())["peers_by_role"] == {"trainer": 1, "aux": 1}:
                    break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the live swarm never had both peers:\n{live_swarm.logs()}"
        time.sleep(1)

    for name, proc, last_line in (("trainer", live_swarm.trainer, "left run"), ("aux peer", live_swarm.aux, "left run"),
                                  ("coordinator", live_swarm.coordinator, "stopping the coordinator")):
        code, took, leftover = terminate(proc)
        assert code == 0, f"the {name} exited {code} after SIGTERM ({took:.1f}s):\n{proc.text()[-3000:]}"
        assert took < GRACE, f"the {name} took {took:.1f}s"
        assert not leftover, f"the {name} left processes behind: {leftover}"
        assert last_line in proc.text(), f"the {name} did not say goodbye:\n{proc.text()[-2000:]}"
        assert "Traceback" not in proc.text(), f"the {name} printed a traceback:\n{proc.text()[-3000:]}"
        print(f"{name}: exit 0 {took:.1f}s after SIGTERM")
