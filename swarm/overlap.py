"""Overlapped averaging (sync mode, `overlap: true`): delayed parameter updates, at most one step late.

The averaging of one global batch runs in the background, on the engine loop, while the training thread
computes the next one. `step(samples)` accumulates gradients as in sync mode; when the swarm has its batch
for epoch e it snapshots the accumulated gradients (swapping in fresh buffers), submits round e without
waiting, and keeps accumulating. Round e's average is applied as soon as it is done (checked at every
`step()`), or, at the latest, when this peer has computed as many samples again as it brought to round e
(the next ready point): then `step()` waits for it, within the round's deadline. Only then can round e + 1
start, so at most one round is in flight.

Guarantees:
- Staleness <= 1: the gradients in update e were computed at parameters of version e or e - 1 (the update
  before it may still have been in flight). Every StepReport carries `staleness` (0 or 1); sync mode's is 0.
- Identical parameters: every member of round e applies the same averaged bytes to the same parameters and
  optimizer state (updates are applied in epoch order, each exactly once), so peers that step hold bitwise
  identical parameters, as in sync mode; the parameter-hash vote and state download work unchanged.
- Bounded rounds: a round in flight ends by its deadline (matchmaking + 2 averaging timeouts); `interrupt()`
  cancels it. A round that fails gives its gradients back to the accumulator, so no sample is lost, and the
  epoch is retried (its batch is then larger by what was computed meanwhile).
- Roles and state download are those of sync mode: the round is the same round, it only runs concurrently.
  The state served while a round is in flight is the last applied one (consistent under the step lock).

Cost: the update lands one step late (DeDLOC's "delayed parameter updates"; Ren et al. 2021 use the same
one-step delay). While a round is in flight the peer reports the samples of the batch in that round plus the
new ones, at the round's epoch, so the others still see that epoch as complete.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .compression_policy import FixedRoundCodec, RoundCodec, RoundResult
from .errors import RoundFailed
from .optimizer import CollaborativeOptimizer, StepReport

logger = logging.getLogger(__name__)

__all__ = ["OverlappedOptimizer", "PendingRound"]


@dataclass
class PendingRound:
    """A round submitted to the engine loop and not yet applied."""

    epoch: int
    future: concurrent.futures.Future
    weight: float
    samples: int                  # local samples in it
    oldest: int                   # parameter version of its oldest gradient
    started: float = field(default_factory=time.monotonic)
    payload: Any = None           # what the optimizer needs back if the round fails

    def done(self) -> bool:
        return self.future.done()

    def result(self, timeout: float | None) -> tuple[RoundResult, Any]:
        """(result, outcome) or RoundFailed (failure, cancellation, or not done within `timeout`)."""
        try:
            return self.future.result(timeout)
        except concurrent.futures.TimeoutError:
            self.future.cancel()
            raise RoundFailed(f"round of epoch {self.epoch} did not finish in time") from None
        except concurrent.futures.CancelledError:
            raise RoundFailed("interrupted") from None
        except RoundFailed:
            raise
        except Exception as e:  # anything else from the engine loop ends this round, not training
            raise RoundFailed(f"{type(e).__name__}: {e}") from e


def codec_for(opt: CollaborativeOptimizer) -> RoundCodec:
    """The optimizer's round codec: PowerSGD or auto when configured, else its fixed layout."""
    return opt.round_codec if opt.round_codec is not None else FixedRoundCodec.from_layout(opt.layout)


