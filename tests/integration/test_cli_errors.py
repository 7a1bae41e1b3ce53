"""User mistakes end in one clear line and a non-zero exit code, with nothing left running."""
from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

UNREACHABLE = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3"


def swarm(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarm.cli", "-q", *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("swarm: error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unreachable_initial_peer():
    r = swarm("join", "--run-id", "x", "--initial-peers", UNREACHABLE, "--host-maddrs", "/ip4/127.0.0.1/tcp/0")
    assert r.returncode == 4
    assert "could not reach any initial peer" in one_error_line(r)


def test_missing_data_path(tmp_path):
    r = swarm("join", "--data-path", str(tmp_path / "nothing-here"))
    assert r.returncode == 3
    assert "does not exist" in one_error_line(r)


def test_unknown_task():
    r = swarm("join", "--task", "nope")
    assert r.returncode == 2
    assert "unknown task" in one_error_line(r)


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "e.yaml"
    bad.write_text("engine:\n  target_batch_size: lots\n")
    r = swarm("join", "--config", str(bad))
    assert r.returncode == 2
    assert "target_batch_size" in one_error_line(r)
