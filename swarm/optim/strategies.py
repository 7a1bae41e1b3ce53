"""Run modes as strategies of the one collaborative optimizer (swarm.optim.core): what to average, when, how to apply it.

The core owns the round: it counts samples, asks the tracker when the swarm is ready, submits the
round, waits for it or settles it later, retries a failed one and loads downloaded state. A mode
says only what differs:

- what: `contribution()` gives the tensors this peer brings to the round (and a payload it needs
  back), `local_step()` is what every micro-batch does locally;
- when: `overlap` False blocks the step that submitted the round until it is applied (at most one
  round in flight either way); True lets the next batch be computed while it runs (update one step late);
- how: `apply()` turns the averaged tensors into the new parameters; `give_back()` keeps a failed
  round's work for the retry.

`GradientAveraging` is DeDLOC's synchronous mode (accumulate gradients weighted by samples, average them,
step the wrapped optimizer on the average). `DiLoCo` (Douillard et al. 2023) takes an inner step on every
micro-batch and, once per epoch, averages the pseudo-gradients theta_outer - theta_i (weighted by samples)
and takes an outer SGD step with Nesterov momentum; the outer parameters and momentum are then the run's
shared state. With overlap, DiLoCo keeps what the inner steps did while the round ran (streaming DiLoCo's
overlap): theta <- theta_outer + (theta - theta at submission). `StreamingDiLoCo` (Douillard et al. 2025)
averages one fragment of the model per epoch, in turn, so each fragment has its outer step every F epochs.
"""
from __future__ import annotations

import abc
import time
from typing import Any, Protocol

import torch

from swarm.averaging.rounds import RoundRequest
from swarm.compression.fragments import fragment_of_epoch

from ..errors import ConfigError

__all__ = ["RunMode", "GradientAveraging", "DiLoCo", "StreamingDiLoCo", "make_run_mode", "strided_fragments", "layers_of", "Wrapped"]


class Wrapped(Protocol):
    """What a mode uses of the collaborative optimizer (swarm.optim.core): the parameters and the wrapped optimizer."""

    params: list[torch.nn.Parameter]
    inner: torch.optim.Optimizer
    epoch: int


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


class RunMode(abc.ABC):
    """What a run mode averages, when, and how it applies the average (see the module docstring)."""

    name: str
    overlap: bool

    def bind(self, opt: Wrapped) -> None:
        """Allocate what the mode keeps for `opt`'s parameters (called once, from the optimizer's constructor)."""

    @abc.abstractmethod
    def local_step(self, opt: Wrapped, samples: int) -> None:
        """What one micro-batch of `samples` does locally (its gradients are finite)."""

    @abc.abstractmethod
    def local_finite(self, opt: Wrapped) -> bool:
        """Whether the local work to be averaged is finite (a non-finite one would poison the average)."""

    @abc.abstractmethod
    def forget_local(self, opt: Wrapped) -> None:
        """Drop the local work since the last applied round (it is not finite)."""

    @abc.abstractmethod
    def contribution(self, opt: Wrapped, weight: float) -> tuple[list[torch.Tensor], Any]:
        """(the tensors to average, the payload that comes back to give_back or apply)."""

    @abc.abstractmethod
    def give_back(self, opt: Wrapped, request: RoundRequest) -> None:
        """A round failed: keep its work so that the retried epoch holds it."""

    @abc.abstractmethod
    def apply(self, opt: Wrapped, averaged: list[torch.Tensor], request: RoundRequest) -> None:
        """Step on the averaged tensors (under the optimizer's step lock, without autograd)."""

    # the run's shared state (what a newcomer downloads and the parameter hash covers)
    def fragments(self, opt: Wrapped) -> list[list[int]] | None:
        """None: every round averages all parameters; else the parameter indices of each fragment, the round of
        epoch e averaging fragment e mod F (swarm.compression.fragments), after `bind`."""
        return None

    def state_params(self, opt: Wrapped) -> list[torch.Tensor]:
        return opt.params

    def state_optimizer(self, opt: Wrapped) -> torch.optim.Optimizer:
        return opt.inner

    def after_load_state(self, opt: Wrapped) -> None:
        """Reset what depended on the state that was just replaced (under the step lock)."""


