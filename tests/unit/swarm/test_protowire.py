"""Hand-written protobuf varints (the codecs' in-place framing is tested in test_compression.py)."""
import pytest

from swarm.net.protowire import read_varint, varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**63])
def test_varint_round_trip(value):
    encoded = varint(value)
    assert read_varint(memoryview(b"\x00" + encoded), 1) == (value, 1 + len(encoded))


def test_read_varint_refuses_cut_off_and_overlong_input():
    assert read_varint(memoryview(b"\x80\x80"), 0) is None      # its last byte says more follow
    assert read_varint(memoryview(b"\xff" * 11 + b"\x01"), 0) is None  # longer than protobuf's 10 bytes
    with pytest.raises(ValueError):
        varint(-1)
