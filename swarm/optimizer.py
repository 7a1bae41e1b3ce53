"""The collaborative optimizer: wraps any torch optimizer so that a swarm takes large-batch steps together.

DeDLOC's synchronous mode. `step(samples)` accumulates the local gradients (weighted by
samples) and returns at once, until the swarm has `target_batch_size` samples at this
epoch; then it averages the accumulated gradients with the group (weights = samples),
applies the wrapped optimizer to the averaged gradient and advances the epoch. Every
peer that steps applies the same averaged bytes to the same parameters and optimizer
state, so the peers hold bitwise-identical parameters (published as `params_hash`).

A peer that misses a round does not step; it keeps its gradients and retries when the
swarm is still at its epoch, and downloads the state when the swarm has moved on (it is
behind), or when its parameter hash disagrees with the majority of its epoch.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch

from .allreduce import TensorLayout
from .compression import CompressionPolicy
from .compression_policy import RoundCodec, make_round_codec
from .errors import NetworkError, RoundFailed, SwarmError
from .optim.schedule import apply_lr
from .state_sync import TrainingState, params_digest

if TYPE_CHECKING:
    from .collaboration import Collaboration

logger = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one global step did (for logs, metrics and the demo report)."""

    epoch: int                      # the epoch reached by this step
    group_size: int
    round_seconds: float
    bytes_sent: int
    bytes_received: int
    samples: int                    # the swarm's samples in this global batch (sum of weights)
    params_hash: str
    time: float = field(default_factory=time.time)
    codec: str = ""                 # what the round sent: a codec name, or "powersgd" (compression auto picks per round)
    predicted_seconds: float = float("nan")   # the round's LP bound with the group's measured links
    staleness: int = 0              # steps between the oldest gradient in this update and the update (overlap: <= 1)


