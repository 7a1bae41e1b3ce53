"""The committed swarm_pb2.py is what grpcio-tools generates from swarm.proto."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)
PROTO = Path(__file__).resolve().parents[3] / "swarm" / "proto"


@pytest.mark.integration  # starts a process or opens a socket
def test_generated_code_is_up_to_date(tmp_path):
    shutil.copy(PROTO / "swarm.proto", tmp_path / "swarm.proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", "swarm.proto"], check=True, cwd=tmp_path)
    def body(text: str) -> str:  # the header names the protobuf version that generated it
        return text[text.index("DESCRIPTOR"):]
    assert body((tmp_path / "swarm_pb2.py").read_text()) == body((PROTO / "swarm_pb2.py").read_text())
