"""examples/torchrun_volunteer.py: a 2-rank torchrun volunteer (gloo on CPU) and a 1-rank volunteer train together
on loopback, and hold identical parameters: the two ranks after every step, the two volunteers at every common epoch."""
from __future__ import annotations

import json
import socket
import sys

import pytest

from tests.helpers.procs import REPO, PeerProcess, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

EPOCHS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_rank_and_one_rank_volunteers_hold_identical_parameters(tmp_path):
    example = str(REPO / "examples" / "torchrun_volunteer.py")
    common = ["--max-epochs", str(EPOCHS), "--target-batch-size", "48", "--batch-size", "8", "--wait-peers", "2"]
    env = {"GLOO_SOCKET_IFNAME": "lo", "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    started: list[PeerProcess] = []
    try:
        multi = PeerProcess([*launcher, example, *common, "--seed", "1", "--report", str(tmp_path / "multi")],
                            log=tmp_path / "multi.log", env=env)
        started.append(multi)
        single = PeerProcess([sys.executable, example, *common, "--seed", "2", "--report", str(tmp_path / "single"),
                              "--initial-peers", multi.maddr], log=tmp_path / "single.log", env=env)
        started.append(single)
        assert wait_until(lambda: all(p.proc.poll() is not None for p in started), timeout=300), "volunteers did not finish"
        assert [p.proc.returncode for p in started] == [0, 0], [(tmp_path / f"{n}.log").read_text()[-1500:] for n in ("multi", "single")]
    finally:
        for p in started:
            p.stop()
    rank0, rank1, solo = (json.loads((tmp_path / name).read_text()) for name in ("multi.rank0.json", "multi.rank1.json", "single.rank0.json"))
    assert rank0["epoch"] == rank1["epoch"] >= EPOCHS
    assert rank0["params_hash"] == rank1["params_hash"]          # all ranks applied the same step
    assert rank0["hashes"] == rank1["hashes"]
    common = sorted(set(rank0["hashes"]) & set(solo["hashes"]), key=int)
    assert len(common) >= 2, (rank0["hashes"], solo["hashes"])   # they trained together, not each alone
    assert all(rank0["hashes"][e] == solo["hashes"][e] for e in common), (rank0["hashes"], solo["hashes"])