class CollaborativeOptimizer:
    def __init__(
        self,
        collab: "Collaboration",
        params: Iterable[torch.nn.Parameter],
        optimizer: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer,
        *,
        lr_schedule: Callable[[int], float] | None = None,
        compression: CompressionPolicy | None = None,
        codec: str | None = None,
        buffers: Iterable[torch.Tensor] = (),
        **optimizer_kwargs: Any,
    ):
        self.collab = collab
        self.params = [p for p in params if p.requires_grad]
        # The model's buffers (BatchNorm statistics): not averaged, but part of the state a newcomer or the
        # coordinator's checkpoint downloads, so that a downloaded model evaluates like its donor's.
        self.buffers = list(buffers)
        if isinstance(optimizer, torch.optim.Optimizer):
            self.inner = optimizer
        else:
            self.inner = optimizer(self.params, **optimizer_kwargs)
        self.base_lrs = [g["lr"] for g in self.inner.param_groups]
        self.lr_schedule = lr_schedule
        name = codec or collab.config.compression     # `codec`: this mode's choice (e.g. diloco.outer_codec)
        round_level = name in ("powersgd", "auto", "topk")   # codecs that need a round program (swarm.compression_policy)
        policy = compression or CompressionPolicy(default="fp16" if round_level else name)
        self.layout = TensorLayout.build([p.shape for p in self.params], lambda i, n: policy.codec_for(str(i), n))
        self.round_codec: RoundCodec | None = None
        if round_level:
            self.round_codec = make_round_codec(
                [p.shape for p in self.params], name, rank=collab.config.powersgd_rank, budget=collab.config.compression_budget,
                compute_seconds=self.epoch_compute_seconds, topk_fraction=collab.config.topk_fraction,
                topk_value_bits=collab.config.topk_value_bits,
            )
        self._accum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.local_samples = 0
        self.epoch = 0
        self.step_lock = threading.Lock()
        self._rate = 0.0
        self._last_step_time: float | None = None
        self._retry_after = 0.0
        self.rounds_completed = 0
        self.rounds_failed = 0
        self.state_downloads = 0
        self.round_wait_seconds = 0.0   # time step() spent blocked on rounds (sync: every round; overlap: only waits)
        self.history: list[StepReport] = []
        self.on_step: list[Callable[[StepReport], None]] = []
        self._apply_schedule()
        collab._attach(self)

    # -- the training loop's API ----------------------------------------------------------------------------

    def step(self, samples: int) -> bool:
        """Accumulate this micro-batch's gradients; take a global step when the swarm is ready.

        Returns True when a global step was taken. Call `zero_grad()` after it, as usual.
        """
        if samples <= 0:
            raise ValueError("samples must be positive")
        now = time.monotonic()
        if self._last_step_time is not None:
            dt = max(now - self._last_step_time, 1e-6)
            inst = samples / dt
            self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
        self._last_step_time = now
        with torch.no_grad():
            for p, acc in zip(self.params, self._accum):
                if p.grad is not None:
                    acc.add_(p.grad.float(), alpha=float(samples))
        self.local_samples += samples
        tracker = self.collab.tracker
        tracker.report(samples=self.local_samples, samples_per_second=self._rate)
        if self._maybe_resync():
            return False
        if now < self._retry_after or not tracker.ready(self.epoch):
            return False
        return self._global_step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    @property
    def samples_per_second(self) -> float:
        return self._rate

    def params_hash(self) -> str:
        return params_digest([p.data for p in self._state_params()])

    def finish(self, timeout: float | None = None) -> None:
        """Settle any round still in flight before leaving (overlapped modes wait for it and apply it); sync: nothing."""

    def epoch_compute_seconds(self) -> float:
        """This peer's estimate of the swarm's compute time per epoch: target batch over the swarm's samples/s."""
        tracker = self.collab.tracker
        rate = tracker.view.rate_at(self.epoch, exclude=self.collab.peer_id) + self._rate
        return tracker.target_batch_size / rate if rate > 0 else float("nan")

    def _average(self, tensors: list[torch.Tensor], weight: float):
        """One blocking round at this epoch: (averaged tensors, outcome, commit); raises RoundFailed.

        `commit()` makes the round codec's state changes permanent (error feedback, PowerSGD's Q): call it when
        the averaged tensors are applied."""
        if self.round_codec is None:
            local = self.layout.flatten(tensors)
            averaged, outcome = self.collab.average(self.epoch, local, weight, self.layout)
            return self.layout.unflatten(averaged), outcome, (lambda: None)
        codec = self.round_codec
        result, outcome = self.collab.average_program(self.epoch, weight, codec.schema.schema_hash(), codec.program(tensors))
        return result.tensors, outcome, result.commit

    # -- rounds ------------------------------------------------------------------------------------------------

    def _global_step(self) -> bool:
        collab = self.collab
        weight = float(self.local_samples)
        if not all(bool(torch.isfinite(acc).all()) for acc in self._accum):
            # overflowed gradients would poison the average: contribute nothing this round, but still step with it
            logger.warning("epoch %d: local gradients are not finite; contributing zero weight", self.epoch)
            for acc in self._accum:
                acc.zero_()
            weight = 0.0
        with torch.no_grad():
            local = [acc / max(weight, 1.0) for acc in self._accum]
        waited = time.monotonic()
        try:
            grads, outcome, commit = self._average(local, weight)
        except RoundFailed as e:
            self.round_wait_seconds += time.monotonic() - waited
            self.rounds_failed += 1
            self._retry_after = time.monotonic() + 1.0
            logger.warning("epoch %d: round failed (%s); keeping %d samples of gradients", self.epoch, e, self.local_samples)
            collab.tracker.poke()
            return False
        self.round_wait_seconds += time.monotonic() - waited
        with self.step_lock, torch.no_grad():
            for p, g in zip(self.params, grads):
                p.grad = g.to(device=p.device, dtype=p.dtype).clone()
            self.inner.step()
            commit()
            self.epoch += 1
            self._apply_schedule()
            for acc in self._accum:
                acc.zero_()
            self.local_samples = 0
            digest = self.params_hash()
        self.rounds_completed += 1
        report = StepReport(
            epoch=self.epoch, group_size=outcome.group_size, round_seconds=outcome.seconds,
            bytes_sent=outcome.bytes_sent, bytes_received=outcome.bytes_received,
            samples=int(outcome.total_weight), params_hash=digest, codec=outcome.codec, predicted_seconds=outcome.predicted_seconds,
        )
        self.history.append(report)
        collab.tracker.report(epoch=self.epoch, samples=0, params_hash=digest)
        collab.tracker.poke()
        for callback in self.on_step:
            callback(report)
        return True

    def _apply_schedule(self) -> None:
        if self.lr_schedule is None:
            return
        multiplier = self.lr_schedule(self.epoch)
        for group, base in zip(self.inner.param_groups, self.base_lrs):
            group["lr"] = base * multiplier

    # -- state ----------------------------------------------------------------------------------------------------

    def _maybe_resync(self) -> bool:
        """Download the state when the swarm is ahead of us, or when our parameters disagree with our epoch's majority."""
        view = self.collab.tracker.view
        behind = view.epoch > self.epoch
        divergent, majority = False, None
        if not behind and self.epoch > 0:
            majority = self._majority_hash()
            divergent = majority is not None and majority != self.collab.tracker.local.params_hash
        if not (behind or divergent):
            return False
        if time.monotonic() < self._retry_after:
            return True  # a download failed moments ago: wait (this step's samples are lost to a stale state anyway)
        logger.info("epoch %d: %s, downloading the state", self.epoch, f"swarm is at epoch {view.epoch}" if behind else "parameters disagree with the majority")
        try:
            self.load_state_from_peers(params_hash=majority)
        except SwarmError as e:
            logger.warning("state download failed: %s", e)
            self._retry_after = time.monotonic() + 1.0
        return True

    def _majority_hash(self) -> str | None:
        """The parameter hash most peers at our epoch hold (ties: the one the lowest peer id holds).

        Two groups that formed for the same epoch in a race (a partition, a stale view at start-up)
        step to different parameters; this vote makes every peer converge on one of them.
        """
        tracker = self.collab.tracker
        holders: dict[str, list[str]] = {}
        for p in tracker.view.at_epoch(self.epoch):
            if p.params_hash and p.peer_id != self.collab.peer_id and p.role != "aux":
                holders.setdefault(p.params_hash, []).append(p.peer_id)
        if not holders:
            return None
        if tracker.local.params_hash:
            holders.setdefault(tracker.local.params_hash, []).append(self.collab.peer_id)
        return min(holders, key=lambda h: (-len(holders[h]), min(holders[h])))

    def load_state_from_peers(self, params_hash: str | None = None) -> bool:
        """Replace parameters, optimizer state and epoch with a verified download from the newest peers.

        With `params_hash`, only peers holding those parameters are donors (re-sync after divergence);
        otherwise only a swarm ahead of us is worth downloading. False when there is nobody to ask.
        """
        collab = self.collab
        view = collab.tracker.view
        donors = [
            p.peer_id for p in view.at_epoch(view.epoch)
            if p.serves_state and p.role not in ("client", "aux") and p.peer_id != collab.peer_id
            and (params_hash is None or p.params_hash == params_hash)
        ]
        if not donors or (params_hash is None and view.epoch <= self.epoch):
            return False
        state = collab.download_state(donors, view.epoch)
        self.load_state(state)
        self.state_downloads += 1
        logger.info("loaded the state of epoch %d", self.epoch)
        return True

    # What the shared state holds: the model's parameters and the wrapped optimizer here; DiLoCo's outer ones.
    def _state_params(self) -> list[torch.Tensor]:
        return self.params

    def _state_optimizer(self) -> torch.optim.Optimizer:
        return self.inner

    def _after_load_state(self) -> None:
        """Called under the step lock after a state was loaded (subclasses reset what depends on it)."""

    def snapshot(self) -> TrainingState | None:
        """A consistent copy of the training state (called from the engine thread)."""
        with self.step_lock:
            tensors = {f"param.{i}": p.detach().clone() for i, p in enumerate(self._state_params())}
            tensors.update({f"buffer.{i}": b.detach().cpu().clone() for i, b in enumerate(self.buffers)})
            sd = self._state_optimizer().state_dict()
            extra_state: dict[str, dict[str, Any]] = {}
            for idx, st in sd["state"].items():
                for key, value in st.items():
                    if torch.is_tensor(value):
                        tensors[f"opt.{idx}.{key}"] = value.detach().clone()
                    else:
                        extra_state.setdefault(str(idx), {})[key] = value
            groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
            if self.round_codec is not None:
                tensors.update(self.round_codec.state_tensors())
            return TrainingState(epoch=self.epoch, tensors=tensors, extra={"param_groups": groups, "opt_extra": extra_state})

    def load_state(self, state: TrainingState) -> None:
        # check everything before changing anything: a state that does not fit leaves ours as it was
        for i, p in enumerate(self._state_params()):
            t = state.tensors.get(f"param.{i}")
            if t is None or t.shape != p.shape:
                raise NetworkError(f"downloaded state does not fit this model (parameter {i})")
        for i, b in enumerate(self.buffers):
            t = state.tensors.get(f"buffer.{i}")
            if t is not None and t.shape != b.shape:
                raise NetworkError(f"downloaded state does not fit this model (buffer {i})")
        with self.step_lock, torch.no_grad():
            for i, p in enumerate(self._state_params()):
                p.copy_(state.tensors[f"param.{i}"])
            for i, b in enumerate(self.buffers):
                t = state.tensors.get(f"buffer.{i}")
                if t is not None:  # None: a donor that does not share its buffers; keep ours
                    b.copy_(t.to(device=b.device, dtype=b.dtype))
            opt_state: dict[int, dict[str, Any]] = {}
            for name, t in state.tensors.items():
                if name.startswith("opt."):
                    _, idx, key = name.split(".", 2)
                    opt_state.setdefault(int(idx), {})[key] = t
            for idx, values in state.extra.get("opt_extra", {}).items():
                opt_state.setdefault(int(idx), {}).update(values)
            optimizer = self._state_optimizer()
            groups = state.extra.get("param_groups") or optimizer.state_dict()["param_groups"]
            optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
            self.epoch = state.epoch
            self._apply_schedule()
            for acc in self._accum:
                acc.zero_()
            self.local_samples = 0
            if self.round_codec is not None:
                self.round_codec.reset()
                self.round_codec.load_state_tensors(state.tensors)
            self._after_load_state()
            digest = self.params_hash()
        self.collab.tracker.report(epoch=self.epoch, samples=0, params_hash=digest)
        self.collab.tracker.poke()
