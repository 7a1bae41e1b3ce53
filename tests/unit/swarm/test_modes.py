"""swarm.modes.mode_optimizer: what each RunConfig mode asks of Collaboration.optimizer (the daemon and the emulated
trainers share it); DiLoCoConfig.target_batch_size."""
from __future__ import annotations

import pytest
import torch

from swarm.config import DiLoCoConfig, RunConfig
from swarm.modes import mode_optimizer

pytestmark = pytest.mark.timeout(30)


class RecordingCollab:
    """Stands in for Collaboration: records what optimizer() was asked for and builds the inner optimizer."""

    def optimizer(self, params, optimizer, *, mode="sync", overlap=False, **kwargs):
        self.params, self.mode, self.overlap, self.kwargs = list(params), mode, overlap, kwargs
        self.built = optimizer(self.params)
        return self


def _task_optimizer(params, lr):
    return torch.optim.SGD(params, lr=lr)


def test_sync_uses_the_task_optimizer_at_lr():
    model, collab = torch.nn.Linear(3, 2), RecordingCollab()
    schedule = lambda epoch: 1.0   # noqa: E731
    mode_optimizer(collab, model, _task_optimizer, RunConfig(lr=0.05, overlap=True), schedule)
    assert (collab.mode, collab.overlap) == ("sync", True) and len(collab.params) == 2
    assert isinstance(collab.built, torch.optim.SGD) and collab.built.defaults["lr"] == 0.05
    assert collab.kwargs["lr_schedule"] is schedule and "buffers" in collab.kwargs


def test_diloco_inner_adamw_or_task_and_outer_settings():
    model, collab = torch.nn.Linear(3, 2), RecordingCollab()
    config = RunConfig(lr=0.05, mode="diloco", diloco={"inner_steps": 10, "inner_lr": 0.001, "outer_lr": 0.5, "inner_weight_decay": 0.1})
    mode_optimizer(collab, model, _task_optimizer, config)
    assert collab.mode == "diloco" and not collab.overlap
    assert isinstance(collab.built, torch.optim.AdamW) and collab.built.defaults["lr"] == 0.001
    assert collab.built.defaults["weight_decay"] == 0.1
    assert (collab.kwargs["outer_lr"], collab.kwargs["outer_momentum"], collab.kwargs["nesterov"]) == (0.5, 0.9, True)
    config = RunConfig(lr=0.05, mode="diloco", diloco={"inner_optimizer": "task"})
    mode_optimizer(collab, model, _task_optimizer, config)
    assert isinstance(collab.built, torch.optim.SGD) and collab.built.defaults["lr"] == 0.05   # inner lr defaults to lr


def test_diloco_pseudo_gradients_travel_with_the_outer_codec():
    model, collab = torch.nn.Linear(3, 2), RecordingCollab()
    mode_optimizer(collab, model, _task_optimizer, RunConfig(mode="diloco", diloco={"outer_codec": "uniform4bit"}))
    assert collab.kwargs["codec"] == "uniform4bit"
    mode_optimizer(collab, model, _task_optimizer, RunConfig(mode="diloco", engine={"compression": "topk"}))
    assert collab.kwargs["codec"] == "topk"
    mode_optimizer(collab, model, _task_optimizer, RunConfig(mode="sync", diloco={"outer_codec": "topk"}))
    assert "codec" not in collab.kwargs     # sync: engine.compression, through the collaboration's config


def test_outer_batch_is_h_local_steps_of_every_peer():
    assert DiLoCoConfig(inner_steps=50).target_batch_size(3 * 8) == 1200
    assert DiLoCoConfig(inner_steps=1).target_batch_size(4) == 4


def test_streaming_diloco_builds_its_fragments_over_the_model_s_modules_with_the_outer_codec():
    from swarm.optim.strategies import StreamingDiLoCo

    model, collab = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Linear(3, 2)), RecordingCollab()
    config = RunConfig(mode="streaming-diloco", diloco={"fragments": 3, "outer_lr": 0.5, "outer_codec": "uniform4bit"})
    mode_optimizer(collab, model, _task_optimizer, config)
    mode = collab.mode
    assert isinstance(mode, StreamingDiLoCo) and mode.overlap and mode.num_fragments == 3 and mode.outer_lr == 0.5
    assert mode.layers == [0, 0, 1, 1, 2, 2] and collab.kwargs["codec"] == "uniform4bit"
    assert isinstance(collab.built, torch.optim.AdamW)


def test_a_streaming_round_is_a_fragment_s_share_of_the_outer_batch():
    assert DiLoCoConfig(inner_steps=50, fragments=4).target_batch_size(3 * 8, streaming=True) == 300
    assert RunConfig(mode="streaming-diloco", diloco={"inner_steps": 50, "fragments": 5}).outer_target_batch_size(24) == 240
    assert RunConfig(mode="diloco", diloco={"inner_steps": 50, "fragments": 5}).outer_target_batch_size(24) == 1200
