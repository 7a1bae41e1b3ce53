"""SIGTERM, as `docker stop`, Kubernetes and systemd (KillMode=mixed) send it to the main process: a peer and the
coordinator leave the swarm as Ctrl-C does, exit 0 within the shortest grace period deploy/ ships for them (compose's
stop_grace_period, the pods' terminationGracePeriodSeconds, the unit's TimeoutStopSec), and leave no child behind
(p2pd, the DHT process, the Reaper's watchdog).

Runs after the Prometheus tests (file order), on the same live swarm: the trainer and the aux peer together (as
`docker compose down` stops them), then the coordinator.
"""
from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import pytest
import yaml

from swarm.process.lifecycle import pids_alive
from tests.deploy.deploy_files import DEPLOY, compose

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]



def shipped_grace(component: str) -> float:
    """The shortest grace period deploy/ gives this component's containers, pods or unit, in seconds."""
    services = compose()["services"]
    names = {"coordinator": ["coordinator"], "aux": ["aux-1", "aux-2"], "volunteer": ["volunteer"]}[component]
    graces = [float(services[n]["stop_grace_period"].rstrip("s")) for n in names]
    for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / "base" / f"{component}.yaml").read_text()):
        if doc and doc["kind"] in ("Deployment", "StatefulSet"):
            graces.append(float(doc["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]))
    if component != "coordinator":
        unit = (DEPLOY / "systemd" / "swarm-volunteer.service").read_text()
        graces.append(float(re.search(r"^TimeoutStopSec=(\d+)s?$", unit, re.M).group(1)))
    return min(graces)


def terminate(*procs, grace: float) -> list[tuple[int | None, float, list[int]]]:
    """SIGTERM each process (its main pid only); (exit code, seconds to exit, children left 5 s later) for each."""
    children = []
    for proc in procs:
        proc.remember()
        assert proc.known, "the process has children (p2pd at least) to clean up"
        children.append(set(proc.known))
    started = time.monotonic()
    for proc in procs:
        proc.proc.send_signal(signal.SIGTERM)
    exited: dict[int, tuple[int, float]] = {}
    while len(exited) < len(procs) and time.monotonic() - started < grace:
        for i, proc in enumerate(procs):
            if i not in exited and proc.proc.poll() is not None:
                exited[i] = (proc.proc.returncode, time.monotonic() - started)
        time.sleep(0.1)
    deadline = time.monotonic() + 5
    while any(pids_alive(kids) for kids in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    results = []
    for i, kids in enumerate(children):
        code, took = exited.get(i, (None, time.monotonic() - started))
        results.append((code, took, pids_alive(kids)))
    return results


def test_sigterm_stops_peers_and_coordinator_cleanly(live_swarm):
    deadline = time.monotonic() + 180
    while True:  # both peers in the swarm and training (this test may run alone)
        try:
            with urllib.request.urlopen(f"{live_swarm.url}/api/status", timeout=10) as response:
                status = json.loads(response.read())
            if status["peers_by_role"] == {"trainer": 1, "aux": 1} and status["epoch"] >= 1:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, f"the live swarm never had both peers:\n{live_swarm.logs()}"
        time.sleep(1)

    stages = [
        [("trainer", "volunteer", live_swarm.trainer, "left run"), ("aux peer", "aux", live_swarm.aux, "left run")],
        [("coordinator", "coordinator", live_swarm.coordinator, "stopping the coordinator")],
    ]
    for stage in stages:
        grace = min(shipped_grace(component) for _, component, _, _ in stage)
        results = terminate(*(proc for _, _, proc, _ in stage), grace=grace)
        for (name, _, proc, last_line), (code, took, leftover) in zip(stage, results):
            assert code == 0, f"the {name} exited {code} after SIGTERM ({took:.1f}s):\n{proc.text()[-3000:]}"
            assert took < grace, f"the {name} took {took:.1f}s, over the {grace:.0f}s grace period"
            assert not leftover, f"the {name} left processes behind: {leftover}"
            assert last_line in proc.text(), f"the {name} did not say goodbye:\n{proc.text()[-2000:]}"
            assert "Traceback" not in proc.text(), f"the {name} printed a traceback:\n{proc.text()[-3000:]}"
            print(f"{name}: exit 0 {took:.1f}s after SIGTERM (grace {grace:.0f}s)")
