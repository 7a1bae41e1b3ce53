"""State download: a late joiner, or a peer that fell behind, fetches the training state from a peer.

The state is the parameters, the optimizer's tensors, the epoch and a msgpack dict of
everything else (optimizer hyperparameters, scheduler). A donor takes a consistent
snapshot (under the optimizer's step lock), then streams a metadata message followed by
each tensor in chunks. The receiver checks every tensor's dtype and shape against the
metadata and the sha256 of the whole state before it uses any of it: a truncated or
tampered download is refused, and the next donor is tried. A donor that sends more bytes
than a tensor's declared size is refused at the first byte too many, so a download never
holds more than the state it declared. A request stream that stays silent for
`REQUEST_IDLE_TIMEOUT` is closed (its file descriptor too), whoever opened it. Donors are the reachable
peers at the newest epoch, the least asked first (each publishes its count in its progress record) and in random order
among equals, so a crowd of newcomers spreads its load.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from dataclasses import dataclass
from typing import AsyncIterator, Callable

import msgpack
import numpy as np
import torch
from hivemind.p2p import P2P, P2PContext, PeerID

from swarm.averaging.deadlines import MAX_LIMIT, transfer_limit
from swarm.averaging.streams import drain
from swarm.errors import NetworkError, ProtocolError, describe
from swarm.net.auth import SwarmAuthorizer
from swarm.proto import swarm_pb2

logger = logging.getLogger(__name__)

STATE_HANDLER = "swarm.state"
CHUNK_BYTES = 1 << 20
STATE_SILENCE_FLOOR = 10.0   # seconds a donor may go without delivering a chunk, whatever the rate estimate says
Progress = Callable[[int, int], None]   # (bytes received, bytes announced)
REQUEST_IDLE_TIMEOUT = 10.0   # seconds a requester may take to send its request on an open stream
STREAM_RETRY_PAUSE = 0.25   # seconds before asking again a donor whose stream closed before answering


@dataclass
class TrainingState:
    epoch: int
    tensors: dict[str, torch.Tensor]     # ordered: parameters first, then optimizer tensors
    extra: dict                          # msgpack-able

    def digest(self) -> str:
        return state_digest(self.tensors, self.epoch)


def state_digest(tensors: dict[str, torch.Tensor], epoch: int) -> str:
    h = hashlib.sha256(str(epoch).encode())
    for name, t in tensors.items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def params_digest(params: list[torch.Tensor]) -> str:
    """Hash of parameter values (bitwise): peers that stepped identically share it."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:32]


_DTYPES = {str(d): d for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32, torch.uint8, torch.bool)}


