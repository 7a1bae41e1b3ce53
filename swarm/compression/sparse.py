"""The "sparse" codec's wire format: a mostly-zero vector as positions plus values, exact for fp16 values.

It carries top-k messages (swarm.compression.topk) through the butterfly all-reduce: a member sends its top-k
part, and the reducer sends back either the weighted average of the members' parts (at most n x k non-zeros) or,
when smaller, the members' parts themselves with their weights (a bundle, mode 5), which every receiver averages
itself. Layouts; `encode` picks the smallest (deterministic):

    header   magic "SWS", mode (uint8), numel (uint64), nnz (uint64; mode 5: the number of parts)
    mode 0   block positions, then the values as fp16                          2 + 2 bytes per non-zero
    mode 1   block positions, then a codebook of c <= 4096 distinct fp16 values (c as uint16, ascending) and
             one index per non-zero in ceil(log2 c) bits, packed most significant bit first
                                                                               2 + 0.25 bytes per non-zero (c = 4)
    mode 2   every value as fp16 (dense: when the non-zeros are too many)       2 bytes per value
    mode 3   Rice positions, then fp16 values                                  ~1 + 2 bytes per non-zero at 2%
    mode 4   Rice positions, then the codebook and indices of mode 1           ~1 + 0.25 bytes per non-zero at 2%
             (a top-k part spanning 11 tensors, each with its own 4 levels: 44 values, 6-bit indices)
    mode 5   a bundle: m float32 weights, m uint32 lengths, then m messages of modes 0-4 of the same numel;
             it decodes to sum_j w_j x decode(message_j), computed in float64 in the bundle's order

    block positions: per 65536-value block its count of non-zeros (uint32), then each non-zero's offset in its
             block (uint16, ascending)
    Rice positions: the gaps g = p_i - p_(i-1) - 1 (p_(-1) = -1) in a Golomb-Rice code of parameter r: r (uint8),
             the unary stream's length in bytes U (uint32), U bytes of unary quotients (g >> r zeros then a one per
             position, most significant bit first, zero padding), then the r low bits of every gap packed the same
             way. About log2(1/density) + 2 bits per position, against 16 for block positions.
    packed bits (Rice remainders, codebook indices): each value's bits, most significant first, in one stream, zero
             padding to the byte

Values are rounded to fp16 (clamped to +-65504) and the zeros after rounding are dropped, so
`decode(encode(x)) == x` exactly whenever x's values are fp16 numbers: a top-k sender pre-rounds
what it sends, and its error feedback then knows exactly what the others received.

A bundle is exact too: every product of an fp16 value and a float32 weight is exact in float64 and the sums run in
the bundle's order, so every machine decodes the same float32 values bit for bit (no fused multiply-add can change
an exact product). What a bundle saves: the average of n top-k parts has up to n x k non-zeros, and with a codebook
of its values (the members' levels times their weights) it costs about what the n parts cost (to first order n x k x
(position bits + log2(4 x tensors)) bits both); measured on ALBERT tiny's shapes the average is 1-17% larger. A
bundle's average is also float32, where the average sent as such is rounded to fp16.

`decode` trusts nothing: a wrong magic or mode, an element count other than the expected one (or
above MAX_NUMEL), counts that do not add up, positions that are not strictly increasing or fall
outside the vector, a unary stream longer than the vector allows, a codebook index out of range, a wrong length
or non-zero padding bits, a bundle of more than MAX_BUNDLE parts, a nested bundle or a weight outside [0, 1] raise
ProtocolError in one line, before any buffer of the claimed size is allocated.
"""
from __future__ import annotations

import math
import struct
from typing import Sequence

import numpy as np
import torch

from swarm.errors import ProtocolError

__all__ = ["encode", "decode", "bundle", "nonzeros", "is_bundle", "top_values", "MAX_NUMEL", "MAX_BUNDLE", "BLOCK"]

