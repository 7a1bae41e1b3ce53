"""Byzantine volunteers: real peers whose round contribution is corrupted (issue 16's attacks).

A byzantine peer runs the normal daemon; its Collaboration's `round_class` becomes a subclass of the round that
corrupts what it sends to the other reducers (`_outgoing`), and for inflated_weight its matchmaker claims more
samples than it has. Nothing else in it changes: it trains, steps and is followed like an honest peer.

Kinds (`KINDS`):
- sign_flip: sends -g.
- gaussian: sends noise of 10x the norm of g.
- huge: sends finite 1e30 everywhere (the issue's measured poisoning).
- alie ("a little is enough", Baruch et al. 2019): sends g - z * s, s the per-coordinate spread of honest
  gradients, estimated as |g - the last average this peer received| (one honest sample's deviation); small per
  coordinate, it hides inside the honest spread and biases every coordinate the same way.
- inflated_weight: claims INFLATION x its samples and sends -g (so the inflated weight matters).
- lying_reducer: sends g honestly, but adds noise (REDUCER_NOISE x its norm) to the part it averages, and
  sends that to every member: consistent, so only validators recomputing its work could catch it. It hides from
  them what only it holds, its own contribution to its part (auditors ask for it in vain: swarm.averaging.audits
  checks the part without it).
- equivocating_reducer: averages honestly but sends members of odd index its part plus that noise, and in a round
  that checks results signs what each member got: the members' part hashes differ, and two of its statements
  prove it (swarm.averaging.result_statements).
"""
from __future__ import annotations

import hashlib
import logging

import torch

from swarm.averaging.reduction import Reduction
from swarm.averaging.result_statements import sign_statement
from swarm.compression.codecs import decode_checked
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

SENDER_KINDS = ("sign_flip", "gaussian", "huge", "alie", "inflated_weight")
REDUCER_KINDS = ("lying_reducer", "equivocating_reducer")
KINDS = SENDER_KINDS + REDUCER_KINDS
REDUCER_NOISE = 1.0
HUGE = 1e30
GAUSSIAN_NORM_RATIO = 10.0
ALIE_Z = 1.0
INFLATION = 1000.0


def corrupt(kind: str, values: torch.Tensor, last_average: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
    """What a byzantine peer of `kind` sends instead of `values` (one chunk); `last_average`: the same chunk of the
    last average it received (alie's estimate of the honest spread), None before its first round."""
    if kind in ("sign_flip", "inflated_weight"):
        return -values
    if kind == "huge":
        return torch.full_like(values, HUGE)
    if kind == "gaussian":
        scale = GAUSSIAN_NORM_RATIO * float(values.norm()) / max(values.numel(), 1) ** 0.5
        return scale * torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))
    if kind == "alie":
        spread = (values - last_average).abs() if last_average is not None else 0.1 * values.abs()
        return values - ALIE_Z * spread * torch.sign(values)
    raise ValueError(f"unknown byzantine kind {kind!r}: one of {', '.join(SENDER_KINDS)}")


def noisy(values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """`values` plus gaussian noise of REDUCER_NOISE times their norm (a lying reducer's part)."""
    scale = REDUCER_NOISE * float(values.norm()) / max(values.numel(), 1) ** 0.5
    return values + scale * torch.randn(values.shape, generator=torch.Generator().manual_seed(seed))


def lying_reduction(base: type) -> type:
    """A reduction whose result carries noise (lying_reducer)."""

    class Lying(base):
        def result(self):
            value = super().result()
            return None if value is None else noisy(value, seed=value.numel())

    return Lying


def byzantine_round_class(kind: str, base: type):
    """A subclass of the round class `base` that sends `corrupt(kind, ...)` for every chunk of another's part."""
    if kind not in KINDS:
        raise ValueError(f"unknown byzantine kind {kind!r}: one of {', '.join(KINDS)}")
    memory: dict[tuple[int, int, int], torch.Tensor] = {}   # (bucket, start, length) -> that chunk of the last average

    class ByzantineRound(base):
        _sent = 0

        def __init__(self, *args, **kwargs):
            if kind == "lying_reducer":
                kwargs["reduction"] = lying_reduction(kwargs.get("reduction") or Reduction)
                keep = kwargs.get("keep_contribution")
                me = (args[1] if len(args) > 1 else kwargs["group"]).my_index
                if keep is not None:   # auditors never get my own contribution to my part from me
                    kwargs["keep_contribution"] = lambda commitment, part, chunks: None if part == me else keep(commitment, part, chunks)
            super().__init__(*args, **kwargs)

        async def run(self):
            if kind in REDUCER_KINDS:   # what the run's report and tests compare the bans with: the rounds it attacked in
                mine = self.parts[self.group.my_index]
                logger.warning("byzantine %s: %s my part of round %s (%d chunks, share %.3f)", kind,
                               "attacking in" if mine else "no part to attack in", self.group.round_id.hex()[:8], len(mine),
                               self.group.shares[self.group.my_index])
            try:
                return await super().run()
            finally:
                if kind == "lying_reducer":   # nor from the store its peer fills after the round (Auditor.after_round)
                    self.contributions.pop(self.group.my_index, None)

        def _outgoing(self, chunk):
            values = super()._outgoing(chunk)
            if kind in REDUCER_KINDS:
                return values
            self._sent += 1
            return corrupt(kind, values, memory.get((chunk.bucket, chunk.start, chunk.length)), seed=self._sent)

        async def serve(self, first, requests, remote):
            odd = str(remote) in self.group.peer_ids and self.group.peer_ids.index(str(remote)) % 2 == 1
            mine = self.parts[self.group.my_index]
            sent = hashlib.sha256()   # what this member gets: in a round that checks results, the statement signs it
            async for reply in super().serve(first, requests, remote):
                if kind == "equivocating_reducer" and odd and reply.data and not first.fetch:
                    if reply.chunk < len(mine):
                        chunk = mine[reply.chunk]
                        codec = self.layout.codecs[chunk.bucket]
                        values = noisy(decode_checked(codec, reply.data, chunk.length), seed=reply.chunk)
                        reply = swarm_pb2.PartChunk(part=reply.part, chunk=reply.chunk, data=codec.encode(values))
                        sent.update(reply.data)
                    elif self.signer is not None:   # the statement after the last chunk: sign the bytes sent
                        own = self._own_statement()
                        reply = self._statement_message(sign_statement(self.signer, own.round_id, own.part, own.reducer, sent.digest()))
                yield reply

        def _store_result(self, chunk, values):
            super()._store_result(chunk, values)
            if kind == "alie":
                memory[(chunk.bucket, chunk.start, chunk.length)] = values.detach().clone()

    ByzantineRound.__name__ = f"Byzantine_{kind}"
    return ByzantineRound


def inflating_matchmaker(matchmaker) -> None:
    """Make a started matchmaker claim INFLATION x its samples in every join request (inflated_weight)."""
    base = type(matchmaker)

    class Inflating(base):
        async def form_group(self, request, deadline):
            request.weight *= INFLATION
            return await super().form_group(request, deadline)

    matchmaker.__class__ = Inflating


def install(collab, kind: str) -> None:
    """Turn `collab` (a started Collaboration) into a byzantine peer of `kind`."""
    collab.round_class = byzantine_round_class(kind, collab.round_class)
    if kind == "inflated_weight":
        inflating_matchmaker(collab.matchmaker)
