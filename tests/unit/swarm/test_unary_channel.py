"""The p2pd unary channel survives a response to a call its caller already cancelled (swarm.net.unary_channel)."""
from __future__ import annotations

import asyncio
import uuid

import pytest
from hivemind.p2p.p2p_daemon_bindings.control import ControlClient
from hivemind.proto import p2pd_pb2 as p2pd_pb

from swarm.net import unary_channel

pytestmark = pytest.mark.timeout(30)


def _frame(message) -> bytes:
    body = message.SerializeToString()
    size, prefix = len(body), bytearray()
    while True:   # unsigned varint, as p2pd frames its messages
        byte, size = size & 0x7F, size >> 7
        prefix.append(byte | (0x80 if size else 0))
        if not size:
            return bytes(prefix) + body


def _response(call: uuid.UUID, payload: bytes) -> bytes:
    return _frame(p2pd_pb.PersistentConnectionResponse(callId=call.bytes, callUnaryResponse=p2pd_pb.CallUnaryResponse(response=payload)))


async def _read(reader_function) -> tuple[BaseException | None, object]:
    """A channel with a call its caller cancelled (the response arrives anyway) and a live call answered after it."""
    client = object.__new__(ControlClient)   # only the tables the reader touches
    client._pending_calls, client._handler_tasks = {}, {}
    gave_up, waiting = uuid.uuid4(), uuid.uuid4()
    loop = asyncio.get_running_loop()
    client._pending_calls[gave_up] = loop.create_future()
    client._pending_calls[gave_up].cancel()      # what wait_for's timeout does to the caller's await
    client._pending_calls[waiting] = loop.create_future()
    stream = asyncio.StreamReader()
    stream.feed_data(_response(gave_up, b"late") + _response(waiting, b"answer"))
    stream.feed_eof()
    try:
        await reader_function(client, stream)
    except Exception as e:   # hivemind's reader dies here: its task ends, and every later call with it
        return e, client._pending_calls[waiting]
    return None, client._pending_calls[waiting]


def test_a_late_response_to_a_cancelled_call_does_not_end_the_reader():
    error, live = asyncio.run(_read(unary_channel._original_reader))
    assert type(error).__name__ == "InvalidStateError" and not live.done()      # hivemind's own reader
    error, live = asyncio.run(_read(unary_channel._read_from_persistent_conn))
    assert error is None and live.result() == b"answer"


def test_install_replaces_the_reader_of_every_client():
    before = ControlClient._read_from_persistent_conn
    try:
        unary_channel.uninstall()
        assert ControlClient._read_from_persistent_conn is unary_channel._original_reader
        unary_channel.install()
        assert ControlClient._read_from_persistent_conn is unary_channel._read_from_persistent_conn
    finally:
        ControlClient._read_from_persistent_conn = before
    assert unary_channel.describe(object()) == "no p2pd client"
