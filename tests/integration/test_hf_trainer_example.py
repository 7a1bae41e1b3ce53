"""examples/hf_trainer_mlm.py: three Trainer peers pretrain a masked LM together on loopback and its loss falls."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers.procs import REPO, PeerProcess, wait_until

pytest.importorskip("datasets")
pytest.importorskip("accelerate")

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]


def kjv_genesis(path) -> None:
    try:
        text = subprocess.run(["bible", "Gen1:1-Gen3:24"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        pytest.skip("the bible-kjv package is not installed")
    path.write_text("\n".join(line for line in text.splitlines() if line.strip()) + "\n")


def test_three_trainer_peers_train_and_loss_falls(tmp_path):
    data = tmp_path / "genesis.txt"
    kjv_genesis(data)
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    common = ["--data", str(data), "--max-steps", "90", "--target-batch-size", "48", "--batch-size", "8", "--wait-peers", "3", "--log-swarm"]
    started: list[PeerProcess] = []

    def start(i: int, *extra: str) -> PeerProcess:
        args = [sys.executable, str(REPO / "examples" / "hf_trainer_mlm.py"), *common, "--seed", str(i),
                "--report", str(tmp_path / f"peer{i}.json"), *extra]
        p = PeerProcess(args, log=tmp_path / f"peer{i}.log", env=env)
        started.append(p)
        return p

    try:
        first = start(0)
        maddr = first.maddr
        for i in (1, 2):
            start(i, "--initial-peers", maddr)
        assert wait_until(lambda: all(p.proc.poll() is not None for p in started), timeout=480), "peers did not finish"
        assert [p.proc.returncode for p in started] == [0, 0, 0], [(tmp_path / f"peer{i}.log").read_text()[-2000:] for i in range(3)]
    finally:
        for p in started:
            p.stop()
    reports = [json.loads((tmp_path / f"peer{i}.json").read_text()) for i in range(3)]
    rounds = "\n".join(rounds_of(tmp_path / f"peer{i}.log", f"peer{i}") for i in range(3))
    epochs = [r["swarm_epoch"] for r in reports]
    for report in reports:
        losses = report["losses"]
        assert len(losses) >= 8, losses
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, (losses, rounds)   # the masked-LM loss falls
        assert report["swarm_epoch"] >= 5, (epochs, rounds)    # global steps were taken with the swarm


def rounds_of(log, name: str, limit: int = 40) -> str:
    """The swarm's lines of a peer's log (its first `limit`): what a failure message needs to be understood."""
    keep = [line for line in log.read_text(errors="replace").splitlines()
            if " swarm." in line and "MADDR" not in line]
    return "\n".join(f"{name} {line}" for line in keep[:limit])