class GradientAveraging(RunMode):
    """Sync mode: average the gradients accumulated over the epoch's micro-batches, step the wrapped optimizer."""

    name = "sync"

    def __init__(self, overlap: bool = False):
        self.overlap = overlap
        self.accum: list[torch.Tensor] = []
        self._spare: list[torch.Tensor] | None = None   # overlap: the buffers of the last applied round, reused

    def bind(self, opt: Wrapped) -> None:
        self.accum = [torch.zeros_like(p, dtype=torch.float32) for p in opt.params]

    def local_step(self, opt: Wrapped, samples: int) -> None:
        with torch.no_grad():
            for p, acc in zip(opt.params, self.accum):
                if p.grad is not None:
                    acc.add_(p.grad.float(), alpha=float(samples))

    def local_finite(self, opt: Wrapped) -> bool:
        return _all_finite(self.accum)

    def forget_local(self, opt: Wrapped) -> None:
        for acc in self.accum:
            acc.zero_()

    def contribution(self, opt: Wrapped, weight: float) -> tuple[list[torch.Tensor], Any]:
        sums = self.accum
        if self.overlap:   # the next batch accumulates into fresh buffers while this one is averaged
            self.accum = self._spare if self._spare is not None else [torch.zeros_like(acc) for acc in sums]
            self._spare = None
        with torch.no_grad():
            return [acc / max(weight, 1.0) for acc in sums], sums

    def give_back(self, opt: Wrapped, request: RoundRequest) -> None:
        sums: list[torch.Tensor] = request.payload
        if sums is self.accum:
            return   # blocking mode: the sums never left the accumulator
        with torch.no_grad():
            for acc, old in zip(self.accum, sums):
                acc.add_(old)
        self._recycle(sums)

    def apply(self, opt: Wrapped, averaged: list[torch.Tensor], request: RoundRequest) -> None:
        for p, g in zip(opt.params, averaged):
            p.grad = g.to(device=p.device, dtype=p.dtype).clone()
        opt.inner.step()
        sums: list[torch.Tensor] = request.payload
        if sums is self.accum:
            self.forget_local(opt)
        else:
            self._recycle(sums)

    def _recycle(self, sums: list[torch.Tensor]) -> None:
        for old in sums:
            old.zero_()
        self._spare = sums

    def after_load_state(self, opt: Wrapped) -> None:
        self.forget_local(opt)


class DiLoCo(RunMode):
    """Inner steps on every micro-batch; per epoch an outer SGD (Nesterov) step on the averaged pseudo-gradients."""

    name = "diloco"

    def __init__(self, overlap: bool = False, outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True):
        if not outer_lr > 0:
            raise ConfigError("outer_lr must be positive")
        if not 0 <= outer_momentum < 1:
            raise ConfigError("outer_momentum must be in [0, 1)")
        self.overlap = overlap
        self.outer_lr, self.outer_momentum, self.nesterov = outer_lr, outer_momentum, nesterov
        self.outer_params: list[torch.Tensor] = []
        self.outer: torch.optim.Optimizer | None = None
        self.inner_steps = 0            # since the last outer step
        self.inner_step_seconds = 0.0   # in the inner optimizer's steps, in all (local training work, as forward/backward)

    def bind(self, opt: Wrapped) -> None:
        self.outer_params = [p.detach().float().cpu().clone() for p in opt.params]   # on the CPU, as DiLoCo keeps them
        self.outer = torch.optim.SGD(self.outer_params, lr=self.outer_lr, momentum=self.outer_momentum,
                                     nesterov=self.nesterov and self.outer_momentum > 0)

    def local_step(self, opt: Wrapped, samples: int) -> None:
        started = time.perf_counter()
        opt.inner.step()
        self.inner_step_seconds += time.perf_counter() - started
        self.inner_steps += 1

    def local_finite(self, opt: Wrapped) -> bool:
        return _all_finite([p.detach() for p in opt.params])

    def forget_local(self, opt: Wrapped) -> None:
        with torch.no_grad():
            for p, o in zip(opt.params, self.outer_params):
                p.copy_(o)

    def contribution(self, opt: Wrapped, weight: float) -> tuple[list[torch.Tensor], Any]:
        with torch.no_grad():
            deltas = [o - p.detach().float().cpu() for o, p in zip(self.outer_params, opt.params)]
            start = [p.detach().float().cpu().clone() for p in opt.params] if self.overlap else None
        return deltas, start

    def give_back(self, opt: Wrapped, request: RoundRequest) -> None:
        """The outer parameters did not move, so the next pseudo-gradient still holds this round's work."""

    def apply(self, opt: Wrapped, averaged: list[torch.Tensor], request: RoundRequest) -> None:
        assert self.outer is not None
        for o, d in zip(self.outer_params, averaged):
            o.grad = d.to(dtype=o.dtype).reshape(o.shape).clone()
        self.outer.step()
        for o in self.outer_params:
            o.grad = None
        start: list[torch.Tensor] | None = request.payload
        for i, (p, o) in enumerate(zip(opt.params, self.outer_params)):
            if start is None:
                p.copy_(o)
            else:   # overlap: keep what the inner steps did while the round ran
                drift = p.detach().float().cpu() - start[i]
                p.copy_(o + drift if bool(torch.isfinite(drift).all()) else o)
        self.inner_steps = 0

    def state_params(self, opt: Wrapped) -> list[torch.Tensor]:
        return self.outer_params

    def state_optimizer(self, opt: Wrapped) -> torch.optim.Optimizer:
        assert self.outer is not None
        return self.outer

    def after_load_state(self, opt: Wrapped) -> None:
        """Inner steps restart from the downloaded outer parameters."""
        self.forget_local(opt)
        self.inner_steps = 0


