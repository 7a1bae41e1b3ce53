"""The collaborative optimizer: a `torch.optim.Optimizer` with which a swarm takes large steps together.

One core runs the round for every run mode; a mode (swarm.optim.strategies) says what is averaged,
whether the round blocks, and how the average is applied. On every `step()`:

    1. local work: the micro-batch's gradients are checked (a non-finite one contributes nothing: its
       samples are not counted) and the mode does its local step (sync: accumulate them weighted by
       samples; DiLoCo: an inner optimizer step);
    2. settle: a round in flight is applied once done (or, at the latest, once this peer has computed as
       many samples again as it brought to it; then the step waits for it, within the round's deadline);
    3. when the swarm has `target_batch_size` samples at this epoch (swarm.averaging.progress), the mode's tensors are
       submitted as one round (`Collaboration.submit_round`); a blocking mode settles it at once;
    4. apply: the averaged tensors become the step, the epoch advances and the attached LR schedulers with
       it; a failed round gives its work back and the epoch is retried.

Guarantees. Every peer that applies round e applies the same averaged bytes to the same state, so peers
that step hold bitwise-identical parameters (`params_hash`); at most one round is in flight, so an update
is at most one step late (overlap) or never (blocking). A peer that misses a round keeps its work and
retries while the swarm is at its epoch, and downloads the state when the swarm moved on or when its
parameter hash disagrees with the majority of its epoch.

torch integration. `param_groups` and `state` are the wrapped (inner) optimizer's, so a torch LR scheduler
or `torch.amp.GradScaler` attaches as to any optimizer: `scaler.step(opt, samples=n)` skips `step()` when
the scaled gradients overflowed, so that micro-batch never reaches the average. A scheduler attached with
`attach_scheduler()` (or built by `scheduler=`) advances with the swarm's epoch, not with local steps: the
loop's own `scheduler.step()` calls only catch it up to the epoch, so every peer has the same learning rate
at the same epoch. `state_dict()` holds the epoch, the mode's state and the schedulers'.
"""
from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
import warnings
from typing import Any, Callable, Iterable, Protocol

import msgpack
import torch

from swarm.averaging.layout import TensorLayout
from swarm.averaging.rounds import RoundReport, RoundRequest
from swarm.averaging.state_sync import TrainingState, params_digest
from swarm.compression.codecs import CompressionPolicy
from swarm.compression.fragments import FragmentedRoundCodec
from swarm.compression.policy import FixedRoundCodec, make_round_codec
from swarm.compression.round_codec import Averaged, RoundCodec

from ..errors import Alone, ConfigError, NetworkError, RoundFailed, SwarmError
from .grads import closure_loss
from .strategies import RunMode, make_run_mode

logger = logging.getLogger(__name__)

__all__ = ["CollaborativeOptimizer", "Swarm"]

RETRY_PAUSE_SECONDS = 1.0   # after a failed round or download: the swarm's view needs a moment to change


class Swarm(Protocol):
    """What the optimizer uses of its collaboration (swarm.collaboration.Collaboration; tests use doubles)."""

    peer_id: str
    config: Any        # swarm.config.EngineConfig
    tracker: Any       # swarm.averaging.progress.ProgressTracker

    def begin_training(self, schema: TensorLayout, snapshot: Callable[[], TrainingState | None]) -> None: ...

    def submit_round(self, request: RoundRequest, codec: RoundCodec, tensors: list[torch.Tensor] | None) -> RoundRequest: ...

    def download_state(self, donors: list[str], min_epoch: int) -> TrainingState: ...


