"""Hand-written protobuf framing: what it builds parses as the ordinary message, byte for byte what protobuf makes."""
import pytest

from swarm.averaging.streams import ChunkMessage
from swarm.net.protowire import read_varint, varint
from swarm.proto import swarm_pb2


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**63])
def test_varint_round_trip(value):
    encoded = varint(value)
    assert read_varint(memoryview(b"\x00" + encoded), 1) == (value, 1 + len(encoded))


def test_read_varint_refuses_cut_off_and_overlong_input():
    assert read_varint(memoryview(b"\x80\x80"), 0) is None      # its last byte says more follow
    assert read_varint(memoryview(b"\xff" * 11 + b"\x01"), 0) is None  # longer than protobuf's 10 bytes
    with pytest.raises(ValueError):
        varint(-1)


@pytest.mark.parametrize("part, chunk, size", [(0, 0, 0), (0, 0, 5), (3, 0, 200), (0, 7, 1 << 20), (300, 129, 17)])
def test_chunk_message_is_protobuf_s_serialization(part, chunk, size):
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    ours = ChunkMessage(part, chunk, data).SerializeToString()
    assert ours == swarm_pb2.PartChunk(part=part, chunk=chunk, data=data).SerializeToString(deterministic=True)
    parsed = swarm_pb2.PartChunk()
    parsed.ParseFromString(ours)
    assert (parsed.part, parsed.chunk, parsed.data) == (part, chunk, data)
    message = ChunkMessage(part, chunk, data)
    assert (message.part, message.chunk, bytes(message.data), message.error) == (part, chunk, data, "")
