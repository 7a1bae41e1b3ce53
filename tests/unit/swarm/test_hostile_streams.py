"""Issue 13, items 6-7: sizes are capped before a message is read, downloads stop at the declared size, idle streams close."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import msgpack
import pytest
import torch
from hivemind.p2p import P2P

from swarm.averaging.state_sync import StateServer, TrainingState, download_state
from swarm.errors import ProtocolError
from swarm.net import wire
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(30)

DONOR = "12D3KooWHCcrL5hiVJhv5DH7JXyZgckXNry3ab2yXbQfnFe9nGZ3"


def framed_header(length: int) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(length.to_bytes(P2P.HEADER_LEN, P2P.BYTEORDER))
    return reader


def test_an_oversized_message_is_refused_before_its_body_is_read():
    async def main():
        # hivemind's reader waits for (and would buffer) all 400 MB a stranger announces
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(wire._original_receive(framed_header(400 * 2**20)), 0.3)
        with pytest.raises(wire.OversizedMessage):
            await wire._capped_receive_raw_data(framed_header(400 * 2**20))
        ok = framed_header(5)
        ok.feed_data(b"hello")
        assert await wire._capped_receive_raw_data(ok) == b"hello"
    asyncio.run(main())


def test_cap_is_installed_on_hivemind_and_can_be_removed():
    try:
        wire.cap_message_sizes()
        assert P2P.receive_raw_data is wire._capped_receive_raw_data
    finally:
        wire.uncap_message_sizes()
    assert P2P.receive_raw_data is wire._original_receive


def test_an_honest_chunk_fits_under_the_cap():
    from swarm.config import EngineConfig

    largest = EngineConfig.model_fields["chunk_elements"].metadata
    limit = next(m.le for m in largest if getattr(m, "le", None) is not None)
    assert limit * 8 < wire.MAX_MESSAGE_BYTES   # even fp64 values


class FloodingDonor:
    """A donor that declares one 32 KB tensor and then streams 1 MB chunks for it without end."""

    peer_id = "me"

    def __init__(self):
        self.sent = 0

    async def iterate_protobuf_handler(self, peer, name, request, output_type):
        meta = {"epoch": 3, "digest": "x", "tensors": [["param.0", "torch.float32", [8192]]], "extra": {}}

        async def stream():
            yield swarm_pb2.StateChunk(metadata=msgpack.packb(meta))
            while self.sent < 1000:   # 1 GB if nobody stops reading
                self.sent += 1
                yield swarm_pb2.StateChunk(tensor=0, data=b"\0" * 2**20)
        return stream()


def test_a_download_stops_at_the_declared_size():
    donor = FloodingDonor()
    with pytest.raises(ProtocolError, match="more than the 32768 bytes"):
        asyncio.run(download_state(donor, "run", DONOR, 0, timeout=20))
    assert donor.sent == 1   # before: all 1000 chunks were buffered, the length checked at the end


def test_an_idle_state_stream_is_closed():
    async def main():
        server = StateServer(SimpleNamespace(), "run", lambda: TrainingState(0, {"p": torch.zeros(1)}, {}), idle_timeout=0.2)

        async def silent():
            await asyncio.sleep(3600)
            yield swarm_pb2.StateRequest()

        started = time.monotonic()
        replies = [m async for m in server._handle_stream(silent(), SimpleNamespace(remote_id="stranger"))]
        return replies, time.monotonic() - started
    replies, took = asyncio.run(main())
    assert replies == [] and took < 5   # before: the handler awaited the request for as long as the stream stayed open