class StreamingDiLoCo(DiLoCo):
    """DiLoCo whose outer rounds each synchronise one fragment of the model, in turn, while inner steps go on.

    Streaming DiLoCo (Douillard et al. 2025): the parameters are split into `fragments` F, strided over
    layers (layer j belongs to fragment j mod F; `layers[i]` names parameter i's layer, default: each
    parameter its own layer). The round of epoch e averages fragment f = e mod F, so with an epoch of H/F
    inner steps fragment f is synchronised every H inner steps, offset by f*H/F, and each round moves about
    1/F of DiLoCo's bytes. Its pseudo-gradient is the fragment's outer parameters minus its local ones (all
    the inner progress since the fragment's last round); the outer Nesterov step moves only the fragment's
    outer parameters and momentum.

    Applying (delayed, with overlap): the fragment's parameters become its new outer parameters plus what the
    inner steps did to them while the round ran (theta <- theta_outer + (theta - theta at submission)), so no
    inner step is lost and the shared state (outer parameters, momentum) is the same bytes on every peer that
    applied the round. A failed round moves nothing: the retried epoch averages the same fragment, whose
    pseudo-gradient still holds all its work.
    """

    name = "streaming-diloco"

    def __init__(self, overlap: bool = True, outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True,
                 fragments: int = 4, layers: list[int] | None = None):
        super().__init__(overlap, outer_lr, outer_momentum, nesterov)
        if isinstance(fragments, bool) or not isinstance(fragments, int) or fragments < 1:
            raise ConfigError(f"fragments must be a positive integer, not {fragments!r}")
        self.num_fragments = fragments
        self.layers = list(layers) if layers is not None else None
        self._fragments: list[list[int]] = []

    def bind(self, opt: Wrapped) -> None:
        super().bind(opt)
        self._fragments = strided_fragments(self.layers if self.layers is not None else list(range(len(opt.params))),
                                            self.num_fragments, len(opt.params))

    def fragments(self, opt: Wrapped) -> list[list[int]] | None:
        return self._fragments

    def fragment_at(self, epoch: int) -> list[int]:
        """The parameter indices the round of `epoch` averages."""
        return self._fragments[fragment_of_epoch(epoch, len(self._fragments))]

    def contribution(self, opt: Wrapped, weight: float) -> tuple[list[torch.Tensor], Any]:
        indices = self.fragment_at(opt.epoch)
        with torch.no_grad():
            deltas = [self.outer_params[i] - opt.params[i].detach().float().cpu() for i in indices]
            start = [opt.params[i].detach().float().cpu().clone() for i in indices] if self.overlap else None
        return deltas, start

    def apply(self, opt: Wrapped, averaged: list[torch.Tensor], request: RoundRequest) -> None:
        assert self.outer is not None
        indices = self.fragment_at(request.epoch)
        for i, d in zip(indices, averaged):
            o = self.outer_params[i]
            o.grad = d.to(dtype=o.dtype).reshape(o.shape).clone()
        self.outer.step()   # SGD skips parameters without a gradient: the other fragments and their momentum stay
        for i in indices:
            self.outer_params[i].grad = None
        start: list[torch.Tensor] | None = request.payload
        for k, i in enumerate(indices):
            p, o = opt.params[i], self.outer_params[i]
            if start is None:
                p.copy_(o)
            else:
                drift = p.detach().float().cpu() - start[k]
                p.copy_(o + drift if bool(torch.isfinite(drift).all()) else o)
        self.inner_steps = 0


def layers_of(model: torch.nn.Module) -> list[int]:
    """A layer id per trainable parameter of `model` (in `model.parameters()` order): parameters of one module share it."""
    ids: dict[str, int] = {}
    return [ids.setdefault(name.rpartition(".")[0], len(ids)) for name, p in model.named_parameters() if p.requires_grad]


def strided_fragments(layers: list[int], fragments: int, count: int) -> list[list[int]]:
    """Parameter indices per fragment: the distinct layers, in order of first appearance, go to fragment j mod F."""
    if len(layers) != count:
        raise ConfigError(f"layers names {len(layers)} parameters, the optimizer has {count}")
    order: dict[int, int] = {}
    for layer in layers:
        order.setdefault(layer, len(order))
    if fragments > len(order):
        raise ConfigError(f"{fragments} fragments but only {len(order)} layers: use at most {len(order)} fragments")
    split: list[list[int]] = [[] for _ in range(fragments)]
    for i, layer in enumerate(layers):
        split[order[layer] % fragments].append(i)
    return split


def make_run_mode(mode: str, overlap: bool = False, **mode_options: Any) -> RunMode:
    """The strategy of `mode` ("sync", "diloco" or "streaming-diloco"); `mode_options` are DiLoCo's outer_lr,
    outer_momentum, nesterov (and streaming DiLoCo's fragments, layers)."""
    if mode == "sync":
        if mode_options:
            raise ConfigError(f"sync mode takes no {', '.join(sorted(mode_options))} (those are DiLoCo's outer optimizer's)")
        return GradientAveraging(overlap)
    if mode == "diloco":
        return DiLoCo(overlap, **mode_options)
    if mode == "streaming-diloco":
        return StreamingDiLoCo(overlap, **mode_options)
    raise ConfigError(f"unknown mode {mode!r}: sync, diloco or streaming-diloco")
