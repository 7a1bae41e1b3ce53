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
    r = subprocess.run([sys.executable, "-m", "swarm.cli", "join", "--run-id", "x", "--initial-peers", UNREACHABLE,
                        "--host-maddrs", "/ip4/127.0.0.1/tcp/0"], capture_output=True, text=True, timeout=90, stdin=subprocess.DEVNULL)
    assert r.returncode == 4
    assert "could not reach any initial peer" in one_error_line(r)
    # not silent meanwhile: the stage it is at, then each failed attempt, before the error
    assert "starting the p2p node and joining the swarm through 1 initial peer" in r.stdout
    assert r.stderr.index("no initial peer answered") < r.stderr.index("swarm: error:")


def test_join_with_no_run_says_which_run():
    r = swarm("join", "--duration", "1")
    assert r.returncode == 2
    line = one_error_line(r)
    assert "swarm://" in line and "--initial-peers" in line
    assert "joined" not in r.stdout


def test_initial_peer_without_its_peer_id():
    r = swarm("join", "--run-id", "x", "--initial-peers", "/ip4/127.0.0.1/tcp/1")
    assert r.returncode == 2
    line = one_error_line(r)
    assert "/p2p/" in line and "/ip4/127.0.0.1/tcp/1" in line
    assert "Traceback" not in r.stderr and "level=" not in r.stderr   # not the Go daemon's log line


def test_subcommand_error_shows_the_subcommand_usage():
    r = swarm("join", "--no-such-flag")
    assert r.returncode == 2
    assert r.stderr.startswith("usage: swarm join ")
    assert "swarm join: error: unrecognized arguments: --no-such-flag" in r.stderr


def test_demo_does_not_take_over_a_launched_run(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "coordinator.json").write_text("{}")
    r = swarm("demo", "--run-dir", str(tmp_path), "--duration", "1")
    assert r.returncode == 2
    assert "swarm launch" in one_error_line(r)
    assert (tmp_path / "demo" / "coordinator.json").read_text() == "{}"
    assert not (tmp_path / "demo" / "experiment.yaml").exists()


def test_missing_data_path(tmp_path):
    r = swarm("join", "--run-id", "x", "--data-path", str(tmp_path / "nothing-here"))
    assert r.returncode == 3
    assert "does not exist" in one_error_line(r)


def test_unknown_task():
    r = swarm("join", "--run-id", "x", "--task", "nope")
    assert r.returncode == 2
    assert "unknown task" in one_error_line(r)


def test_malformed_config_file(tmp_path):
    bad = tmp_path / "e.yaml"
    bad.write_text("engine:\n  target_batch_size: lots\n")
    r = swarm("join", "--config", str(bad))
    assert r.returncode == 2
    assert "target_batch_size" in one_error_line(r)