class StateServer:
    """Serves snapshots from `snapshot()` (called on the engine loop; must be quick and consistent)."""

    def __init__(self, p2p: P2P, run_id: str, snapshot: Callable[[], TrainingState | None], authorizer: SwarmAuthorizer | None = None,
                 idle_timeout: float = REQUEST_IDLE_TIMEOUT):
        self.p2p, self.run_id, self.snapshot = p2p, run_id, snapshot
        self.authorizer = authorizer  # invite-only runs: unauthorized requests are refused
        self.idle_timeout = idle_timeout
        self.served = 0
        self.asked = 0   # downloads begun: published in our progress record, so that newcomers spread over donors
        self.on_asked: Callable[[], None] = lambda: None

    async def start(self) -> None:
        # stream_input: the handler itself awaits the request, with a timeout (hivemind's unary input waits forever)
        await self.p2p.add_protobuf_handler(STATE_HANDLER, self._handle_stream, swarm_pb2.StateRequest, stream_input=True, stream_output=True)

    async def _handle_stream(self, requests: AsyncIterator[swarm_pb2.StateRequest], context: P2PContext) -> AsyncIterator[swarm_pb2.StateChunk]:
        try:
            request = await asyncio.wait_for(anext(requests), self.idle_timeout)
        except (StopAsyncIteration, asyncio.TimeoutError):
            logger.debug("closed an idle state stream from %s", str(context.remote_id)[-8:])
            return
        async for chunk in self._handle(request, context):
            yield chunk
        # read the requester's end-of-stream before the handler closes the stream: closing with input unread resets it,
        # and a refusal (or the last chunk) in flight is lost (swarm.averaging.service._served)
        await drain(requests, self.idle_timeout)

    async def _handle(self, request: swarm_pb2.StateRequest, context: P2PContext) -> AsyncIterator[swarm_pb2.StateChunk]:
        problem = self.authorizer.check_message(request, context.remote_id) if self.authorizer is not None else None
        if problem is not None:
            logger.info("refused a state request from %s: %s", str(context.remote_id)[-8:], problem)
            yield swarm_pb2.StateChunk(error=f"unauthorized: {problem}")
            return
        if request.run_id != self.run_id:
            yield swarm_pb2.StateChunk(error="wrong run")
            return
        state = await asyncio.get_running_loop().run_in_executor(None, self.snapshot)
        if state is None or state.epoch < request.min_epoch:
            yield swarm_pb2.StateChunk(error="no state at that epoch here")
            return
        self.asked += 1
        self.on_asked()
        meta = {
            "epoch": state.epoch,
            "digest": state.digest(),
            "tensors": [[name, str(t.dtype), list(t.shape)] for name, t in state.tensors.items()],
            "extra": state.extra,
        }
        yield swarm_pb2.StateChunk(metadata=msgpack.packb(meta))
        for i, t in enumerate(state.tensors.values()):
            data = t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""  # 0-dim too (AdamW's step)
            for start in range(0, max(len(data), 1), CHUNK_BYTES):
                yield swarm_pb2.StateChunk(tensor=i, data=data[start : start + CHUNK_BYTES])
        self.served += 1
        logger.info("served state of epoch %d to %s", state.epoch, str(context.remote_id)[-8:])


def _nbytes(dtype: torch.dtype, shape: tuple[int, ...]) -> int:
    if any(s < 0 for s in shape):
        raise ProtocolError(f"negative tensor shape {shape}")
    return int(np.prod(shape, dtype=object)) * torch.empty(0, dtype=dtype).element_size()


class StreamClosed(NetworkError):
    """The donor's stream ended or broke before the whole state came: a transport hiccup, not a refusal."""


async def _until_closed(stream: AsyncIterator[swarm_pb2.StateChunk], donor: str) -> AsyncIterator[swarm_pb2.StateChunk]:
    """The stream's chunks; a transport failure mid-way (reset, broken pipe) becomes StreamClosed."""
    try:
        async for chunk in stream:
            yield chunk
    except (OSError, asyncio.IncompleteReadError) as e:
        raise StreamClosed(f"donor {donor[-8:]}'s stream broke ({describe(e)})") from e


