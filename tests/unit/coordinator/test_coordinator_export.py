"""coordinator.export: a checkpoint of the ALBERT task becomes a folder that transformers loads, weights intact."""
from __future__ import annotations

import pytest
import torch

from coordinator.checkpoints import CheckpointError, write_checkpoint
from coordinator.export import export_checkpoint
from coordinator.identity import load_or_create_rsa_key
from peers.tasks import TaskSettings, get_task
from swarm.averaging.state_sync import TrainingState
from swarm.errors import ConfigError


@pytest.fixture(scope="module")
def task():
    return get_task("albert", TaskSettings(options={"size": "tiny"}))


def test_export_loads_in_transformers(tmp_path, task):
    from transformers import AlbertForPreTraining, AutoModel

    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    trained = {f"param.{i}": p.detach() + 0.01 * torch.randn(p.shape, generator=g) for i, p in enumerate(params)}
    meta = {"task": "albert", "task_options": {"size": "tiny"}, "run_config": {"seed": 0, "task_options": {"size": "tiny"}},
            "fingerprint": task.fingerprint()}
    c = write_checkpoint(tmp_path / "ck", TrainingState(epoch=7, tensors=trained, extra={}), meta)
    out = export_checkpoint(c.path, tmp_path / "hf")
    for f in out.rglob("*"):   # an export is shared: readable by others, like any file the user writes
        assert not f.is_file() or f.stat().st_mode & 0o044 == 0o044, f
    loaded = AlbertForPreTraining.from_pretrained(out)
    loaded_params = [p for p in loaded.parameters() if p.requires_grad]
    assert len(loaded_params) == len(params)
    for i, p in enumerate(loaded_params):
        assert torch.equal(p.detach(), trained[f"param.{i}"]), i
    AutoModel.from_pretrained(out)

    bad = dict(meta, fingerprint={**meta["fingerprint"], "tokenizer": "0" * 64})
    c2 = write_checkpoint(tmp_path / "ck2", TrainingState(epoch=7, tensors=trained, extra={}), bad)
    with pytest.raises(ConfigError, match="another tokenizer"):
        export_checkpoint(c2.path, tmp_path / "hf2")
    short = {k: v for k, v in trained.items() if k != f"param.{len(params) - 1}"}
    c3 = write_checkpoint(tmp_path / "ck3", TrainingState(epoch=7, tensors=short, extra={}), meta)
    with pytest.raises(CheckpointError, match="does not fit"):
        export_checkpoint(c3.path, tmp_path / "hf3")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_checkpoint(c.path, tmp_path / "x", "onnx")


@pytest.mark.integration  # starts a process
def test_export_command_says_it_once(tmp_path, task, capsys):
    from swarm.cli import main

    model = task.build_model()
    state = {f"param.{i}": p.detach() for i, p in enumerate(p for p in model.parameters() if p.requires_grad)}
    meta = {"task": "albert", "task_options": {"size": "tiny"}, "run_config": {"seed": 0, "task_options": {"size": "tiny"}},
            "fingerprint": task.fingerprint()}
    c = write_checkpoint(tmp_path / "run" / "checkpoints", TrainingState(epoch=3, tensors=state, extra={}), meta)
    capsys.readouterr()
    assert main(["export", str(c.path), "--out", str(tmp_path / "hf")]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"exported {c.path} (epoch 3, task albert) as hf to {tmp_path / 'hf'}"]
    assert captured.err == ""          # no log lines saying it again, no progress bar


def test_organizer_key_persists(tmp_path):
    path = tmp_path / "organizer.key"
    key = load_or_create_rsa_key(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again = load_or_create_rsa_key(path)
    assert again.get_public_key().to_bytes() == key.get_public_key().to_bytes()
    assert key.get_public_key().verify(b"x", again.sign(b"x"))
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="organizer key"):
        load_or_create_rsa_key(path)
