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


def rice_reference(positions: list[int], r: int) -> bytes:
    """Rice positions as the module docstring specifies them, bit by bit in Python (the wire format's oracle)."""
    unary, low, previous = "", "", -1
    for p in positions:
        gap = p - previous - 1
        previous = p
        unary += "0" * (gap >> r) + "1"
        low += format(gap & ((1 << r) - 1), f"0{r}b") if r else ""

    def packed(bits: str) -> bytes:
        bits += "0" * (-len(bits) % 8)
        return bytes(int(bits[i : i + 8], 2) for i in range(0, len(bits), 8))
    return struct.pack("<BI", r, len(packed(unary))) + packed(unary) + packed(low)


def block_positions_size(numel: int, nnz: int) -> int:
    return 4 * -(-numel // 2**16) + 2 * nnz


@pytest.mark.parametrize("numel", [1, 1000, 2**16, 2**16 + 1, 200_000])
@pytest.mark.parametrize("values, index_bits", [
    ([-0.75, -0.25, 0.25, 0.75], 2),                       # SparseLoCo's 2-bit values: a 4-entry codebook
    ([float(v) for v in range(1, 17)], 4),                 # up to 16 distinct values: 4-bit indices
    ([float(v) for v in range(1, 45)], 6),                 # 11 tensors of 4 levels each: 6-bit indices
    (None, 16),                                            # any fp16 values
])
def test_exact_round_trip_and_the_smallest_layout(numel, values, index_bits):
    x = sparse_vector(numel, 0.02, values)
    data = CODEC.encode(x)
    assert torch.equal(decode_checked(CODEC, data, numel), x)
    positions = torch.nonzero(x)[:, 0].tolist()
    nnz = len(positions)
    distinct = int(torch.unique(x[x != 0]).numel())     # a small vector may not draw every value
    codebook = values is not None
    bits = max(0, (distinct - 1).bit_length())         # ceil(log2(distinct))
    value_size = min(2 + 2 * distinct + -(-nnz * bits // 8), 2 * nnz) if codebook else 2 * nnz
    rice = {r: rice_reference(positions, r) for r in range(0, 25)}
    best_rice = min(len(b) for b in rice.values())
    sparse_size = HEADER + value_size + min(block_positions_size(numel, nnz), best_rice)
    if sparse_size < HEADER + 2 * numel:
        codebook_wins = codebook and 2 + 2 * distinct + -(-nnz * bits // 8) < 2 * nnz
        assert _mode(data) in ((1, 4) if codebook_wins else (0, 3))
        if _mode(data) in (3, 4):   # the Rice parameter is searched near log2 of the mean gap: within 2% of the best
            r = data[HEADER]
            assert data[HEADER : HEADER + len(rice[r])] == rice[r]
            assert len(data) <= sparse_size * 1.02 + 2
        else:
            assert len(data) == HEADER + value_size + block_positions_size(numel, nnz)
    else:
        assert _mode(data) == 2 and len(data) == HEADER + 2 * numel


def test_top_2_percent_with_2_bit_values_is_about_1_15_bytes_per_sent_value():
    """Rice positions cost ~log2(1/0.02) + 2 bits: half of block positions' 16 (2.25 bytes per value before)."""
    x = sparse_vector(2**17, 0.02, [-2.0, -1.0, 1.0, 2.0])
    data = CODEC.encode(x)
    assert _mode(data) == 4
    assert len(data) / (x != 0).sum().item() == pytest.approx(1.15, abs=0.03)
    assert len(data) / x.numel() < 0.024     # 170x below fp32


def test_block_positions_win_where_non_zeros_crowd():
    """At a density near 1/2 a Rice code costs ~2 bits per position and block positions 16, but a vector whose
    non-zeros all sit in one short run (a gap of thousands, then every value) is cheaper either way: both decode."""
    for x in (sparse_vector(10_000, 0.3), torch.cat([torch.zeros(100_000), torch.ones(2000)])):
        data = CODEC.encode(x)
        assert torch.equal(CODEC.decode(data), x)


def test_dense_layout_when_positions_would_cost_more():
    """Rice positions cost ~1.5 bits at 60% density (1.3 bytes per value with fp16 values): dense takes over above ~95%."""
    assert _mode(CODEC.encode(sparse_vector(10_000, 0.6))) == 3
    x = sparse_vector(10_000, 1.0)
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


def block_message(x: torch.Tensor) -> bytes:
    """A mode-1 message (block positions and a codebook): valid on the wire, though `encode` now prefers Rice positions."""
    positions = torch.nonzero(x)[:, 0]
    body = sparse._block_positions(positions.numpy().astype("int64"), x.numel()) + sparse._codebook(x[positions].half())
    return struct.pack("<3sBQQ", b"SWS", 1, x.numel(), positions.numel()) + body


def test_decode_rejects_bad_messages_in_one_line():
    numel = 2**16 + 5000
    x = sparse_vector(numel, 0.01, [-1.0, -0.5, 0.5, 1.0])
    x[numel - 1] = 1.0       # the last non-zero sits in the last, partial block
    good = block_message(x)
    assert torch.equal(decode_checked(CODEC, good, numel), x)
    mode, _, nnz, blocks = _layout(good)
    assert mode == 1 and blocks == 2 and nnz % 4   # 2-bit indices, two blocks, a partly used last byte
    counts = HEADER
    offsets = HEADER + 4 * blocks
    codebook = offsets + 2 * nnz
    first_count = struct.unpack_from("<I", good, counts)[0]
    fp16_values = CODEC.encode(sparse_vector(numel, 0.01))
    assert _mode(fp16_values) == 3
    bad = {
        "short": good[:HEADER - 1],
        "magic": b"XYZ" + good[3:],
        "mode": _set(good, 3, "<B", 6),
        "count": _set(good, 4, "<Q", numel + 1),
        "huge count": _set(good, 4, "<Q", 2**40),
        "nnz above count": _set(good, 12, "<Q", numel + 1),
        "truncated": good[:-1],
        "extended": good + b"\x00",
        "counts do not add up": _set(good, counts, "<I", first_count + 1),
        "counts moved": _set(_set(good, counts, "<I", first_count - 1), counts + 4, "<I", nnz - first_count + 1),
        "duplicate position": _set(good, offsets + 2, "<H", struct.unpack_from("<H", good, offsets)[0]),
        "beyond the vector": _set(good, codebook - 2, "<H", 6000),     # the last block holds 5000 values
        "empty codebook": _set(good, codebook, "<H", 0),
        "codebook too large": _set(good, codebook, "<H", sparse.MAX_CODEBOOK + 1),
        "codebook of another size": _set(good, codebook, "<H", 5),   # 3 bits an index: the lengths do not match
        # 3 entries declared (the 4th dropped): 2-bit indices still, and the index 3 points past the codebook
        "index out of range": good[:codebook] + struct.pack("<H", 3) + good[codebook + 2 : codebook + 8] + good[codebook + 10:],
        "padding bits": good[:-1] + bytes([good[-1] | 0x01]),    # indices are packed most significant bit first
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
    """What a reducer's mean of n top-k parts costs: at most n x k non-zeros, fp16 values unless weights are equal."""
    n, numel = 4, 2**17
    parts = [sparse_vector(numel, 0.02, [-2.0, -1.0, 1.0, 2.0], seed=i) for i in range(n)]
    for weights in ([1.0] * n, [1.0, 2.0, 3.0, 5.0]):
        mean = sum(w * p for w, p in zip(weights, parts)) / sum(weights)
        data = CODEC.encode(mean)
        assert torch.equal(CODEC.decode(data), mean.half().float())
        nnz = int((mean != 0).sum())
        assert nnz <= n * int(0.02 * numel) and len(data) <= HEADER + 8 + 3 * nnz
    # equal weights leave few distinct values (a small codebook); unequal ones many more, within a codebook's 4096
    # (here 11-bit indices): ~1.3 bytes per non-zero
    distinct = int(torch.unique(mean[mean != 0]).numel())
    assert _mode(CODEC.encode(sum(parts) / n)) == 4 and _mode(data) == 4 and 16 < distinct <= sparse.MAX_CODEBOOK
    assert len(data) / numel == pytest.approx(0.098, abs=0.01)


def test_a_bundle_decodes_to_the_weighted_mean_smaller_than_the_mean_itself():
    """A reducer may send the n parts back with their weights: at 2% and 2-bit values 4 x 1.15 bytes per part's
    non-zero, against ~2.9 bytes per non-zero of the mean (under half) (fp16 values), and exact: float64 sums in a fixed order."""
    n, numel = 4, 2**17
    parts = [sparse_vector(numel, 0.02, [-2.0, -1.0, 1.0, 2.0], seed=i) * (0.3 + i) for i in range(n)]
    parts = [p.half().float() for p in parts]
    weights = [1.0, 2.0, 3.0, 5.0]
    messages = [CODEC.encode(p) for p in parts]
    data = CODEC.bundle(list(zip(weights, messages)), numel)
    assert _mode(data) == 5 and len(data) == HEADER + 8 * n + sum(map(len, messages))
    decoded = decode_checked(CODEC, data, numel)
    w = torch.tensor(weights, dtype=torch.float64)
    w32 = (w / w.sum()).float().double()     # the bundle carries float32 weights
    expected = sum(wi * p.double() for wi, p in zip(w32, parts)).float()
    assert torch.equal(decoded, expected)
    mean = sum(wi * p for wi, p in zip(weights, parts)) / sum(weights)
    assert (decoded - mean).abs().max() <= 1e-6 * mean.abs().max()
    assert len(data) < 0.8 * len(CODEC.encode(mean))
    # a dense part may ride in a bundle too
    dense = torch.randn(numel).half().float()
    mixed = CODEC.bundle([(1.0, messages[0]), (1.0, CODEC.encode(dense))], numel)
    assert torch.equal(CODEC.decode(mixed), ((parts[0].double() + dense.double()) * 0.5).float())


def test_decode_rejects_bad_rice_positions_and_bad_bundles():
    numel = 5000
    x = sparse_vector(numel, 0.02, [-1.0, -0.5, 0.5, 1.0])
    x[numel - 1] = 0.5
    good = CODEC.encode(x)
    _, _, nnz, _ = _layout(good)
    assert _mode(good) == 4 and nnz % 8
    r, head = struct.unpack_from("<BI", good, HEADER)
    unary = HEADER + 5
    tail = unary + head
    low_bytes = -(-nnz * r // 8)
    last_one = good[tail - 1]
    assert r > 0 and nnz * r % 8        # padding bits in the remainders' last byte
    messages = [CODEC.encode(sparse_vector(numel, 0.02, [-1.0, 1.0], seed=i)) for i in range(3)]
    bundle = CODEC.bundle([(1.0, m) for m in messages], numel)
    first_part = HEADER + 8 * 3
    bad = {
        "r too large": _set(good, HEADER, "<B", 25),
        "unary longer than the vector allows": _set(good, HEADER + 1, "<I", 10**6),
        "unary one byte short": _set(good, HEADER + 1, "<I", head - 1),
        "a position lost": good[:tail - 1] + bytes([last_one & (last_one - 1)]) + good[tail:],   # its one bit cleared
        "a zero byte of unary appended": _set(good[:tail] + b"\x00" + good[tail:], HEADER + 1, "<I", head + 1),
        "remainder padding": good[: tail + low_bytes - 1] + bytes([good[tail + low_bytes - 1] | 1]) + good[tail + low_bytes:],
        "bundle of no parts": _set(bundle, 12, "<Q", 0),
        "bundle of too many parts": _set(bundle, 12, "<Q", sparse.MAX_BUNDLE + 1),
        "bundle weight above one": _set(bundle, HEADER, "<f", 1.5),
        "bundle weight negative": _set(bundle, HEADER, "<f", -0.1),
        "bundle weight NaN": _set(bundle, HEADER, "<f", float("nan")),
        "bundle lengths do not add up": _set(bundle, HEADER + 12, "<I", len(messages[0]) + 1),
        "bundle truncated": bundle[:-1],
        "bundle in a bundle": CODEC.bundle([(1.0, bundle)], numel),
        "bundled part of another size": CODEC.bundle([(1.0, CODEC.encode(sparse_vector(numel + 1, 0.02)))], numel),
        "bundled part corrupt": bundle[:first_part] + b"XYZ" + bundle[first_part + 3:],
    }
    for what, data in bad.items():
        with pytest.raises(ProtocolError) as info:
            decode_checked(CODEC, data, numel)
        assert "\n" not in str(info.value) and str(info.value).startswith("sparse"), what
    # the last position pushed past the vector: the vector is one value shorter than the message's positions need
    with pytest.raises(ProtocolError, match="inside the vector"):
        CODEC.decode(_set(good, 4, "<Q", numel - 1))
