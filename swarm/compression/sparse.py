"""The "sparse" codec's wire format: a mostly-zero vector as positions plus values, exact for fp16 values.

It carries top-k messages (swarm.compression.topk) through the butterfly all-reduce: a member sends its top-k
part, the reducer averages the members' sparse parts into a dense part (at most n x k non-zeros)
and sends that back with the same codec. Three layouts; `encode` picks the smallest (deterministic):

    header   magic "SWS", mode (uint8), numel (uint64), nnz (uint64)
    mode 0   per 65536-value block: its count of non-zeros (uint32); then the non-zeros' offsets in
             their block (uint16, ascending) and their values (fp16)            2 + 2 bytes per non-zero
    mode 1   counts and offsets as in mode 0, then a codebook of c <= 16 fp16 values (c as uint8) and
             one index per non-zero, packed 2 bits (c <= 4) or 4 bits           2 + 0.25 or 0.5 bytes per non-zero
    mode 2   every value as fp16 (dense: when the non-zeros are too many)       2 bytes per value

Values are rounded to fp16 (clamped to +-65504) and the zeros after rounding are dropped, so
`decode(encode(x)) == x` exactly whenever x's values are fp16 numbers: a top-k sender pre-rounds
what it sends, and its error feedback then knows exactly what the others received.

`decode` trusts nothing: a wrong magic or mode, an element count other than the expected one (or
above MAX_NUMEL), counts that do not add up, positions that are not strictly increasing or fall
outside the vector, a codebook index out of range, a wrong length or non-zero padding bits raise
ProtocolError in one line, before any buffer of the claimed size is allocated.
"""
from __future__ import annotations

import struct

import numpy as np
import torch

from swarm.compression.blockquant import pack_indices, unpack_indices
from swarm.errors import ProtocolError

__all__ = ["encode", "decode", "MAX_NUMEL", "BLOCK"]

BLOCK = 1 << 16
MAX_NUMEL = 1 << 26       # far above any chunk (engine.chunk_elements); a larger claimed count is hostile
_MAGIC = b"SWS"
_HEADER = struct.Struct("<3sBQQ")     # magic, mode, numel, nnz
_FP16_MAX = float(torch.finfo(torch.float16).max)


def _index_bits(codebook_size: int) -> int:
    return 2 if codebook_size <= 4 else 4


def _packed_len(count: int, bits: int) -> int:
    return -(-count * bits // 8)


def encode(flat: torch.Tensor) -> bytes:
    """Encode a 1-D float32 CPU tensor (values rounded to fp16) in the smallest of the three layouts."""
    numel = flat.numel()
    half = flat.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16)
    positions = torch.nonzero(half, as_tuple=True)[0]
    nnz = positions.numel()
    blocks = -(-numel // BLOCK)
    values = half[positions]
    codebook, inverse = torch.unique(values, sorted=True, return_inverse=True)
    sparse_size = 4 * blocks + 2 * nnz
    if 0 < codebook.numel() <= 16:
        bits = _index_bits(codebook.numel())
        mode, size = 1, sparse_size + 1 + 2 * codebook.numel() + _packed_len(nnz, bits)
    else:
        mode, size = 0, sparse_size + 2 * nnz
    if 2 * numel <= size:
        return _HEADER.pack(_MAGIC, 2, numel, numel) + half.numpy().tobytes()
    counts = np.bincount((positions // BLOCK).numpy(), minlength=blocks).astype("<u4")
    offsets = (positions % BLOCK).numpy().astype("<u2")
    out = [_HEADER.pack(_MAGIC, mode, numel, nnz), counts.tobytes(), offsets.tobytes()]
    if mode == 0:
        out.append(values.numpy().tobytes())
    else:
        out += [bytes([codebook.numel()]), codebook.numpy().tobytes(), pack_indices(inverse.numpy().astype(np.uint8), _index_bits(codebook.numel()))]
    return b"".join(out)


def decode(data: bytes, name: str = "sparse", numel: int | None = None) -> torch.Tensor:
    """Parse `encode`'s bytes into a fresh dense float32 tensor; ProtocolError on anything malformed."""
    if len(data) < _HEADER.size:
        raise ProtocolError(f"{name}: message of {len(data)} bytes is shorter than its header")
    magic, mode, count, nnz = _HEADER.unpack_from(data)
    if magic != _MAGIC or mode not in (0, 1, 2):
        raise ProtocolError(f"{name}: not a sparse message (magic {magic!r}, mode {mode})")
    if numel is not None and count != numel:
        raise ProtocolError(f"{name}: peer sent {count} values, expected {numel}")
    if count > MAX_NUMEL or nnz > count:
        raise ProtocolError(f"{name}: {nnz} non-zeros of {count} values is out of bounds")
    body = memoryview(data)[_HEADER.size:]
    if mode == 2:
        if nnz != count or len(body) != 2 * count:
            raise ProtocolError(f"{name}: dense message of {len(body)} bytes does not hold {count} fp16 values")
        return torch.from_numpy(np.frombuffer(body, dtype="<f2").astype(np.float32))
    blocks = -(-count // BLOCK)
    fixed = 4 * blocks + 2 * nnz
    if len(body) < fixed + (1 if mode == 1 else 0):
        raise ProtocolError(f"{name}: {len(body)} bytes cannot hold {nnz} positions of {count} values")
    if mode == 0:
        if len(body) != fixed + 2 * nnz:
            raise ProtocolError(f"{name}: {len(body)} bytes, expected {fixed + 2 * nnz} for {nnz} fp16 non-zeros")
        values = np.frombuffer(body, dtype="<f2", count=nnz, offset=fixed).astype(np.float32)
    else:
        size = body[fixed]
        bits = _index_bits(size)
        expected = fixed + 1 + 2 * size + _packed_len(nnz, bits)
        if not 1 <= size <= 16 or len(body) != expected:
            raise ProtocolError(f"{name}: codebook of {size} entries and {len(body)} bytes do not fit {nnz} non-zeros")
        codebook = np.frombuffer(body, dtype="<f2", count=size, offset=fixed + 1).astype(np.float32)
        idx = unpack_indices(body[fixed + 1 + 2 * size:], bits, nnz, name)
        if nnz and int(idx.max()) >= size:
            raise ProtocolError(f"{name}: codebook index {int(idx.max())} out of range {size}")
        values = codebook[idx]
    counts = np.frombuffer(body, dtype="<u4", count=blocks).astype(np.int64)
    if int(counts.sum()) != nnz:
        raise ProtocolError(f"{name}: block counts add up to {int(counts.sum())}, header says {nnz}")
    offsets = np.frombuffer(body, dtype="<u2", count=nnz, offset=4 * blocks).astype(np.int64)
    positions = np.repeat(np.arange(blocks, dtype=np.int64) * BLOCK, counts) + offsets
    if nnz and (int(positions[-1]) >= count or not bool((np.diff(positions) > 0).all())):
        raise ProtocolError(f"{name}: positions are not strictly increasing inside the vector")
    out = torch.zeros(count, dtype=torch.float32)
    out[torch.from_numpy(positions)] = torch.from_numpy(values)
    return out

