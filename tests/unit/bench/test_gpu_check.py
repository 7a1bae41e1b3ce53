"""`python -m benchmarks.gpu` on a machine without CUDA says so, writes nothing and exits 0."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.integration  # starts a process
def test_without_cuda_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}   # hides any GPU, so this path runs on GPU machines too
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--out", str(out)], capture_output=True, text=True,
                          timeout=100, cwd=REPO, env=env)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device" in done.stdout
    assert not out.exists()
