"""`swarm attack` end to end, briefly: 3 ALBERT-tiny peers and a coordinator on loopback under a ghost's far epoch,
inflated samples, a 400 MB chunk and idle streams; the report's invariants must hold and no process may outlive it.
Each attack lasts 15 s, longer than the 10 s idle timeout of a state stream. (The full run, every attack kind,
stays a command: `swarm attack --report r.json`.)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.procs import run_command_owning_all

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]


def test_attack_command_report_holds_the_invariants(tmp_path):
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "peers.attack.cli", "--task", "albert", "--peers", "3", "--seconds", "15", "--settle", "5",
        "--attacks", "far_epoch,inflated_samples,huge_chunk,idle_streams", "--streams", "100", "--target-batch-size", "96",
        "--warmup-timeout", "200", "--run-dir", str(tmp_path / "runs"), "--report", str(report_path),
    ]
    returncode, left = run_command_owning_all(cmd, tmp_path / "attack.log", cwd=REPO, timeout=380, interrupt_grace=30)
    tail = "\n".join((tmp_path / "attack.log").read_text(errors="replace").splitlines()[-25:])
    assert not left, f"processes of the attack run outlived it: {left}\n{tail}"
    assert report_path.exists(), f"no report (exit {returncode}):\n{tail}"
    report = json.loads(report_path.read_text())
    assert [a["kind"] for a in report["attacks"]] == ["far_epoch", "inflated_samples", "huge_chunk", "idle_streams"]
    # stall_within_one_round is reported, not asserted: with 0.5 s rounds on a shared 2-core box the jitter alone
    # exceeds one round, and a ghost trainer record still makes a leader wait up to gather_timeout (2 s) per round
    held = {k: ok for k, ok in report["invariants"].items() if k != "stall_within_one_round"}
    assert held == {k: True for k in held}, (report["invariants"], tail)
    streams = next(a for a in report["attacks"] if a["kind"] == "idle_streams")
    assert streams["attacker"]["closed_by_target"] == streams["attacker"]["opened"] > 0
    assert returncode == (0 if all(report["invariants"].values()) else 1)
