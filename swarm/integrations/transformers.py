"""Join a swarm from a Hugging Face `transformers.Trainer`.

    collab = swarm.join("swarm://...")
    optimizers = swarm_optimizers(collab, model, args, torch.optim.AdamW, lr=1e-3)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=collator,
                      optimizers=optimizers, callbacks=[SwarmCallback(optimizers[0])])
    trainer.train()

Why an optimizer factory (and not only a callback): the Trainer calls `optimizer.step()` itself
after every `gradient_accumulation_steps` micro-batches, and a callback cannot stop its own
optimizer from stepping alone. So the Trainer holds the collaborative optimizer itself (a
`torch.optim.Optimizer` whose param_groups are the inner optimizer's): each of the Trainer's
steps counts `samples_per_step` samples, and the swarm averages and steps only when it has its
global batch. The learning rate follows the swarm's global
epoch (`lr_schedule`, the same function on every peer), so the scheduler handed to the Trainer
only reports the rate: a Trainer-step schedule would give peers different rates at one epoch.
Under fp16 the Trainer's GradScaler unscales the gradients in the shared param_groups and skips
`step()` on overflow, so an overflowed step contributes neither gradients nor samples.

The callback adds the swarm's epoch to the Trainer's logs and, when training ends, applies a round
still in flight (overlapped modes). One process is one peer: under `torchrun` use
swarm.integrations.local_ranks instead.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

import torch

from swarm.errors import ConfigError

if TYPE_CHECKING:
    from swarm.collaboration import Collaboration
    from swarm.optim.core import CollaborativeOptimizer

logger = logging.getLogger(__name__)

__all__ = ["SwarmEpochLR", "SwarmCallback", "swarm_optimizers"]


class SwarmEpochLR(torch.optim.lr_scheduler.LRScheduler):
    """The Trainer's scheduler: reports the rates the collaborative optimizer set for the global epoch, changes none."""

    def get_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]


def _samples_per_step(args: Any) -> int:
    world = int(getattr(args, "world_size", 1) or 1)
    if world > 1:
        raise ConfigError("a Trainer with several processes is not one swarm peer: run one process per peer, "
                          "or join with swarm.integrations.local_ranks under torchrun")
    return int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps)


def swarm_optimizers(collab: "Collaboration", model: torch.nn.Module, args: Any, optimizer: Any, *,
                     lr_schedule: Callable[[int], float] | None = None,
                     **kwargs: Any) -> "tuple[CollaborativeOptimizer, SwarmEpochLR]":
    """`(optimizer, lr_scheduler)` for `Trainer(optimizers=...)`: `optimizer` (a torch optimizer class or factory,
    with `kwargs`) steps with the swarm; `lr_schedule(epoch)` multiplies the base rates by global epoch.

    Each Trainer step counts `per_device_train_batch_size * gradient_accumulation_steps` samples: set
    `dataloader_drop_last=True` so that every step has that many. BatchNorm statistics travel with the state.
    """
    swarm_opt = collab.optimizer(model.parameters(), optimizer, lr_schedule=lr_schedule, buffers=model.buffers(),
                                 samples_per_step=_samples_per_step(args), **kwargs)
    return swarm_opt, SwarmEpochLR(swarm_opt)


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class SwarmCallback(_callback_base()):  # type: ignore[misc]
    """Logs the swarm's epoch beside the Trainer's loss; applies a round still in flight when training ends."""

    def __init__(self, optimizer: "CollaborativeOptimizer"):
        self.optimizer = optimizer

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None:
            logs["swarm_epoch"] = self.optimizer.epoch

    def on_train_end(self, args, state, control, **kwargs):
        self.optimizer.finish()