class OverlappedOptimizer(CollaborativeOptimizer):
    """Sync mode with the round of epoch e running while the batch of epoch e + 1 is computed (see module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.codec = codec_for(self)
        self.pending: PendingRound | None = None
        self._oldest: int | None = None       # parameter version of the oldest gradient in the accumulator
        self._spare: list[torch.Tensor] | None = None

    # -- the training loop's API ------------------------------------------------------------------------------

    def step(self, samples: int) -> bool:
        """Accumulate this micro-batch; apply the round in flight when it is done; start the next round when ready.

        Returns True when an update was applied by this call."""
        if samples <= 0:
            raise ValueError("samples must be positive")
        now = time.monotonic()
        if self._last_step_time is not None:
            inst = samples / max(now - self._last_step_time, 1e-6)
            self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
        self._last_step_time = now
        with torch.no_grad():
            for p, acc in zip(self.params, self._accum):
                if p.grad is not None:
                    acc.add_(p.grad.float(), alpha=float(samples))
        self.local_samples += samples
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
        return stepped

    def finish(self, timeout: float | None = None) -> None:
        """Wait for the round in flight (within its deadline, or `timeout`) and apply it; used before leaving."""
        if self.pending is not None:
            self._settle(wait=True, timeout=timeout)

    # -- rounds --------------------------------------------------------------------------------------------------

    def _reported_samples(self) -> int:
        return self.local_samples + (self.pending.samples if self.pending is not None else 0)

    def _submit(self) -> None:
        collab = self.collab
        weight = float(self.local_samples)
        sums = self._accum
        if not all(bool(torch.isfinite(acc).all()) for acc in sums):
            logger.warning("epoch %d: local gradients are not finite; contributing zero weight", self.epoch)
            for acc in sums:
                acc.zero_()
            weight = 0.0
        with torch.no_grad():
            local = [acc / max(weight, 1.0) for acc in sums]
        spare = self._spare
        self._spare = None
        if spare is None:
            spare = [torch.zeros_like(acc) for acc in sums]
        self._accum = spare
        future = collab.submit_program(self.epoch, weight, self.codec.schema.schema_hash(), self.codec.program(local))
        self.pending = PendingRound(self.epoch, future, weight, self.local_samples, self._oldest if self._oldest is not None else self.epoch, payload=sums)
        self.local_samples = 0
        self._oldest = None
        collab.tracker.report(samples=self._reported_samples())

    def _settle(self, wait: bool, timeout: float | None = None) -> bool:
        """Apply the round in flight if it is done (or if `wait`, or at the next ready point); True if applied."""
        pending = self.pending
        if pending is None:
            return False
        if not pending.done() and not wait and self.local_samples < pending.samples:
            return False
        remaining = self.collab.program_budget() + 10 - (time.monotonic() - pending.started)
        if timeout is not None:
            remaining = min(remaining, timeout)
        self.pending = None
        waited = time.monotonic()
        try:
            result, outcome = pending.result(max(0.0, remaining))
        except RoundFailed as e:
            self._give_back(pending, e)
            return False
        finally:
            self.round_wait_seconds += time.monotonic() - waited
        self._apply(pending, result, outcome)
        return True

    def _give_back(self, pending: PendingRound, error: Exception) -> None:
        """A failed round's gradients return to the accumulator: the epoch is retried with them."""
        sums: list[torch.Tensor] = pending.payload
        with torch.no_grad():
            for acc, old in zip(self._accum, sums):
                acc.add_(old)
            for old in sums:
                old.zero_()
        self._spare = sums
        self.local_samples += pending.samples
        self._oldest = min(pending.oldest, self._oldest if self._oldest is not None else pending.oldest)
        self.rounds_failed += 1
        self._retry_after = time.monotonic() + 1.0
        logger.warning("epoch %d: round failed (%s); keeping %d samples of gradients", pending.epoch, error, self.local_samples)
        self.collab.tracker.poke()

    def _apply(self, pending: PendingRound, result: RoundResult, outcome: Any) -> None:
        collab = self.collab
        grads = result.tensors
        assert grads is not None
        with self.step_lock, torch.no_grad():
            for p, g in zip(self.params, grads):
                p.grad = g.to(device=p.device, dtype=p.dtype).clone()
            self.inner.step()
            result.commit()
            self.epoch += 1
            self._apply_schedule()
            digest = self.params_hash()
        for old in pending.payload:
            old.zero_()
        self._spare = pending.payload
        self.rounds_completed += 1
        report = StepReport(
            epoch=self.epoch, group_size=outcome.group_size, round_seconds=outcome.seconds,
            bytes_sent=outcome.bytes_sent, bytes_received=outcome.bytes_received, samples=int(outcome.total_weight),
            params_hash=digest, codec=outcome.codec, predicted_seconds=outcome.predicted_seconds,
            staleness=pending.epoch - pending.oldest,
        )
        self.history.append(report)
        collab.tracker.report(epoch=self.epoch, samples=self.local_samples, params_hash=digest)
        collab.tracker.poke()
        for callback in self.on_step:
            callback(report)

    def _after_load_state(self) -> None:
        self._oldest = None
