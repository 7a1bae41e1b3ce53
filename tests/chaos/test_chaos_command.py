"""`swarm chaos` end to end, briefly: 3 ALBERT-tiny peers and a coordinator on loopback, a trainer SIGKILLed
mid reduce-scatter and the coordinator killed -9 and restarted; the report's invariants must hold and no
process of the run may outlive it. (The long randomized run, every fault kind, stays a command.)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.procs import run_command_owning_all

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_chaos_command_report_holds_the_invariants(tmp_path):
    report_path = tmp_path / "report.json"
    cmd = [
        sys.executable, "-m", "swarm.cli", "chaos", "--task", "albert", "--peers", "3", "--duration", "40", "--seed", "0",
        "--faults", "kill_reduce_scatter,coordinator_restart", "--target-batch-size", "96", "--restart-after", "5",
        "--warmup-timeout", "150", "--run-dir", str(tmp_path / "runs"), "--report", str(report_path),
    ]
    returncode, left = run_command_owning_all(cmd, tmp_path / "chaos.log", cwd=REPO, timeout=225, interrupt_grace=40)
    tail = "\n".join((tmp_path / "chaos.log").read_text(errors="replace").splitlines()[-25:])
    assert not left, f"processes of the chaos run outlived it: {left}\n{tail}"
    assert report_path.exists(), f"no report (exit {returncode}):\n{tail}"
    report = json.loads(report_path.read_text())
    assert report["divergent_commits"] == 0, report["divergent_epochs"]
    assert report["orphan_processes"] == 0, report["orphans"]
    assert report["processes_checked"] >= 4, report["processes_checked"]   # 3 peers and the coordinator at least
    assert report["round_seconds_max"] is not None and report["round_seconds_max"] <= report["deadline_s"]
    assert report["epochs"]["new_during_faults"] > 0 and report["epochs"]["increasing"], report["epochs"]
    assert report["history_lost"] is not True, report["history_checks"]
    assert sum(report["faults"].values()) >= 1, report["events"]
    assert "network_cut" in report["skipped"]
    for key in ("duration_s", "rounds_completed", "rounds_failed", "longest_stall_s", "events"):
        assert key in report
