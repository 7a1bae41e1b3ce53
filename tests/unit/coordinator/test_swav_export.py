"""SwAV checkpoints export as safetensors + config.json that load back into the project's ResNet, and
`swarm export --help` lists each task's formats."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from coordinator.checkpoints import write_checkpoint
from coordinator.export import export_checkpoint
from peers.models.resnet_export import load_resnet
from swarm.averaging.state_sync import TrainingState
from swarm.errors import ConfigError, DataError
from tests.unit.peers.test_swav_task import data_dir, make_task  # noqa: F401  (data_dir is a fixture)

pytestmark = pytest.mark.timeout(120)


def swav_checkpoint(tmp_path, data_dir):  # noqa: F811
    task = make_task(data_dir)
    model = task.build_model()
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(1)
    tensors = {f"param.{i}": p.detach() + 0.01 * torch.randn(p.shape, generator=g) for i, p in enumerate(params)}
    buffers = list(model.buffers())
    for i, b in enumerate(buffers):   # BatchNorm statistics as a trained donor would share them
        tensors[f"buffer.{i}"] = b.detach() + (0.5 if b.is_floating_point() else 3)
    options = dict(task.settings.options)
    meta = {"task": "swav", "task_options": options, "fingerprint": task.fingerprint(),
            "run_config": {"seed": 0, "data_path": str(data_dir), "micro_batch_size": 4, "task_options": options}}
    c = write_checkpoint(tmp_path / "ck", TrainingState(epoch=3, tensors=tensors, extra={}), meta)
    return c.path, model, tensors


def test_swav_exports_safetensors_that_load_into_the_resnet(tmp_path, data_dir):  # noqa: F811
    path, model, tensors = swav_checkpoint(tmp_path, data_dir)
    out = export_checkpoint(path, tmp_path / "export")          # swav's default format: safetensors
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "tiny" and config["in_channels"] == 1 and config["task"] == "swav" and len(config["mean"]) == 1
    net = load_resnet(out)
    # the backbone's tensors are the checkpoint's, in the model's own order
    backbone_params = {id(p) for p in model.backbone.parameters()}
    expected = [tensors[f"param.{i}"] for i, p in enumerate(p for p in model.parameters() if p.requires_grad) if id(p) in backbone_params]
    assert len(expected) == len(list(net.parameters()))
    for mine, want in zip(net.parameters(), expected):
        assert torch.equal(mine.detach(), want)
    backbone_buffers = {id(b) for b in model.backbone.buffers()}
    expected_buffers = [tensors[f"buffer.{i}"] for i, b in enumerate(model.buffers()) if id(b) in backbone_buffers]
    for mine, want in zip(net.buffers(), expected_buffers):
        assert torch.equal(mine, want)
    net.eval()
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, config["num_features"])

    with pytest.raises(ConfigError, match="task swav exports as safetensors, not hf"):
        export_checkpoint(path, tmp_path / "x", "hf")
    (out / "config.json").write_text(json.dumps({**config, "arch": "resnet9000"}))
    with pytest.raises(DataError, match="is not a swarm-resnet config"):
        load_resnet(out)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(DataError, match="cannot read"):
        load_resnet(out)


@pytest.mark.integration  # starts a process
def test_export_help_lists_each_tasks_formats():
    out = subprocess.run([sys.executable, "-m", "swarm.cli", "export", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for line in ("albert: hf", "swav: safetensors", "hf-mlm: hf", "hf-clm: hf"):
        assert line in text, text
