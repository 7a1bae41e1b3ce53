"""SwAV pretrained by a real 3-peer swarm on loopback (`swarm demo --task swav`), then `swarm eval` on its final state."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from peers.data.images import FASHION_MNIST_DIR

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(480),   # about 100 s on a quiet machine; peers start slowly on a loaded one
    pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="needs the Debian package dataset-fashion-mnist"),
]


def swarm(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "swarm.cli", "-q", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def test_three_peers_pretrain_swav_and_eval_reads_the_final_state(tmp_path):
    report_path = tmp_path / "r.json"
    demo = swarm("demo", "--task", "swav", "--peers", "3", "--duration", "60", "--report", str(report_path),
                 "--run-dir", str(tmp_path / "runs"), "--run-id", "swavtest", "--port", "0", timeout=300)
    assert report_path.exists(), demo.stderr[-3000:]
    report = json.loads(report_path.read_text())
    logs = "\n".join((tmp_path / "runs" / "swavtest" / f"peer{i}.log").read_text()[-1500:] for i in range(3))
    assert report["epochs"] >= 3, logs
    assert report["params_identical"] is True, report
    assert report["loss_last"] < report["loss_first"], report
    final = tmp_path / "runs" / "swavtest" / "final.pt"
    assert report.get("final_state") == str(final) and final.exists()

    result = swarm("eval", "--checkpoint", str(final), "--max-batches", "1", "--threads", "1", timeout=150)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)
    assert out["task"] == "swav" and out["metric"] == "linear_probe_accuracy"
    assert 0.1 < out["accuracy"] <= 1.0 and 0.1 < out["random_init_accuracy"] <= 1.0
    assert out["epoch"] >= 3