BLOCK = 1 << 16
MAX_NUMEL = 1 << 26       # far above any chunk (engine.chunk_elements); a larger claimed count is hostile
MAX_BUNDLE = 1024         # parts in a bundle: far above any group (a larger claim is hostile)
MAX_RICE = 24             # Rice parameter: gaps of up to 2**24 need no unary bits beyond a few
_MAGIC = b"SWS"
_HEADER = struct.Struct("<3sBQQ")     # magic, mode, numel, nnz
_RICE = struct.Struct("<BI")          # r, unary bytes
_FP16_MAX = float(torch.finfo(torch.float16).max)
_BLOCK_MODES, _RICE_MODES = (0, 1), (3, 4)
_CODEBOOK_MODES = (1, 4)
_BUNDLE = 5
MAX_CODEBOOK = 4096       # distinct values a codebook holds (12-bit indices); more, and the values go as fp16


def _index_bits(codebook_size: int) -> int:
    return max(0, (codebook_size - 1).bit_length())


def _pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Each of `values` (non-negative, < 2**bits) in `bits` bits, most significant first, in one zero-padded stream."""
    if not bits or not values.size:
        return b""
    matrix = (values.astype(np.int64)[:, None] >> np.arange(bits - 1, -1, -1, dtype=np.int64)) & 1
    return np.packbits(matrix.astype(np.uint8).reshape(-1)).tobytes()


def _unpack_bits(body: memoryview, offset: int, count: int, bits: int, name: str) -> np.ndarray:
    """`count` values of `bits` bits from `_pack_bits`' stream at `offset` (the caller checked its length); the
    padding bits must be zero (one encoding per vector)."""
    if not bits or not count:
        return np.zeros(count, dtype=np.int64)
    stream = np.unpackbits(np.frombuffer(body, dtype=np.uint8, count=_packed_len(count, bits), offset=offset))
    if stream[count * bits:].any():
        raise ProtocolError(f"{name}: padding bits after the last value are not zero")
    wide = np.zeros((count, 32), dtype=np.uint8)    # right-aligned in a big-endian uint32
    wide[:, 32 - bits:] = stream[: count * bits].reshape(count, bits)
    return np.packbits(wide, axis=1).view(">u4").reshape(-1).astype(np.int64)


def _packed_len(count: int, bits: int) -> int:
    return -(-count * bits // 8)


# -- positions ----------------------------------------------------------------------------------------------

def _block_positions(positions: np.ndarray, numel: int) -> bytes:
    blocks = -(-numel // BLOCK)
    counts = np.bincount(positions // BLOCK, minlength=blocks).astype("<u4")
    return counts.tobytes() + (positions % BLOCK).astype("<u2").tobytes()


def _rice_size(gaps: np.ndarray, r: int) -> int:
    return _packed_len(int((gaps >> r).sum()) + gaps.size, 1) + _packed_len(gaps.size, r)


def _rice_positions(positions: np.ndarray) -> bytes:
    n = positions.size
    gaps = np.diff(positions, prepend=-1) - 1
    r = 0
    if n:
        guess = int(math.log2(max(1.0, float(gaps.mean()))))
        r = min(range(max(0, guess - 1), min(MAX_RICE, guess + 1) + 1), key=lambda b: (_rice_size(gaps, b), b))
    q = gaps >> r
    unary = np.zeros(int(q.sum()) + n, dtype=np.uint8)
    unary[np.cumsum(q + 1) - 1] = 1
    head = np.packbits(unary).tobytes()
    return _RICE.pack(r, len(head)) + head + _pack_bits(gaps & ((1 << r) - 1), r)


def _parse_block_positions(body: memoryview, offset: int, count: int, nnz: int, name: str) -> tuple[np.ndarray, int]:
    blocks = -(-count // BLOCK)
    if len(body) < offset + 4 * blocks + 2 * nnz:
        raise ProtocolError(f"{name}: {len(body)} bytes cannot hold {nnz} positions of {count} values")
    counts = np.frombuffer(body, dtype="<u4", count=blocks, offset=offset).astype(np.int64)
    if int(counts.sum()) != nnz:
        raise ProtocolError(f"{name}: block counts add up to {int(counts.sum())}, header says {nnz}")
    offsets = np.frombuffer(body, dtype="<u2", count=nnz, offset=offset + 4 * blocks).astype(np.int64)
    positions = np.repeat(np.arange(blocks, dtype=np.int64) * BLOCK, counts) + offsets
    if nnz and (int(positions[-1]) >= count or not bool((np.diff(positions) > 0).all())):
        raise ProtocolError(f"{name}: positions are not strictly increasing inside the vector")
    return positions, offset + 4 * blocks + 2 * nnz


def _parse_rice_positions(body: memoryview, offset: int, count: int, nnz: int, name: str) -> tuple[np.ndarray, int]:
    if len(body) < offset + _RICE.size:
        raise ProtocolError(f"{name}: {len(body)} bytes cannot hold Rice-coded positions")
    r, head = _RICE.unpack_from(body, offset)
    offset += _RICE.size
    tail = _packed_len(nnz, r)
    # one 1 per position and at most count >> r zeros (the quotients of gaps that add up to less than count):
    # bounded before anything is unpacked
    if r > MAX_RICE or head > _packed_len(nnz + (count >> r), 1) or len(body) < offset + head + tail:
        raise ProtocolError(f"{name}: Rice code (r={r}, {head} unary bytes) cannot hold {nnz} positions of {count} values")
    ones = np.flatnonzero(np.unpackbits(np.frombuffer(body, dtype=np.uint8, count=head, offset=offset)))
    if ones.size != nnz or head != (_packed_len(int(ones[-1]) + 1, 1) if nnz else 0):
        raise ProtocolError(f"{name}: the unary stream holds {ones.size} positions in {head} bytes, header says {nnz}")
    gaps = (np.diff(ones, prepend=-1) - 1).astype(np.int64) << r
    offset += head
    gaps |= _unpack_bits(body, offset, nnz, r, name)
    positions = np.cumsum(gaps + 1) - 1
    if nnz and int(positions[-1]) >= count:
        raise ProtocolError(f"{name}: positions are not strictly increasing inside the vector")
    return positions, offset + tail


# -- values -------------------------------------------------------------------------------------------------

def _codebook(values: torch.Tensor) -> bytes | None:
    codebook, inverse = torch.unique(values, sorted=True, return_inverse=True)
    if not 0 < codebook.numel() <= MAX_CODEBOOK:
        return None
    size = codebook.numel()
    return struct.pack("<H", size) + codebook.numpy().tobytes() + _pack_bits(inverse.numpy(), _index_bits(size))


def _parse_values(body: memoryview, offset: int, nnz: int, codebook: bool, name: str) -> np.ndarray:
    if not codebook:
        if len(body) != offset + 2 * nnz:
            raise ProtocolError(f"{name}: {len(body)} bytes, expected {offset + 2 * nnz} for {nnz} fp16 non-zeros")
        return np.frombuffer(body, dtype="<f2", count=nnz, offset=offset).astype(np.float32)
    size = struct.unpack_from("<H", body, offset)[0] if len(body) >= offset + 2 else 0
    bits = _index_bits(size)
    if not 1 <= size <= MAX_CODEBOOK or len(body) != offset + 2 + 2 * size + _packed_len(nnz, bits):
        raise ProtocolError(f"{name}: codebook of {size} entries and {len(body)} bytes do not fit {nnz} non-zeros")
    codebook_values = np.frombuffer(body, dtype="<f2", count=size, offset=offset + 2).astype(np.float32)
    idx = _unpack_bits(body, offset + 2 + 2 * size, nnz, bits, name)
    if nnz and int(idx.max()) >= size:
        raise ProtocolError(f"{name}: codebook index {int(idx.max())} out of range {size}")
    return codebook_values[idx]


# -- messages -----------------------------------------------------------------------------------------------

def encode(flat: torch.Tensor) -> bytes:
    """Encode a 1-D float32 CPU tensor (values rounded to fp16) in the smallest layout."""
    numel = flat.numel()
    half = flat.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16)
    positions = torch.nonzero(half, as_tuple=True)[0]
    nnz = positions.numel()
    dense_size = 2 * numel
    if 2 * nnz >= dense_size:   # positions alone would cost at least as much as the dense layout
        return _HEADER.pack(_MAGIC, 2, numel, numel) + half.numpy().tobytes()
    values = half[positions]
    pos = positions.numpy().astype(np.int64)
    # Rice positions and the codebook are built (a top-k message takes them); block positions and fp16 values are
    # only counted, and built if they win: the smallest (size, mode)
    rice, codebook = _rice_positions(pos), _codebook(values)
    position_sizes = {0: 4 * -(-numel // BLOCK) + 2 * nnz, 3: len(rice)}
    value_sizes = {0: 2 * nnz, **({1: len(codebook)} if codebook is not None else {})}
    size, mode = min((p + v, pm + vm) for pm, p in position_sizes.items() for vm, v in value_sizes.items())
    if dense_size <= size:
        return _HEADER.pack(_MAGIC, 2, numel, numel) + half.numpy().tobytes()
    body = (rice if mode in _RICE_MODES else _block_positions(pos, numel)) + \
        (codebook if mode in _CODEBOOK_MODES else values.numpy().tobytes())
    return _HEADER.pack(_MAGIC, mode, numel, nnz) + body


def bundle(parts: Sequence[tuple[float, bytes]], numel: int) -> bytes:
    """A mode-5 message: the messages `parts` (weight, bytes of `encode` of `numel` values), weighted by their
    weights over the weights' sum; it decodes to their weighted mean. The parts are not re-checked here: a reducer
    bundles what it already decoded (swarm.averaging.allreduce)."""
    if not 0 < len(parts) <= MAX_BUNDLE:
        raise ValueError(f"a bundle holds 1 to {MAX_BUNDLE} parts, got {len(parts)}")
    total = math.fsum(w for w, _ in parts)
    if not total > 0:
        raise ValueError("a bundle needs a positive total weight")
    weights = np.array([w / total for w, _ in parts], dtype="<f4")
    lengths = np.array([len(data) for _, data in parts], dtype="<u4")
    return b"".join([_HEADER.pack(_MAGIC, _BUNDLE, numel, len(parts)), weights.tobytes(), lengths.tobytes()]
                    + [bytes(data) for _, data in parts])


def nonzeros(data: bytes, name: str = "sparse") -> int:
    """How many non-zeros a message decodes to (its header's count; a dense or bundled message is decoded)."""
    mode, _, nnz = _header(data, name, None)
    if mode in (2, _BUNDLE):
        return int(torch.count_nonzero(decode(data, name)))
    return nnz


def is_bundle(data: bytes) -> bool:
    return len(data) >= _HEADER.size and data[:3] == _MAGIC and data[3] == _BUNDLE


def top_values(flat: torch.Tensor, keep: int) -> torch.Tensor:
    """`flat` with only its `keep` largest-magnitude values (the others zero; `flat` itself when it has no more).
    Among equal magnitudes at the threshold the lowest positions win, so equal inputs give equal outputs anywhere."""
    keep = max(0, int(keep))
    magnitudes = flat.abs()
    if int(torch.count_nonzero(magnitudes)) <= keep:
        return flat
    out = torch.zeros_like(flat)
    if keep:
        threshold = torch.kthvalue(magnitudes, magnitudes.numel() - keep + 1).values
        chosen = magnitudes > threshold
        ties = torch.nonzero(magnitudes == threshold, as_tuple=True)[0][: keep - int(chosen.sum())]
        chosen[ties] = True
        out[chosen] = flat[chosen]
    return out


def _header(data, name: str, numel: int | None) -> tuple[int, int, int]:
    if len(data) < _HEADER.size:
        raise ProtocolError(f"{name}: message of {len(data)} bytes is shorter than its header")
    magic, mode, count, nnz = _HEADER.unpack_from(data)
    if magic != _MAGIC or mode > _BUNDLE:
        raise ProtocolError(f"{name}: not a sparse message (magic {magic!r}, mode {mode})")
    if numel is not None and count != numel:
        raise ProtocolError(f"{name}: peer sent {count} values, expected {numel}")
    if count > MAX_NUMEL or (mode != _BUNDLE and nnz > count) or (mode == _BUNDLE and not 0 < nnz <= MAX_BUNDLE):
        raise ProtocolError(f"{name}: {nnz} {'parts' if mode == _BUNDLE else 'non-zeros'} of {count} values is out of bounds")
    return mode, count, nnz


def _nonzeros(body: memoryview, mode: int, count: int, nnz: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of a message of modes 0, 1, 3, 4 (its body after the header)."""
    parse = _parse_block_positions if mode in _BLOCK_MODES else _parse_rice_positions
    positions, offset = parse(body, 0, count, nnz, name)
    return positions, _parse_values(body, offset, nnz, mode in _CODEBOOK_MODES, name)


def _dense(body: memoryview, count: int, nnz: int, name: str) -> np.ndarray:
    if nnz != count or len(body) != 2 * count:
        raise ProtocolError(f"{name}: dense message of {len(body)} bytes does not hold {count} fp16 values")
    return np.frombuffer(body, dtype="<f2").astype(np.float32)


def decode(data: bytes, name: str = "sparse", numel: int | None = None) -> torch.Tensor:
    """Parse `encode`'s (or `bundle`'s) bytes into a fresh dense float32 tensor; ProtocolError on anything malformed."""
    mode, count, nnz = _header(data, name, numel)
    body = memoryview(data)[_HEADER.size:]
    if mode == 2:
        return torch.from_numpy(_dense(body, count, nnz, name))
    if mode == _BUNDLE:
        return torch.from_numpy(_decode_bundle(body, count, nnz, name))
    positions, values = _nonzeros(body, mode, count, nnz, name)
    out = np.zeros(count, dtype=np.float32)
    out[positions] = values
    return torch.from_numpy(out)


def _decode_bundle(body: memoryview, count: int, m: int, name: str) -> np.ndarray:
    if len(body) < 8 * m:
        raise ProtocolError(f"{name}: a bundle of {len(body)} bytes cannot list {m} parts")
    weights = np.frombuffer(body, dtype="<f4", count=m).astype(np.float64)
    lengths = np.frombuffer(body, dtype="<u4", count=m, offset=4 * m).astype(np.int64)
    if not bool(((weights >= 0) & (weights <= 1)).all()):
        raise ProtocolError(f"{name}: a bundle's weights must lie in [0, 1]")
    if 8 * m + int(lengths.sum()) != len(body):
        raise ProtocolError(f"{name}: a bundle's parts add up to {8 * m + int(lengths.sum())} bytes, it has {len(body)}")
    total = np.zeros(count, dtype=np.float64)
    offset = 8 * m
    for weight, length in zip(weights.tolist(), lengths.tolist()):
        part = body[offset : offset + length]
        offset += length
        mode, _, nnz = _header(part, f"{name} (bundled part)", count)
        if mode == _BUNDLE:
            raise ProtocolError(f"{name}: a bundle inside a bundle")
        if mode == 2:
            total += weight * _dense(part[_HEADER.size:], count, nnz, name).astype(np.float64)
        else:
            positions, values = _nonzeros(part[_HEADER.size:], mode, count, nnz, name)
            total[positions] += weight * values.astype(np.float64)
    return total.astype(np.float32)
