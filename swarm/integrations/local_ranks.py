"""A multi-GPU volunteer as one swarm peer: `torchrun --nproc_per_node N train.py` on one machine.

    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")   # torchrun sets the rendezvous
    opt = LocalRanksOptimizer(model, torch.optim.AdamW, run_id="my-run", initial_peers=[...], lr=1e-3)
    for batch in loader:                     # each rank its own shard
        model(**batch).loss.backward()
        opt.step(samples=len(batch["input_ids"]))
        opt.zero_grad()
    opt.shutdown()

The algorithm, per micro-batch: every rank multiplies its gradients by its sample count, the ranks
sum these and their counts with one all-reduce inside the machine (NCCL on GPUs, gloo on CPU), and
rank 0 hands the sample-weighted mean gradient with the machine's total count to its collaborative
optimizer: the swarm sees one peer with the machine's throughput. Rank 0 alone joins the swarm (one
p2pd, one progress record, one share of the all-reduce). Whenever rank 0's parameters change (a
global step, a state download, a re-sync), it broadcasts its parameters and buffers, so every rank
holds bitwise the parameters rank 0 holds: all ranks apply the same step. Without torch.distributed
initialised (a plain `python train.py`), it is a one-rank volunteer with the same code.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

__all__ = ["LocalRanksOptimizer"]


class LocalRanksOptimizer:
    """Averages inside the machine, steps with the swarm on rank 0, broadcasts the result (see the module docstring).

    `join_kwargs` (run_id, initial_peers, config, role, ...) go to `swarm.join` on rank 0; `optimizer` and
    `optimizer_kwargs` to `collab.optimizer` (rank 0's inner optimizer; other ranks hold none).
    """

    def __init__(self, model: torch.nn.Module, optimizer: Any, *, join: dict[str, Any] | None = None,
                 lr_schedule: Callable[[int], float] | None = None, group: Any = None, **optimizer_kwargs: Any):
        self.group = group
        self.distributed = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self.distributed else 0
        self.world_size = dist.get_world_size(group) if self.distributed else 1
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = list(model.buffers())
        self.device = self.params[0].device
        self.collab = None
        self.swarm_opt = None
        if self.rank == 0:
            from swarm.collaboration import join as join_swarm

            self.collab = join_swarm(**(join or {}))
            self.swarm_opt = self.collab.optimizer(self.params, optimizer, lr_schedule=lr_schedule, buffers=self.buffers,
                                                   **optimizer_kwargs)
        self._version = (-1, -1)
        self.epoch = 0
        self._sync_parameters(force=True)   # every rank starts from rank 0's (possibly downloaded) state

    # -- the training loop's API ----------------------------------------------------------------------------------

    def step(self, samples: int) -> bool:
        """This rank's micro-batch of `samples`; True when the swarm took a global step."""
        if samples <= 0:
            raise ValueError("samples must be positive")
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.detach().reshape(-1).float() * float(samples) for g in grads] +
                         [torch.tensor([float(samples)], device=self.device)])
        if self.distributed:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        total = int(round(float(flat[-1])))
        if self.rank == 0:
            mean = flat[:-1] / total
            offset = 0
            for p in self.params:
                n = p.numel()
                p.grad = mean[offset:offset + n].view_as(p).to(p.dtype)
                offset += n
            self.swarm_opt.step(samples=total)
        return self._sync_parameters()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def finish(self) -> None:
        if self.swarm_opt is not None:
            self.swarm_opt.finish()
        self._sync_parameters()

    def shutdown(self) -> None:
        if self.collab is not None:
            self.collab.shutdown()

    @property
    def params_hash(self) -> str:
        from swarm.averaging.state_sync import params_digest

        return params_digest([p.data for p in self.params])

    # -- inside the machine ---------------------------------------------------------------------------------------

    def _sync_parameters(self, force: bool = False) -> bool:
        """Broadcast rank 0's parameters and buffers when its epoch or state changed; True if the epoch moved."""
        if self.rank == 0:
            opt = self.swarm_opt
            version = torch.tensor([opt.epoch, opt.state_downloads], dtype=torch.long, device=self.device)
        else:
            version = torch.zeros(2, dtype=torch.long, device=self.device)
        if self.distributed:
            dist.broadcast(version, src=0, group=self.group)
        new = (int(version[0]), int(version[1]))
        changed = force or new != self._version
        moved = new[0] != self.epoch
        self._version = new
        self.epoch = new[0]
        if changed and self.distributed:
            for t in [*self.params, *self.buffers]:
                dist.broadcast(t.data, src=0, group=self.group)
        return moved and not force