async def download_state(p2p: P2P, run_id: str, donor: str, min_epoch: int, timeout: float,
                         authorizer: SwarmAuthorizer | None = None, progress: Progress | None = None,
                         rate_bps: float | None = None) -> TrainingState:
    """Fetch and verify a state from one donor; raises NetworkError/ProtocolError. `progress(received, total)`
    hears the bytes received so far after each chunk (total: the donor's announced size, for display only).

    Without `rate_bps`, `timeout` bounds the whole download. With it (the measured download rate), `timeout` bounds
    the wait for the donor's first answer, and from then on each chunk has its own limit, one chunk's transfer time at
    that rate with a margin (swarm.averaging.deadlines, at least STATE_SILENCE_FLOOR s or `timeout` if less): a slow
    donor that keeps sending is kept whatever the state's size, a silent one is dropped after one chunk's limit."""
    request = swarm_pb2.StateRequest(run_id=run_id, min_epoch=min_epoch)
    if authorizer is not None:
        authorizer.sign_message(request, p2p.peer_id)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(timeout) as scope:
        stream = await p2p.iterate_protobuf_handler(PeerID.from_base58(donor), STATE_HANDLER, request, swarm_pb2.StateChunk)
        try:
            first = await anext(stream)
        except (StopAsyncIteration, OSError, asyncio.IncompleteReadError) as e:
            raise StreamClosed(f"donor {donor[-8:]} closed the stream before answering ({describe(e)})") from e
        if first.error:
            raise NetworkError(f"donor {donor[-8:]} refused: {first.error}")
        try:
            meta = msgpack.unpackb(first.metadata, raw=False)
            specs = [(str(n), _DTYPES[d], tuple(int(s) for s in shape)) for n, d, shape in meta["tensors"]]
            epoch, digest, extra = int(meta["epoch"]), str(meta["digest"]), meta["extra"]
        except Exception as e:
            raise ProtocolError(f"donor {donor[-8:]} sent bad metadata: {e}") from e
        sizes = [_nbytes(dtype, shape) for _, dtype, shape in specs]
        buffers = [bytearray() for _ in specs]
        total = sum(sizes)
        received = 0
        if progress is not None:
            progress(0, total)
        if rate_bps is not None:
            silence = transfer_limit(CHUNK_BYTES, rate_bps, min(timeout, STATE_SILENCE_FLOOR))
            scope.reschedule(min(started + MAX_LIMIT, loop.time() + silence))
        async for chunk in _until_closed(stream, donor):
            if rate_bps is not None:   # it delivered: the next chunk gets its own time, within MAX_LIMIT of the start
                scope.reschedule(min(started + MAX_LIMIT, loop.time() + silence))
            if chunk.error:
                raise NetworkError(f"donor {donor[-8:]} failed: {chunk.error}")
            if not 0 <= chunk.tensor < len(specs):
                raise ProtocolError("state chunk for an unknown tensor")
            if len(buffers[chunk.tensor]) + len(chunk.data) > sizes[chunk.tensor]:
                raise ProtocolError(f"donor {donor[-8:]} sent more than the {sizes[chunk.tensor]} bytes of tensor {specs[chunk.tensor][0]}")
            buffers[chunk.tensor] += chunk.data
            received += len(chunk.data)
            if progress is not None:
                progress(received, total)
    if received < total:
        raise StreamClosed(f"donor {donor[-8:]}'s stream ended after {received} of {total} bytes")
    tensors = {}
    for (name, dtype, shape), buf, expected in zip(specs, buffers, sizes):
        if len(buf) != expected:
            raise ProtocolError(f"tensor {name} has {len(buf)} bytes, expected {expected}")
        tensors[name] = torch.frombuffer(buf, dtype=torch.uint8).view(dtype).reshape(shape).clone() if expected else torch.empty(shape, dtype=dtype)
    state = TrainingState(epoch=epoch, tensors=tensors, extra=extra)
    if state.digest() != digest:
        raise ProtocolError(f"state from {donor[-8:]} does not match its hash")
    return state


async def download_from_any(p2p: P2P, run_id: str, donors: list[str], min_epoch: int, timeout: float, attempts: int = 3,
                            authorizer: SwarmAuthorizer | None = None, failed: Callable[[str], None] | None = None,
                            progress: Progress | None = None, rate_bps: float | None = None,
                            asked: dict[str, int] | None = None) -> tuple[TrainingState, str]:
    """Try the donors least asked for the state first (`asked`: the counts in their progress records), in random order
    among equals: a crowd of newcomers spreads its load. `failed(donor)` hears of each that failed."""
    order = sorted(random.sample(donors, len(donors)), key=lambda d: (asked or {}).get(d, 0))
    errors = []
    for donor in order[:attempts]:
        try:
            try:
                return await download_state(p2p, run_id, donor, min_epoch, timeout, authorizer, progress, rate_bps), donor
            except StreamClosed as e:
                # A stream cut by the transport (seen on loopback when several newcomers connect at once: the stream
                # ends early, with no error from the donor) says nothing about the donor: ask it once more before
                # counting it as failed.
                logger.info("%s; asking it again", e)
                await asyncio.sleep(STREAM_RETRY_PAUSE)
                return await download_state(p2p, run_id, donor, min_epoch, timeout, authorizer, progress, rate_bps), donor
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.warning("state download from %s failed: %s", donor[-8:], describe(e))
            errors.append(f"{donor[-8:]}: {describe(e)}")
            if failed is not None:
                failed(donor)
    raise NetworkError("could not download the state: " + ("; ".join(errors) or "no donors"))
