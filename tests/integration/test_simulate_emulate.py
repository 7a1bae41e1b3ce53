"""`swarm simulate emulate` end to end: real peers in network namespaces, shaped links, cleanup, and the model's agreement.

Needs root and working `ip netns` (skipped with the reason otherwise). Every namespace, veth and qdisc lives in
namespaces named swsim-<pid>-*, deleted by the emulator; the tests check that nothing is left behind.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from swarm.process.lifecycle import pids_alive
from swarm.simulate.emulate import run_allreduce
from swarm.simulate.model import simulate_round
from swarm.simulate.network import namespaces
from swarm.simulate.scenario import load_scenario
from tests.helpers.netns import netns_unusable

REPO = Path(__file__).resolve().parents[2]


_REASON = netns_unusable()
pytestmark = [pytest.mark.integration, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


def _mine(pid: int) -> list[str]:
    return [n for n in namespaces() if n.startswith(f"swsim-{pid}-")]


@pytest.mark.timeout(150)
def test_mini_hetero_end_to_end(tmp_path):
    scenario = load_scenario("mini-hetero").with_workload(params="500K", rounds=3)
    report = run_allreduce(scenario, tmp_path / "logs")
    assert not _mine(os.getpid()), "the emulator must delete its namespaces"
    rounds = report["rounds"]
    assert len(rounds) == 3
    for r in rounds:
        assert r["ok"] == 4, f"a peer failed: {[p.get('error') for p in r['peers']]}"
        assert r["consistent"], "every member must hold the same averaged bytes"
        assert r["max_error"] < 1e-5  # the exact mean of x_i = g + i
        # each member hashes each reducer's part apart: when committers disagree, the report names the part
        hashed = [p["part_hashes"] for p in r["peers"] if p.get("ok")]
        assert len(hashed) == 4 and all(len(h) == len(r["shares"]) for h in hashed) and len({tuple(h) for h in hashed}) == 1
    bound = report["lp_bound_s"]
    assert all(r["seconds"] > 0.9 * bound for r in rounds), "links must be shaped: nothing beats the LP bound"
    # the model, given the shares the swarm used, predicts each balanced round's time. A loose band: a small
    # vector on a shared 2-core machine (benchmarks/README.md's model-vs-emulator table holds the full-size
    # comparison and how far it is from the 25%).
    peers = scenario.peers_expanded()
    for r in rounds[1:]:
        predicted = simulate_round(peers, r["shares"], report["vector_bytes"]).seconds
        assert 0.5 < r["seconds"] / predicted < 2.0, f"emulated {r['seconds']:.2f}s vs modelled {predicted:.2f}s"


@pytest.mark.timeout(120)
def test_interrupt_cleans_up_everything(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarm.cli", "simulate", "emulate", "--scenario", "mini-hetero", "--params", "200K",
         "--rounds", "200", "--log-dir", str(tmp_path / "logs")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a runner started in the background ignores SIGINT
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "round 0" in line or not line:
                break
        assert any("round 0" in l for l in lines), "".join(lines)
        inside = [int(pid) for ns in _mine(proc.pid) for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()]
        assert inside, "peers should be running inside the namespaces"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 130
        assert not _mine(proc.pid), f"namespaces left behind: {_mine(proc.pid)}"
        time.sleep(1.0)
        alive = pids_alive(inside)  # an orphan's zombie has exited; reaping it is init's job
        assert not alive, "peer processes left behind:\n" + subprocess.run(
            ["ps", "-o", "pid,ppid,stat,etime,args", "-p", ",".join(map(str, alive))], capture_output=True, text=True).stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
