"""DiLoCo mode: local steps with an inner optimizer, then an outer Nesterov step on the averaged pseudo-gradients.

Douillard et al., "DiLoCo: Distributed Low-Communication Training of Language Models" (2023), on the
swarm's progress tracker and generic all-reduce:

    every opt.step(samples):  inner optimizer step on the local gradients (AdamW by default)
    when the swarm has target_batch_size samples at this epoch (one outer step = one epoch):
        delta_i = theta_outer - theta_i                     # the pseudo-gradient of peer i
        delta   = weighted mean of delta_i, weights = samples since the last outer step
                  (faster peers did more inner steps and count more)
        theta_outer <- OuterSGD(theta_outer, delta)         # SGD, Nesterov momentum (lr 0.7, momentum 0.9)
        theta_i     <- theta_outer                          # every peer restarts from the same parameters

`engine.target_batch_size` counts samples per outer step, summed over the swarm: with H inner steps per
peer and micro-batch b, target = H x (sum of the peers' b). The outer parameters and the outer optimizer
(momentum) are identical on every peer that steps (same averaged bytes, same outer state), and they are
the run's shared state: `params_hash` hashes them, a newcomer or a peer that fell behind downloads them
(outer parameters, outer momentum, epoch) and starts its inner steps from them. The inner optimizer's state
stays local. A peer that dies during its inner steps costs the others nothing but its samples: the outer
round forms without it (matchmaking waits at most gather_timeout for it), as in sync mode.

With `overlap=True` (streaming DiLoCo's overlapping of communication with computation), the round of outer
step e runs in the background while the inner steps go on: when its average arrives, the outer step is
applied and the local parameters move to theta_outer + (what the inner steps did since the round started),
so that work is neither lost nor counted twice (the next pseudo-gradient holds it). The outer update is
then one outer step late (`StepReport.staleness` <= 1). Without overlap the round blocks, as in sync mode.

Compression (fp16, 8-bit, PowerSGD with error feedback, auto) applies to the pseudo-gradients exactly as it
does to gradients in sync mode.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from .compression import CompressionPolicy
from .compression_policy import RoundResult
from .errors import RoundFailed
from .optimizer import StepReport
from .overlap import OverlappedOptimizer, PendingRound

if TYPE_CHECKING:
    from .collaboration import Collaboration

logger = logging.getLogger(__name__)

__all__ = ["DiLoCoOptimizer"]


class DiLoCoOptimizer(OverlappedOptimizer):
    """`optimizer` is the inner optimizer (class or instance); the outer one is SGD with Nesterov momentum."""

    def __init__(
        self,
        collab: "Collaboration",
        params: Iterable[torch.nn.Parameter],
        optimizer: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer,
        *,
        outer_lr: float = 0.7,
        outer_momentum: float = 0.9,
        nesterov: bool = True,
        overlap: bool = False,
        lr_schedule: Callable[[int], float] | None = None,
        compression: CompressionPolicy | None = None,
        **optimizer_kwargs: Any,
    ):
        if not outer_lr > 0:
            raise ValueError("outer_lr must be positive")
        if not 0 <= outer_momentum < 1:
            raise ValueError("outer_momentum must be in [0, 1)")
        params = [p for p in params if p.requires_grad]
        # the outer parameters exist before the state server can be asked for them (super() attaches)
        self.outer_params = [p.detach().float().cpu().clone() for p in params]   # on the CPU, as DiLoCo keeps them
        self.outer = torch.optim.SGD(self.outer_params, lr=outer_lr, momentum=outer_momentum, nesterov=nesterov and outer_momentum > 0)
        self.overlap = overlap
        super().__init__(collab, params, optimizer, lr_schedule=lr_schedule, compression=compression, **optimizer_kwargs)
        self._accum = []   # no gradient accumulation: the pseudo-gradient is theta_outer - theta
        self.inner_steps = 0            # since the last outer step
        self._inner_steps_total = 0

    # -- the training loop's API ------------------------------------------------------------------------------

    def step(self, samples: int) -> bool:
        """One inner step on this micro-batch's gradients; an outer step when the swarm is ready.

        Returns True when an outer step was applied by this call."""
        if samples <= 0:
            raise ValueError("samples must be positive")
        now = time.monotonic()
        if self._last_step_time is not None:
            inst = samples / max(now - self._last_step_time, 1e-6)
            self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
        self._last_step_time = now
        self.inner.step()
        self.local_samples += samples
        self.inner_steps += 1
        self._inner_steps_total += 1
        if self._oldest is None:
            self._oldest = self.epoch
        stepped = self._settle(wait=False)
        tracker = self.collab.tracker
        tracker.report(samples=self._reported_samples(), samples_per_second=self._rate)
        if self.pending is not None:
            return stepped
        if self._maybe_resync():
            return stepped
        if time.monotonic() < self._retry_after or not tracker.ready(self.epoch):
            return stepped
        self._submit()
        if not self.overlap:
            stepped = self._settle(wait=True) or stepped
        return stepped

    # -- rounds --------------------------------------------------------------------------------------------------

    def _submit(self) -> None:
        weight = float(self.local_samples)
        with torch.no_grad():
            deltas = [o - p.detach().float().cpu() for o, p in zip(self.outer_params, self.params)]
        if not all(bool(torch.isfinite(d).all()) for d in deltas):
            logger.warning("epoch %d: local parameters are not finite; contributing zero weight", self.epoch)
            deltas = [torch.zeros_like(d) for d in deltas]
            weight = 0.0
        start = [p.detach().float().cpu().clone() for p in self.params] if self.overlap else None
        future = self.collab.submit_program(self.epoch, weight, self.codec.schema.schema_hash(), self.codec.program(deltas))
        self.pending = PendingRound(self.epoch, future, weight, self.local_samples, self._oldest if self._oldest is not None else self.epoch, payload=start)
        self.local_samples = 0
        self._oldest = None
        self.collab.tracker.report(samples=self._reported_samples())

    def _give_back(self, pending: PendingRound, error: Exception) -> None:
        """The outer parameters did not move, so the next pseudo-gradient still holds this round's work."""
        self.local_samples += pending.samples
        self._oldest = min(pending.oldest, self._oldest if self._oldest is not None else pending.oldest)
        self.rounds_failed += 1
        self._retry_after = time.monotonic() + 1.0
        logger.warning("epoch %d: outer round failed (%s); keeping %d samples of local progress", pending.epoch, error, self.local_samples)
        self.collab.tracker.poke()

    def _apply(self, pending: PendingRound, result: RoundResult, outcome: Any) -> None:
        collab = self.collab
        deltas = result.tensors
        assert deltas is not None
        with self.step_lock, torch.no_grad():
            for o, d in zip(self.outer_params, deltas):
                o.grad = d.to(dtype=o.dtype).reshape(o.shape).clone()
            self.outer.step()
            for o in self.outer_params:
                o.grad = None
            result.commit()
            self.epoch += 1
            self._apply_schedule()
            start: list[torch.Tensor] | None = pending.payload
            for i, (p, o) in enumerate(zip(self.params, self.outer_params)):
                if start is None:
                    p.copy_(o)
                else:   # overlap: keep what the inner steps did while the round ran
                    drift = p.detach().float().cpu() - start[i]
                    p.copy_(o + drift if bool(torch.isfinite(drift).all()) else o)
            digest = self.params_hash()
        self.rounds_completed += 1
        self.inner_steps = 0
        report = StepReport(
            epoch=self.epoch, group_size=outcome.group_size, round_seconds=outcome.seconds,
            bytes_sent=outcome.bytes_sent, bytes_received=outcome.bytes_received, samples=int(outcome.total_weight),
            params_hash=digest, codec=outcome.codec, predicted_seconds=outcome.predicted_seconds,
            staleness=pending.epoch - pending.oldest,
        )
        self.history.append(report)
        collab.tracker.report(epoch=self.epoch, samples=self._reported_samples(), params_hash=digest)
        collab.tracker.poke()
        for callback in self.on_step:
            callback(report)

    # -- state: the outer parameters and the outer optimizer ------------------------------------------------------

    def _state_params(self) -> list[torch.Tensor]:
        return self.outer_params

    def _state_optimizer(self) -> torch.optim.Optimizer:
        return self.outer

    def _after_load_state(self) -> None:
        """Inner steps restart from the downloaded outer parameters."""
        with torch.no_grad():
            for p, o in zip(self.params, self.outer_params):
                p.copy_(o)
        self._oldest = None
        self.inner_steps = 0
