"""Senders commit to their contributions before sending them: what makes a reducer's work checkable by others.

In a round that checks results (robust mode), a member encodes all its values before the first chunk goes out and
signs one commitment: (round id, its peer id, its weight, and for each part the sha256 of each chunk's bytes). One
signature per member and round, not one per part: an RSA signature costs ~1.5 ms, and per part they made robust
rounds of 1-4 MB 50-60% slower than the plain mean (benchmarks/README.md). The commitment rides on the first message
of each of the member's streams. The reducer checks it once (the signer's key is the sender's identity, the round,
the weight the group agreed, one digest per chunk of its part) and then every chunk against its digest as it
arrives: a chunk that differs is bad data, and the sender is excluded like any sender of bad data
(swarm.averaging.allreduce).

The reducer lists the commitments it reduced in its signed result statement (swarm.averaging.result_statements,
`inputs`), so that an auditor (swarm.averaging.audits) can take each contribution from whoever holds it, check its
bytes against a commitment that its own sender signed, and recompute the part. Why per-chunk digests and not one:
the reducer adds a chunk to its reduction as it arrives, so it must be able to refuse a chunk before using it; one
digest over the whole contribution would only show a mismatch after the part had been averaged with it.

What it rules out: a reducer cannot make up or alter a contribution (it cannot sign in the sender's name), and a
sender cannot show an auditor other bytes than it sent the reducer (the reducer checked them against the same
signed digests). Bounds: every field is checked for type and size before use (MAX_COMMITMENT_BYTES, MAX_CHUNKS).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Sequence

import msgpack
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.result_statements import MAX_PART
from swarm.net.identity import MAX_PEER_ID_CHARS, MAX_PUBLIC_KEY_BYTES, MAX_SIGNATURE_BYTES, signed_by

__all__ = ["Commitment", "commit", "MAX_CHUNKS", "MAX_COMMITMENT_BYTES"]

_DOMAIN = b"swarm-contribution-v1\0"
MAX_CHUNKS = 16384                     # chunks of one vector (2**17 values each: 2**31 values)
MAX_PARTS = 1024                       # parts of one round (a group's members)
MAX_COMMITMENT_BYTES = 64 + MAX_PEER_ID_CHARS + MAX_PARTS * 8 + MAX_CHUNKS * 34 + MAX_PUBLIC_KEY_BYTES + MAX_SIGNATURE_BYTES


@dataclass(frozen=True)
class Commitment:
    round_id: bytes               # 16 bytes
    sender: str                   # base58 peer id of the signer
    weight: float                 # the sender's weight in the round
    parts: tuple[tuple[int, tuple[bytes, ...]], ...]   # (part number on the wire, sha256 of each of its chunks), by part
    public_key: bytes             # the sender's RSA key (OpenSSH bytes): its peer id must be `sender`
    signature: bytes

    def _fields(self) -> list:
        return [self.round_id, self.sender, self.weight, [[part, list(chunks)] for part, chunks in self.parts]]

    def signed_bytes(self) -> bytes:
        return _DOMAIN + msgpack.packb(self._fields())

    def chunks_of(self, part: int) -> tuple[bytes, ...] | None:
        """The digests of my chunks of `part`, None if I committed to none."""
        return next((chunks for p, chunks in self.parts if p == part), None)

    def valid(self) -> bool:
        """The sender named signed it: the key is the sender's identity and the signature checks."""
        return signed_by(self.sender, self.public_key, self.signed_bytes(), self.signature)

    def pack(self) -> bytes:
        return msgpack.packb(self._fields() + [self.public_key, self.signature])

    def digest(self) -> bytes:
        """What a reducer's statement lists for this contribution (sha256 of the packed commitment)."""
        return hashlib.sha256(self.pack()).digest()

    def holds(self, part: int, k: int, data: bytes) -> bool:
        """Whether `data` is the chunk k of `part` this commitment signed."""
        chunks = self.chunks_of(part)
        return chunks is not None and 0 <= k < len(chunks) and hashlib.sha256(data).digest() == chunks[k]

    @classmethod
    def unpack(cls, data: object) -> "Commitment | None":
        """A commitment from untrusted bytes; None unless every field has its type and bounds (not yet verified)."""
        if not isinstance(data, bytes) or len(data) > MAX_COMMITMENT_BYTES:
            return None
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max(MAX_PUBLIC_KEY_BYTES, MAX_SIGNATURE_BYTES),
                                     max_str_len=MAX_PEER_ID_CHARS, max_array_len=max(6, MAX_CHUNKS, MAX_PARTS), max_map_len=0)
        except Exception:
            return None
        if not isinstance(fields, list) or len(fields) != 6:
            return None
        round_id, sender, weight, parts, public_key, signature = fields
        if not (isinstance(round_id, bytes) and len(round_id) == 16
                and isinstance(sender, str) and 0 < len(sender) <= MAX_PEER_ID_CHARS
                and isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
                and isinstance(parts, list) and 0 < len(parts) <= MAX_PARTS
                and isinstance(public_key, bytes) and 0 < len(public_key) <= MAX_PUBLIC_KEY_BYTES
                and isinstance(signature, bytes) and 0 < len(signature) <= MAX_SIGNATURE_BYTES):
            return None
        checked, total = [], 0
        for entry in parts:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], int) and not isinstance(entry[0], bool)
                    and 0 <= entry[0] < MAX_PART and isinstance(entry[1], list) and entry[1]
                    and all(isinstance(c, bytes) and len(c) == 32 for c in entry[1])):
                return None
            if checked and entry[0] <= checked[-1][0]:   # one entry per part, in order
                return None
            total += len(entry[1])
            checked.append((entry[0], tuple(entry[1])))
        if total > MAX_CHUNKS:
            return None
        return cls(round_id, sender, float(weight), tuple(checked), public_key, signature)


def commit(key: RSAPrivateKey, round_id: bytes, sender: str, weight: float, encoded: dict[int, Sequence[bytes]]) -> Commitment:
    """The sender's signed commitment to the encoded chunks of its contributions, part number -> chunks (`key`: its
    identity key)."""
    parts = tuple((part, tuple(hashlib.sha256(d).digest() for d in chunks)) for part, chunks in sorted(encoded.items()) if chunks)
    unsigned = Commitment(round_id, sender, float(weight), parts, key.get_public_key().to_bytes(), b"")
    return Commitment(round_id, sender, unsigned.weight, parts, unsigned.public_key, key.sign(unsigned.signed_bytes()))
