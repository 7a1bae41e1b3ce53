"""Message size caps on hivemind's P2P streams: nothing from the network is read in full before its size is checked.

hivemind frames every protobuf on a stream as an 8-byte length and the bytes, and its reader
(`P2P.receive_raw_data`, a static method that every stream handler and every stream reader calls)
reads whatever length the sender announces: one 400 MB message from a stranger would sit in memory
before any handler could check who sent it. `cap_message_sizes()` replaces that reader with one that
refuses a length above `MAX_MESSAGE_BYTES` before reading the body. It raises IncompleteReadError,
which hivemind treats as a closed stream on both sides: the handler's stream ends quietly and a
reader sees its stream end early (our downloads then fail on their own length checks).

With hivemind's prefetch of 5 requests per stream, a hostile stream holds at most
6 x MAX_MESSAGE_BYTES (about 50 MB) before the handler refuses it.

The largest honest message is an all-reduce chunk (`chunk_elements` <= 2**20 values, 4 MB in fp32,
8 MB in fp64) or a 1 MB state chunk; DHT requests travel over p2pd's own capped connection.
"""
from __future__ import annotations

import asyncio
import logging

from hivemind.p2p import P2P

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**23 + 2**16   # 8 MB of values plus the protobuf's other fields

_original_receive = P2P.receive_raw_data


class OversizedMessage(asyncio.IncompleteReadError):
    """A peer announced a message larger than MAX_MESSAGE_BYTES: the stream is closed unread."""


async def _capped_receive_raw_data(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(P2P.HEADER_LEN)
    length = int.from_bytes(header, P2P.BYTEORDER)
    if length > MAX_MESSAGE_BYTES:
        logger.warning("closing a stream whose next message is %d bytes (at most %d are read)", length, MAX_MESSAGE_BYTES)
        raise OversizedMessage(b"", length)
    return await reader.readexactly(length)


def cap_message_sizes() -> None:
    """Install the capped reader for every P2P instance of this process (idempotent; Node.create calls it)."""
    P2P.receive_raw_data = staticmethod(_capped_receive_raw_data)  # type: ignore[method-assign]


def uncap_message_sizes() -> None:
    """Restore hivemind's own reader (tests)."""
    P2P.receive_raw_data = staticmethod(_original_receive)  # type: ignore[method-assign]
