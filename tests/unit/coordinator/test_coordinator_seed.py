"""coordinator.seed: when the coordinator stops serving a checkpoint's state (no network)."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from coordinator.seed import StateSeed
from swarm.averaging.state_sync import TrainingState, params_digest
from swarm.net.records import ProgressRecord


def record(pid: str, epoch: int, params_hash: str = "", role: str = "trainer", leaving: bool = False) -> ProgressRecord:
    return ProgressRecord(peer_id=pid, epoch=epoch, samples=0, samples_per_second=1.0, role=role, upload_bps=0.0,
                          download_bps=0.0, time=0.0, params_hash=params_hash, leaving=leaving)


def test_holders():
    tensors = {"param.0": torch.ones(3), "param.1": torch.zeros(2), "opt.0.m": torch.ones(3)}
    node = SimpleNamespace(peer_id="me", run_id="r", p2p=None)
    seed = StateSeed(node, TrainingState(epoch=10, tensors=tensors, extra={}))  # type: ignore[arg-type]
    assert seed.params_hash == params_digest([torch.ones(3), torch.zeros(2)])
    h = seed.params_hash
    assert seed.holders([record("me", 10, h), record("a", 0), record("b", 10, "other")]) == []
    assert seed.holders([record("a", 10, h)]) == ["a"]                  # downloaded it
    assert seed.holders([record("a", 11)]) == ["a"]                     # moved past it
    assert seed.holders([record("c", 10, h, role="client"), record("d", 11, leaving=True)]) == []
