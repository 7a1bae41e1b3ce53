"""coordinator.checkpoints: round trip, digest verification, atomic writes, retention, resolution."""
from __future__ import annotations

import json

import pytest
import torch

from coordinator.checkpoints import (
    CheckpointError,
    doomed_checkpoints,
    list_checkpoints,
    load_checkpoint,
    prune,
    resolve_checkpoint,
    write_checkpoint,
)
from swarm.averaging.state_sync import TrainingState


def state(epoch: int, seed: int = 0) -> TrainingState:
    g = torch.Generator().manual_seed(seed)
    tensors = {"param.0": torch.randn(4, 3, generator=g), "param.1": torch.randn(3, generator=g),
               "opt.0.exp_avg": torch.zeros(4, 3), "opt.0.step": torch.tensor(5.0)}
    return TrainingState(epoch=epoch, tensors=tensors, extra={"param_groups": [{"lr": 0.1, "params": [0, 1], "betas": [0.9, 0.99]}], "opt_extra": {}})


def test_round_trip(tmp_path):
    s = state(10)
    c = write_checkpoint(tmp_path, s, {"task": "toy", "run_id": "r"})
    assert c.path.name == "epoch-00000010" and c.digest == s.digest()
    loaded, meta = load_checkpoint(c.path)
    assert loaded.epoch == 10 and loaded.digest() == s.digest()
    assert list(loaded.tensors) == list(s.tensors)
    assert all(torch.equal(loaded.tensors[k], s.tensors[k]) for k in s.tensors)
    assert meta["task"] == "toy" and meta["extra"]["param_groups"][0]["betas"] == [0.9, 0.99]
    assert not list(tmp_path.glob(".epoch-*"))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "meta", "missing"])
def test_corruption_is_one_clear_error(tmp_path, damage):
    c = write_checkpoint(tmp_path, state(3), {"task": "toy"})
    f = c.path / "state.safetensors"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[-5] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "truncate":
        f.write_bytes(bytes(data[: len(data) // 2]))
    elif damage == "garbage":
        f.write_bytes(b"\x00" * 64)
    elif damage == "meta":
        (c.path / "meta.json").write_text("{not json")
    else:
        f.unlink()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(c.path)
    assert "\n" not in str(e.value) and str(c.path) in str(e.value)


def test_prune_keeps_newest_and_ignores_partial(tmp_path):
    for epoch in (2, 4, 6, 8):
        write_checkpoint(tmp_path, state(epoch), {"task": "toy"})
    (tmp_path / ".epoch-00000010.abc").mkdir()            # a write interrupted by kill -9
    doomed = doomed_checkpoints(tmp_path, keep=2)          # what the history marks removed before prune deletes
    assert [c.epoch for c in doomed] == [2, 4] and all(c.path.exists() for c in doomed)
    removed = prune(tmp_path, keep=2)
    assert [c.path for c in removed] == [c.path for c in doomed]
    assert [c.epoch for c in removed] == [2, 4]
    assert [c.epoch for c in list_checkpoints(tmp_path)] == [6, 8]
    assert not (tmp_path / ".epoch-00000010.abc").exists()


def test_resolve(tmp_path):
    run = tmp_path / "runs" / "myrun"
    for epoch in (5, 10):
        write_checkpoint(run / "checkpoints", state(epoch), {"task": "toy"})
    assert resolve_checkpoint("myrun", tmp_path / "runs").name == "epoch-00000010"
    assert resolve_checkpoint("myrun", tmp_path / "runs", epoch=5).name == "epoch-00000005"
    assert resolve_checkpoint(run).name == "epoch-00000010"
    assert resolve_checkpoint(run / "checkpoints" / "epoch-00000005").name == "epoch-00000005"
    with pytest.raises(CheckpointError, match="no checkpoint at epoch 7"):
        resolve_checkpoint("myrun", tmp_path / "runs", epoch=7)
    with pytest.raises(CheckpointError):
        resolve_checkpoint("other", tmp_path / "runs")
    meta = json.loads((run / "checkpoints" / "epoch-00000010" / "meta.json").read_text())
    assert meta["format"] == "swarm-checkpoint/1" and meta["epoch"] == 10
