"""The sparse codec (swarm.compression.sparse): exact for fp16 values, the smallest of its layouts, and a decoder that bounds
every count and position a bad peer could send."""
from __future__ import annotations

import struct

import pytest
import torch

from swarm.compression import sparse
from swarm.compression.codecs import decode_checked, get_codec
from swarm.errors import ProtocolError

pytestmark = pytest.mark.timeout(60)

CODEC = get_codec("sparse")
HEADER = 20


def sparse_vector(numel, density, values=None, seed=0):
    """`density` x numel non-zeros at random positions; fp16 values, or drawn from `values` when given."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.zeros(numel)
    positions = torch.randperm(numel, generator=gen)[: max(1, int(density * numel))]
    if values is None:
        x[positions] = torch.randn(positions.numel(), generator=gen).half().float()
    else:
        choice = torch.randint(len(values), (positions.numel(),), generator=gen)
        x[positions] = torch.tensor(values, dtype=torch.float32)[choice]
    return x


def _mode(data: bytes) -> int:
    return data[3]


@pytest.mark.parametrize("numel", [1, 1000, 2**16, 2**16 + 1, 200_000])
@pytest.mark.parametrize("values, mode, index_bits", [
    ([-0.75, -0.25, 0.25, 0.75], 1, 2),                       # SparseLoCo's 2-bit values: a 4-entry codebook
    ([float(v) for v in range(1, 17)], 1, 4),                 # up to 16 distinct values: 4-bit indices
    (None, 0, 16),                                            # any fp16 values
])
def test_exact_round_trip_and_size_of_each_layout(numel, values, mode, index_bits):
    x = sparse_vector(numel, 0.02, values)
    data = CODEC.encode(x)
    assert torch.equal(decode_checked(CODEC, data, numel), x)
    nnz, blocks = int((x != 0).sum()), -(-numel // 2**16)
    distinct = int(torch.unique(x[x != 0]).numel())     # a small vector may not draw every value
    codebook = 0 if values is None else 1 + 2 * distinct
    index_bits = 2 if values is not None and distinct <= 4 else index_bits
    sparse_size = HEADER + 4 * blocks + 2 * nnz + codebook + -(-nnz * index_bits // 8)
    if sparse_size < HEADER + 2 * numel:
        assert _mode(data) == mode and len(data) == sparse_size
    else:
        assert _mode(data) == 2 and len(data) == HEADER + 2 * numel


def test_top_2_percent_with_2_bit_values_is_about_2_25_bytes_per_sent_value():
    x = sparse_vector(2**17, 0.02, [-2.0, -1.0, 1.0, 2.0])
    data = CODEC.encode(x)
    assert len(data) / (x != 0).sum().item() == pytest.approx(2.25, abs=0.02)
    assert len(data) / x.numel() < 0.046     # 87x below fp32


def test_dense_layout_when_positions_would_cost_more():
    x = sparse_vector(10_000, 0.6)
    data = CODEC.encode(x)
    assert _mode(data) == 2 and len(data) == HEADER + 2 * 10_000
    assert torch.equal(CODEC.decode(data), x)


def test_values_are_rounded_to_fp16_and_clamped():
    x = torch.tensor([0.0, 1e-9, 1 / 3, 1e6, -float("inf")] + [0.0] * 100)
    y = CODEC.decode(CODEC.encode(x))
    assert y[:5].tolist() == [0.0, 0.0, float(torch.tensor(1 / 3).half()), 65504.0, -65504.0]
    assert CODEC.encode(x) == CODEC.encode(x.clone())


def _layout(data: bytes):
    _, mode, numel, nnz = struct.unpack_from("<3sBQQ", data)
    blocks = -(-numel // 2**16)
    return mode, numel, nnz, blocks


def _set(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_decode_rejects_bad_messages_in_one_line():
    numel = 2**16 + 5000
    x = sparse_vector(numel, 0.01, [-1.0, -0.5, 0.5, 1.0])
    x[numel - 1] = 1.0       # the last non-zero sits in the last, partial block
    good = CODEC.encode(x)
    mode, _, nnz, blocks = _layout(good)
    assert mode == 1 and blocks == 2 and nnz % 4   # 2-bit indices, two blocks, a partly used last byte
    counts = HEADER
    offsets = HEADER + 4 * blocks
    codebook = offsets + 2 * nnz
    first_count = struct.unpack_from("<I", good, counts)[0]
    fp16_values = CODEC.encode(sparse_vector(numel, 0.01))
    bad = {
        "short": good[:HEADER - 1],
        "magic": b"XYZ" + good[3:],
        "mode": _set(good, 3, "<B", 3),
        "count": _set(good, 4, "<Q", numel + 1),
        "huge count": _set(good, 4, "<Q", 2**40),
        "nnz above count": _set(good, 12, "<Q", numel + 1),
        "truncated": good[:-1],
        "extended": good + b"\x00",
        "counts do not add up": _set(good, counts, "<I", first_count + 1),
        "counts moved": _set(_set(good, counts, "<I", first_count - 1), counts + 4, "<I", nnz - first_count + 1),
        "duplicate position": _set(good, offsets + 2, "<H", struct.unpack_from("<H", good, offsets)[0]),
        "beyond the vector": _set(good, codebook - 2, "<H", 6000),     # the last block holds 5000 values
        "empty codebook": _set(good, codebook, "<B", 0),
        "codebook too large": _set(good, codebook, "<B", 17),
        "index out of range": _set(good, codebook, "<B", 3),      # 4 entries in use, 3 declared
        "padding bits": good[:-1] + bytes([good[-1] | 0xC0]),
        "dense of wrong length": _set(CODEC.encode(torch.ones(100)), 4, "<Q", numel)[:HEADER + 10],
        "fp16 values truncated": fp16_values[:-2],
    }
    for what, data in bad.items():
        with pytest.raises(ProtocolError) as info:
            decode_checked(CODEC, data, numel)
        assert "\n" not in str(info.value) and str(info.value).startswith("sparse"), what


def test_a_huge_claimed_count_is_refused_before_allocation():
    small = CODEC.encode(sparse_vector(1000, 0.01))
    claim = _set(_set(small, 4, "<Q", sparse.MAX_NUMEL + 1), 12, "<Q", 0)
    with pytest.raises(ProtocolError, match="out of bounds"):
        CODEC.decode(claim)
    with pytest.raises(ProtocolError, match="expected 1000"):
        decode_checked(CODEC, _set(small, 4, "<Q", 2**30), 1000)


def test_non_finite_values_reach_decode_checked():
    x = torch.zeros(100)
    x[3] = float("nan")
    with pytest.raises(ProtocolError, match="non-finite"):
        decode_checked(CODEC, CODEC.encode(x), 100)


def test_reducer_average_of_sparse_parts_is_carried_exactly_up_to_fp16():
    """What a reducer sends back: the weighted average of n top-k parts, at most n x k non-zeros."""
    n, numel = 4, 2**17
    parts = [sparse_vector(numel, 0.02, [-2.0, -1.0, 1.0, 2.0], seed=i) for i in range(n)]
    for weights in ([1.0] * n, [1.0, 2.0, 3.0, 5.0]):
        mean = sum(w * p for w, p in zip(weights, parts)) / sum(weights)
        data = CODEC.encode(mean)
        assert torch.equal(CODEC.decode(data), mean.half().float())
        nnz = int((mean != 0).sum())
        assert nnz <= n * int(0.02 * numel) and len(data) <= HEADER + 8 + 4 * nnz
    # equal weights leave few distinct values (a codebook); unequal ones need fp16 values: 4 bytes per non-zero
    assert _mode(CODEC.encode(sum(parts) / n)) == 1 and _mode(data) == 0
    assert len(data) / numel == pytest.approx(0.31, abs=0.01)
