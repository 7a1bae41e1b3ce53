"""The run's training mode as a collaborative optimizer: what `RunConfig.mode`, `overlap` and `diloco` build.

One place that maps a RunConfig onto `Collaboration.optimizer`, shared by the volunteer daemon
(peers.daemon) and the emulated trainers (swarm.simulate.worker), so a benchmark on the emulated
network trains exactly what a volunteer would:

- sync: the task's optimizer (lr = config.lr) steps on the swarm's averaged gradients, once per global
  batch; with overlap the round runs in the background and its update lands one step late;
- diloco: the inner optimizer (AdamW at diloco.inner_lr, or the task's own) takes a local step on every
  micro-batch; every epoch the swarm averages the pseudo-gradients and an outer SGD with Nesterov momentum
  (outer_lr, outer_momentum) steps on them (swarm.optim.strategies.DiLoCo). The pseudo-gradients travel with
  diloco.outer_codec when set (e.g. uniform4bit, topk), else with engine.compression;
- streaming-diloco: DiLoCo whose rounds each average one of diloco.fragments fragments of the model
  (strided over its modules), in turn and in the background (swarm.optim.strategies.StreamingDiLoCo); an
  epoch is then inner_steps / fragments local steps of every peer.

The learning-rate schedule, if any, follows the global epoch (DiLoCo: the outer step) in every mode.

    opt = mode_optimizer(collab, model, task.make_optimizer, config)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

import torch

from .config import RunConfig
from .optim.strategies import StreamingDiLoCo, layers_of

if TYPE_CHECKING:
    from .collaboration import Collaboration

__all__ = ["mode_optimizer"]

TaskOptimizer = Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]


def mode_optimizer(collab: "Collaboration", model: torch.nn.Module, task_optimizer: TaskOptimizer, config: RunConfig,
                   lr_schedule: Callable[[int], float] | None = None):
    """The collaborative optimizer of `config`'s mode for `model`; `task_optimizer(params, lr)` is the task's own."""
    if config.uses_diloco:
        d = config.diloco
        inner_lr = d.inner_lr or config.lr
        if d.inner_optimizer == "adamw":
            def inner(params):
                return torch.optim.AdamW(params, lr=inner_lr, weight_decay=d.inner_weight_decay)
        else:
            def inner(params):
                return task_optimizer(params, inner_lr)
        if config.mode == "streaming-diloco":   # its rounds always run in the background: that is the mode
            streaming = StreamingDiLoCo(True, outer_lr=d.outer_lr, outer_momentum=d.outer_momentum, nesterov=d.nesterov,
                                        fragments=d.fragments, layers=layers_of(model))
            return collab.optimizer(model.parameters(), inner, mode=streaming, lr_schedule=lr_schedule,
                                    buffers=model.buffers(), codec=config.codec())
        return collab.optimizer(model.parameters(), inner, mode="diloco", overlap=config.overlap, outer_lr=d.outer_lr,
                                outer_momentum=d.outer_momentum, nesterov=d.nesterov, lr_schedule=lr_schedule,
                                buffers=model.buffers(), codec=config.codec())
    return collab.optimizer(model.parameters(), lambda params: task_optimizer(params, config.lr), mode="sync",
                            overlap=config.overlap, lr_schedule=lr_schedule, buffers=model.buffers())