class CollaborativeOptimizer(torch.optim.Optimizer):
    """Wraps any torch optimizer (class or instance) so that the swarm steps together (see the module docstring).

    `mode` "sync", "diloco" or "streaming-diloco" (the wrapped optimizer is then the inner one; `outer_lr`,
    `outer_momentum`, `nesterov` go to the outer SGD; `fragments`: streaming DiLoCo's F, or pass a
    `StreamingDiLoCo(..., layers=...)` as `mode`), `overlap` runs the round while the next batch is computed. `buffers`:
    the model's buffers (BatchNorm statistics), not averaged but part of the state a newcomer downloads.
    `samples_per_step`: what a `step()` without `samples=` counts (default 1: then `target_batch_size` is in
    calls). `lr_schedule(epoch)` multiplies the base learning rates (a LambdaLR); `scheduler(opt)` builds any
    torch LR scheduler on this optimizer; both advance with the swarm's epoch.
    """

    def __init__(
        self,
        collab: Swarm,
        params: Iterable[torch.nn.Parameter],
        optimizer: Callable[..., torch.optim.Optimizer] | torch.optim.Optimizer,
        *,
        mode: str | RunMode = "sync",
        overlap: bool = False,
        lr_schedule: Callable[[int], float] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        compression: CompressionPolicy | None = None,
        codec: str | None = None,
        buffers: Iterable[torch.Tensor] = (),
        samples_per_step: int = 1,
        outer_lr: float | None = None,
        outer_momentum: float | None = None,
        nesterov: bool | None = None,
        fragments: int | None = None,
        **optimizer_kwargs: Any,
    ):
        if samples_per_step <= 0:
            raise ConfigError("samples_per_step must be positive")
        self.collab = collab
        self.params = [p for p in params if p.requires_grad]
        self.buffers = list(buffers)
        self.inner = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(self.params, **optimizer_kwargs)
        # torch's constructor sets up the hooks that schedulers and GradScaler rely on; the groups and the
        # state are then the inner optimizer's own objects, so what a scheduler sets is what the inner one uses
        super().__init__(self.inner.param_groups, self.inner.defaults)
        self._share_inner_groups()
        options = {k: v for k, v in (("outer_lr", outer_lr), ("outer_momentum", outer_momentum), ("nesterov", nesterov), ("fragments", fragments)) if v is not None}
        self.strategy = mode if isinstance(mode, RunMode) else make_run_mode(mode, overlap, **options)
        self.strategy.bind(self)
        self.samples_per_step = int(samples_per_step)
        self.codec = self._make_codec(collab.config, compression, codec)
        self.epoch = 0
        self.local_samples = 0
        self.pending: RoundRequest | None = None   # the round in flight (at most one)
        self.step_lock = threading.Lock()
        self.rounds_completed = 0
        self.rounds_failed = 0
        self.state_downloads = 0
        self.skipped_steps = 0          # micro-batches whose gradients were not finite (not counted)
        self.round_wait_seconds = 0.0   # time step() spent blocked on rounds (blocking modes: every round)
        self.history: list[RoundReport] = []
        self.on_step: list[Callable[[RoundReport], None]] = []
        self.schedulers: list[tuple[Any, Callable[..., Any]]] = []   # (scheduler, its own step)
        self._rate = 0.0
        self._last_step_time: float | None = None
        self._retry_after = 0.0
        self._late_tried = -1   # the epoch whose formed group we last asked for its result (one try per epoch)
        self._alone_at = -1     # the epoch at which we last found ourselves alone in a group (swarm.errors.Alone)
        self._synced_at = -1    # the epoch at which our parameters are the swarm's (a committed round or a download)
        self._oldest: int | None = None   # parameter version of the oldest local work not yet averaged
        self._schema_fixed = True
        if lr_schedule is not None:
            self.attach_scheduler(torch.optim.lr_scheduler.LambdaLR(self, lr_schedule))
        if scheduler is not None:
            self.attach_scheduler(scheduler(self))
        collab.begin_training(self.codec.schema, self.snapshot)

    def _share_inner_groups(self) -> None:
        """Hold the inner optimizer's own param_groups and state. torch's load_state_dict replaces both objects, so
        after every load they are shared again: else a scheduler (attached here) would set rates the inner optimizer
        no longer reads, and a peer that downloaded the state would keep the downloaded epoch's rate for good."""
        self.param_groups = self.inner.param_groups
        self.state = self.inner.state

    def _make_codec(self, config: Any, compression: CompressionPolicy | None, codec: str | None) -> RoundCodec:
        """`codec`: this mode's own choice (e.g. diloco.outer_codec), else the run's engine.compression.

        A mode that averages one fragment of the parameters per epoch gets one such codec per fragment."""
        fragments = self.strategy.fragments(self)
        if fragments is None:
            return self._codec_for([p.shape for p in self.params], config, compression, codec)
        codecs = [self._codec_for([self.params[i].shape for i in f], config, compression, codec) for f in fragments]
        return FragmentedRoundCodec([p.shape for p in self.params], fragments, codecs)

    def _codec_for(self, shapes: list[torch.Size], config: Any, compression: CompressionPolicy | None, codec: str | None) -> RoundCodec:
        name = codec or config.compression
        if name in ("powersgd", "auto", "topk"):   # codecs with state, or that choose per round (swarm.compression.policy)
            return make_round_codec(shapes, name, rank=config.powersgd_rank, budget=config.compression_budget,
                                    compute_seconds=self.epoch_compute_seconds, topk_fraction=config.topk_fraction,
                                    topk_value_bits=config.topk_value_bits, topk_result=config.topk_result)
        policy = compression or CompressionPolicy(default=name)
        return FixedRoundCodec.from_layout(TensorLayout.build(shapes, lambda i, n: policy.codec_for(str(i), n)))

    # -- torch.optim.Optimizer ----------------------------------------------------------------------------------

    def step(self, closure: Callable[[], Any] | None = None, *, samples: int | None = None) -> Any:  # type: ignore[override]
        """Count this micro-batch (`samples`, default `samples_per_step`) and take a global step when the swarm is ready.

        Returns the closure's loss when a closure is given (torch's contract), else whether this call applied
        a global update. Call `zero_grad()` after it, as usual."""
        loss = closure_loss(closure)
        n = self.samples_per_step if samples is None else samples
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ConfigError(f"samples must be a positive integer, not {n!r}")
        stepped = self._local_then_round(n)
        return loss if closure is not None else stepped

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_schema_fixed", False):
            raise ConfigError("a collaborative optimizer's parameters cannot change once it joined the run "
                              "(every peer averages the same tensors): build it with all of them")
        super().add_param_group(param_group)

    def state_dict(self) -> dict[str, Any]:
        """A checkpoint: the swarm's epoch, the run's shared state (parameters included) and the inner optimizer."""
        state = self.snapshot()
        assert state is not None
        return {"epoch": state.epoch, "tensors": state.tensors, "extra": state.extra, "inner": self.inner.state_dict(),
                "mode": self.strategy.name}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a `state_dict()` of the same run mode and model; anything else is refused before changing anything."""
        if not isinstance(state_dict, dict) or not {"epoch", "tensors", "extra", "inner"} <= set(state_dict):
            raise ConfigError("not a collaborative optimizer's state_dict (epoch, tensors, extra, inner)")
        if state_dict.get("mode", self.strategy.name) != self.strategy.name:
            raise ConfigError(f"the state_dict is of mode {state_dict['mode']!r}, this optimizer's is {self.strategy.name!r}")
        inner = state_dict["inner"]
        if [len(g["params"]) for g in inner["param_groups"]] != [len(g["params"]) for g in self.inner.param_groups]:
            raise ConfigError("the state_dict's parameter groups differ from this optimizer's")
        try:
            self.load_state(TrainingState(epoch=int(state_dict["epoch"]), tensors=state_dict["tensors"], extra=state_dict["extra"]))
        except NetworkError as e:   # the shapes do not fit: a local mistake here, not a network one
            raise ConfigError(str(e)) from None
        if self.strategy.state_optimizer(self) is not self.inner:
            self.inner.load_state_dict(inner)
            self._share_inner_groups()

    # -- learning-rate schedules ---------------------------------------------------------------------------------

    def attach_scheduler(self, scheduler: Any) -> Any:
        """Make `scheduler` (any torch LR scheduler on this optimizer) advance with the swarm's epoch.

        Its `step()` then only catches it up to the epoch, so a loop (or transformers.Trainer) that calls it
        after every local step changes nothing between global steps. Returns the scheduler."""
        if getattr(scheduler, "optimizer", None) not in (self, self.inner):
            raise ConfigError("the scheduler is not built on this optimizer")
        own_step = scheduler.step
        self.schedulers.append((scheduler, own_step))
        scheduler.step = lambda *args, **kwargs: self._catch_up(scheduler, own_step)
        self._catch_up(scheduler, own_step)
        return scheduler

    def _catch_up(self, scheduler: Any, own_step: Callable[[], Any]) -> None:
        with warnings.catch_warnings():
            # torch warns when a scheduler steps before its optimizer did: a downloaded state moves it first, rightly
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"), category=UserWarning)
            if scheduler.last_epoch > self.epoch:   # a state of an earlier epoch was loaded: restart the count there
                scheduler.last_epoch = self.epoch - 1
                own_step()
            while scheduler.last_epoch < self.epoch:
                own_step()

    def _schedulers_to_epoch(self, loaded: list[dict] | None = None, *, after_load: bool = False) -> None:
        """Bring every scheduler to the swarm's epoch. After a state download (`after_load`), a scheduler whose state
        came with it starts from that state; one whose state could not travel is replayed from its start on the
        downloaded param_groups (stepping it on from the donor's rates would apply a chainable schedule twice)."""
        states = loaded if loaded is not None and len(loaded) == len(self.schedulers) else None
        for k, (scheduler, own_step) in enumerate(self.schedulers):
            if states is not None:
                scheduler.load_state_dict(states[k])
            elif after_load:
                for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                    group["lr"] = base
                scheduler.last_epoch = 0
            self._catch_up(scheduler, own_step)

    # -- the round --------------------------------------------------------------------------------------------------

    @property
    def samples_per_second(self) -> float:
        return self._rate

    def params_hash(self) -> str:
        return params_digest([p.data for p in self.strategy.state_params(self)])

    def finish(self, timeout: float | None = None) -> None:
        """Settle the round still in flight before leaving (wait for it within its deadline, or `timeout`, and apply it)."""
        if self.pending is not None:
            self._settle(wait=True, timeout=timeout)

    def epoch_compute_seconds(self) -> float:
        """This peer's estimate of the swarm's compute time per epoch: target batch over the swarm's samples/s."""
        tracker = self.collab.tracker
        rate = tracker.view.rate_at(self.epoch, exclude=self.collab.peer_id) + self._rate
        return tracker.target_batch_size / rate if rate > 0 else float("nan")

    def _local_then_round(self, samples: int) -> bool:
        now = time.monotonic()
        if self._last_step_time is not None:
            inst = samples / max(now - self._last_step_time, 1e-6)
            self._rate = inst if self._rate == 0 else 0.8 * self._rate + 0.2 * inst
            # how soon a leader's call can be answered by a submit (swarm.averaging.calls)
            self.collab.tracker.micro_batch_seconds = now - self._last_step_time
        self._last_step_time = now
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()):
            self.skipped_steps += 1
            logger.warning("epoch %d: gradients are not finite; this micro-batch of %d samples is skipped", self.epoch, samples)
            return False
        self.strategy.local_step(self, samples)
        self.local_samples += samples
        if self._oldest is None:
            self._oldest = self.epoch
        stepped = self._settle(wait=False)
        tracker = self.collab.tracker
        tracker.report(samples=self._reported_samples(), samples_per_second=self._rate)
        if self.pending is None and self._one_epoch_late():
            self._submit()   # matchmaking asks the peers ahead first (swarm.averaging.matchmaking): the late path
            if not self.strategy.overlap:
                stepped = self._settle(wait=True) or stepped
            return stepped
        if self.pending is not None or self._maybe_resync():
            return stepped
        if time.monotonic() < self._retry_after or not tracker.ready(self.epoch):
            return stepped
        self._submit()
        if not self.strategy.overlap:
            stepped = self._settle(wait=True) or stepped
        return stepped

    def _reported_samples(self) -> int:
        """The samples of this epoch: new ones plus those of the round in flight (others still see the epoch full)."""
        return self.local_samples + (self.pending.samples if self.pending is not None else 0)

    def _submit(self) -> None:
        weight = float(self.local_samples)
        if not self.strategy.local_finite(self):
            logger.warning("epoch %d: local work is not finite; contributing zero weight", self.epoch)
            self.strategy.forget_local(self)
            weight = 0.0
        tensors, payload = self.strategy.contribution(self, weight)
        request = RoundRequest(self.epoch, weight, samples=self.local_samples,
                               oldest=self._oldest if self._oldest is not None else self.epoch, payload=payload)
        self.pending = self.collab.submit_round(request, self.codec, tensors)
        self.local_samples = 0
        self._oldest = None
        self.collab.tracker.report(samples=self._reported_samples())

    def _settle(self, wait: bool, timeout: float | None = None) -> bool:
        """Apply the round in flight if it is done (or if `wait`, or at the next ready point); True if applied."""
        request = self.pending
        if request is None:
            return False
        if not request.done() and not wait and self.local_samples < request.samples:
            return False
        self.pending = None
        waited = time.monotonic()
        try:
            averaged, report = request.wait(timeout)
        except RoundFailed as e:
            self._give_back(request, e)
            return False
        finally:
            self.round_wait_seconds += time.monotonic() - waited
        self._apply(request, averaged, report)
        return True

    def _give_back(self, request: RoundRequest, error: Exception) -> None:
        self.strategy.give_back(self, request)
        self.local_samples += request.samples
        oldest = request.oldest if request.oldest is not None else request.epoch
        self._oldest = min(oldest, self._oldest if self._oldest is not None else oldest)
        self._retry_after = time.monotonic() + RETRY_PAUSE_SECONDS
        if request.epoch == self._late_tried and self.collab.tracker.view.epoch > request.epoch:
            # asking a formed group for its result is no round of ours: the state download comes next
            logger.info("epoch %d: the group's result was not available (%s); keeping %d samples of local work",
                        request.epoch, error, self.local_samples)
        elif isinstance(error, Alone) and request.epoch == self._alone_at:
            # A peer whose swarm restarts around it retries once a second: one wait for the swarm, counted and logged as
            # one failed round (`swarm chaos` counted 24 retries at two epochs as 24 failed rounds)
            logger.debug("epoch %d: still alone in the group (%s)", request.epoch, error)
        else:
            if isinstance(error, Alone):
                self._alone_at = request.epoch
            self.rounds_failed += 1
            logger.warning("epoch %d: round failed (%s); keeping %d samples of local work", request.epoch, error, self.local_samples)
        self.collab.tracker.poke()

    def _apply(self, request: RoundRequest, averaged: Averaged, report: RoundReport) -> None:
        assert averaged.tensors is not None
        with self.step_lock, torch.no_grad():
            self.strategy.apply(self, averaged.tensors, request)
            averaged.commit()
            self.epoch += 1
            self._synced_at = self.epoch
            self._schedulers_to_epoch()
            digest = self.params_hash()
        self.rounds_completed += 1
        oldest = request.oldest if request.oldest is not None else request.epoch
        report = dataclasses.replace(report, epoch=self.epoch, params_hash=digest, staleness=request.epoch - oldest)
        self.history.append(report)
        self.collab.tracker.report(epoch=self.epoch, samples=self._reported_samples(), params_hash=digest)
        self.collab.tracker.poke()
        for callback in self.on_step:
            callback(report)

    # -- state ----------------------------------------------------------------------------------------------------

    def _one_epoch_late(self) -> bool:
        """The swarm stepped one epoch past us, once per epoch: its group formed while our micro-batch ran (a large
        model's micro-batch can outlast the gathering). Its result, fetched from the reducers, costs one averaged vector
        instead of the whole state (parameters and optimizer). If that fails, the next micro-batch downloads the state."""
        if self.collab.tracker.view.epoch != self.epoch + 1 or self._late_tried == self.epoch or time.monotonic() < self._retry_after:
            return False
        if self._synced_at != self.epoch:   # a newcomer's own initial parameters: the group's result would not fit them
            return False
        self._late_tried = self.epoch
        logger.info("epoch %d: the swarm stepped without us; asking its group for the result", self.epoch)
        return True

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
            self._retry_after = time.monotonic() + RETRY_PAUSE_SECONDS
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
        """Replace the shared state and epoch with a verified download from the newest peers.

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

    def snapshot(self) -> TrainingState | None:
        """A consistent copy of the shared state (called from the engine thread): the mode's parameters and
        optimizer (sync: the model's and the wrapped one; DiLoCo: the outer ones), buffers, codec, schedulers."""
        with self.step_lock:
            tensors = {f"param.{i}": p.detach().clone() for i, p in enumerate(self.strategy.state_params(self))}
            tensors.update({f"buffer.{i}": b.detach().cpu().clone() for i, b in enumerate(self.buffers)})
            sd = self.strategy.state_optimizer(self).state_dict()
            extra_state: dict[str, dict[str, Any]] = {}
            for idx, st in sd["state"].items():
                for key, value in st.items():
                    if torch.is_tensor(value):
                        tensors[f"opt.{idx}.{key}"] = value.detach().clone()
                    else:
                        extra_state.setdefault(str(idx), {})[key] = value
            groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
            tensors.update(self.codec.state_tensors())
            extra: dict[str, Any] = {"param_groups": groups, "opt_extra": extra_state}
            # attach_scheduler's own `step` lives in the scheduler's __dict__, which is what state_dict returns
            schedulers = [_plain({k: v for k, v in s.state_dict().items() if not callable(v)}) for s, _ in self.schedulers]
            if schedulers and all(s is not None for s in schedulers):
                extra["schedulers"] = schedulers
            return TrainingState(epoch=self.epoch, tensors=tensors, extra=extra)

    def load_state(self, state: TrainingState) -> None:
        # check everything before changing anything: a state that does not fit leaves ours as it was
        for i, p in enumerate(self.strategy.state_params(self)):
            t = state.tensors.get(f"param.{i}")
            if t is None or t.shape != p.shape:
                raise NetworkError(f"downloaded state does not fit this model (parameter {i})")
        for i, b in enumerate(self.buffers):
            t = state.tensors.get(f"buffer.{i}")
            if t is not None and t.shape != b.shape:
                raise NetworkError(f"downloaded state does not fit this model (buffer {i})")
        with self.step_lock, torch.no_grad():
            for i, p in enumerate(self.strategy.state_params(self)):
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
            optimizer = self.strategy.state_optimizer(self)
            groups = state.extra.get("param_groups") or optimizer.state_dict()["param_groups"]
            optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
            self._share_inner_groups()
            self.epoch = state.epoch
            self._synced_at = state.epoch
            self._schedulers_to_epoch(state.extra.get("schedulers"), after_load=True)
            self.local_samples = 0
            self._oldest = None
            self.codec.reset()
            self.codec.load_state_tensors(state.tensors)
            self.strategy.after_load_state(self)
            digest = self.params_hash()
        self.collab.tracker.report(epoch=self.epoch, samples=0, params_hash=digest)
        self.collab.tracker.poke()


def _plain(value: Any) -> Any:
    """`value` if it travels in the state's msgpack metadata, else None (that scheduler then catches up by stepping)."""
    try:
        msgpack.packb(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return value
