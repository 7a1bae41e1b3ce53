"""What a user can get wrong with `swarm launch` / `swarm export` ends in one clear line, not a traceback."""
from __future__ import annotations

import socket
import subprocess

import pytest
import torch

from coordinator.checkpoints import write_checkpoint
from coordinator.run_folder import FolderState, RunFolder
from swarm.averaging.state_sync import TrainingState
from tests.helpers.running_swarm import swarm_cli

pytestmark = pytest.mark.integration


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(swarm_cli(*args), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode not in (0, None), result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("swarm: error: "), result.stderr
    return last


@pytest.mark.timeout(120)
def test_malformed_config_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("run_id: [unclosed\n")
    assert "is not valid YAML" in one_error_line(run("launch", "--config", str(bad), "--runs-dir", str(tmp_path), "--port", "0"))
    bad.write_text("run_id: x\nlearning_rate: 3\n")
    assert "bad config: learning_rate" in one_error_line(run("launch", "--config", str(bad), "--runs-dir", str(tmp_path), "--port", "0"))
    assert "does not exist" in one_error_line(run("launch", "--config", str(tmp_path / "nope.yaml"), "--port", "0"))


@pytest.mark.timeout(120)
def test_unknown_task_and_bad_flags(tmp_path):
    assert "unknown task 'nope'" in one_error_line(run("launch", "--task", "nope", "--runs-dir", str(tmp_path), "--port", "0"))
    assert "bad --port" in one_error_line(run("launch", "--task", "albert", "--runs-dir", str(tmp_path), "--port", "70000"))
    assert "bad --keep-checkpoints" in one_error_line(run("launch", "--runs-dir", str(tmp_path), "--keep-checkpoints", "0"))


@pytest.mark.timeout(120)
def test_port_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(run("launch", "--task", "albert", "--runs-dir", str(tmp_path), "--port", str(port)))
    assert f"port {port} on 127.0.0.1 is already in use" in line


@pytest.mark.timeout(120)
def test_run_folder_of_another_config(tmp_path):
    folder = RunFolder.open(tmp_path, "r1")
    folder.save_state(FolderState(run_id="r1", task="albert", config_digest="something else", created_at=1.0))
    line = one_error_line(run("launch", "--task", "albert", "--run-id", "r1", "--runs-dir", str(tmp_path), "--port", "0"))
    assert "launched with another config" in line and "--fresh" in line


@pytest.mark.timeout(300)
def test_corrupted_checkpoint(tmp_path):
    tensors = {"param.0": torch.randn(8, 8), "param.1": torch.randn(8)}
    c = write_checkpoint(tmp_path / "ck", TrainingState(epoch=4, tensors=tensors, extra={}), {"task": "albert"})
    data = bytearray((c.path / "state.safetensors").read_bytes())
    data[-3] ^= 0x55
    (c.path / "state.safetensors").write_bytes(bytes(data))
    line = one_error_line(run("export", str(c.path), "--out", str(tmp_path / "hf")))
    assert "is corrupted" in line and not (tmp_path / "hf").exists()
    line = one_error_line(run("launch", "--task", "albert", "--runs-dir", str(tmp_path / "runs"), "--port", "0",
                              "--from-checkpoint", str(c.path), timeout=240), )
    assert "is corrupted" in line
    (c.path / "meta.json").write_text("{")
    assert "unreadable meta.json" in one_error_line(run("export", str(c.path)))
    assert "no checkpoint found for nope" in one_error_line(run("export", "nope", "--runs-dir", str(tmp_path)))
    assert "does not exist" in one_error_line(run("launch", "--task", "albert", "--from-checkpoint", str(tmp_path / "missing"), "--port", "0"))
    assert "unknown export format" in one_error_line(run("export", str(c.path), "--format", "onnx"))


@pytest.mark.timeout(120)
def test_run_folder_in_use(tmp_path):
    import os

    RunFolder.open(tmp_path, "busy").lock()     # this test process plays the running coordinator
    line = one_error_line(run("launch", "--task", "albert", "--run-id", "busy", "--runs-dir", str(tmp_path), "--port", "0"))
    assert f"is in use by another coordinator (pid {os.getpid()})" in line
