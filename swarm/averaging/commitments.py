"""Senders commit to their contributions before sending them: what makes a reducer's work checkable by others.

In a round that checks results (robust mode), a member encodes all its values for part j before the first chunk
goes out and signs a commitment: (round id, part, its peer id, its weight, sha256 of each chunk's bytes). The
commitment rides on the stream's first message. The reducer checks it once (the signer's key is the sender's
identity, the round, the part, the weight the group agreed, one digest per chunk of the part) and then every chunk
against its digest as it arrives: a chunk that differs is bad data, and the sender is excluded like any sender of
bad data (swarm.averaging.allreduce).

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
from hivemind.utils.crypto import RSAPrivateKey, RSAPublicKey

from swarm.net.identity import MAX_PUBLIC_KEY_BYTES, peer_id_of

__all__ = ["Commitment", "commit", "MAX_CHUNKS", "MAX_COMMITMENT_BYTES"]

_DOMAIN = b"swarm-contribution-v1\0"
MAX_CHUNKS = 16384                     # chunks of one part (2**17 values each: a part of 2**31 values)
MAX_PEER_ID_CHARS = 128
MAX_SIGNATURE_BYTES = 1024             # base64 of an RSA signature: 344 bytes at 2048 bits
MAX_PART = 1 << 20
MAX_COMMITMENT_BYTES = 64 + MAX_PEER_ID_CHARS + MAX_CHUNKS * 34 + MAX_PUBLIC_KEY_BYTES + MAX_SIGNATURE_BYTES


@dataclass(frozen=True)
class Commitment:
    round_id: bytes               # 16 bytes
    part: int                     # the part's number on the wire
    sender: str                   # base58 peer id of the signer
    weight: float                 # the sender's weight in the round
    chunks: tuple[bytes, ...]     # sha256 of each chunk's encoded bytes, in the part's order
    public_key: bytes             # the sender's RSA key (OpenSSH bytes): its peer id must be `sender`
    signature: bytes

    def signed_bytes(self) -> bytes:
        return _DOMAIN + msgpack.packb([self.round_id, self.part, self.sender, self.weight, list(self.chunks)])

    def valid(self) -> bool:
        """The sender named signed it: the key is the sender's identity and the signature checks."""
        if peer_id_of(self.public_key) != self.sender:
            return False
        try:
            return RSAPublicKey.from_bytes(self.public_key).verify(self.signed_bytes(), self.signature)
        except Exception:   # a key the parser refuses: not the sender's
            return False

    def pack(self) -> bytes:
        return msgpack.packb([self.round_id, self.part, self.sender, self.weight, list(self.chunks), self.public_key, self.signature])

    def digest(self) -> bytes:
        """What a reducer's statement lists for this contribution (sha256 of the packed commitment)."""
        return hashlib.sha256(self.pack()).digest()

    def holds(self, k: int, data: bytes) -> bool:
        """Whether `data` is the chunk k this commitment signed."""
        return 0 <= k < len(self.chunks) and hashlib.sha256(data).digest() == self.chunks[k]

    @classmethod
    def unpack(cls, data: object) -> "Commitment | None":
        """A commitment from untrusted bytes; None unless every field has its type and bounds (not yet verified)."""
        if not isinstance(data, bytes) or len(data) > MAX_COMMITMENT_BYTES:
            return None
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=max(MAX_PUBLIC_KEY_BYTES, MAX_SIGNATURE_BYTES),
                                     max_str_len=MAX_PEER_ID_CHARS, max_array_len=max(7, MAX_CHUNKS), max_map_len=0)
        except Exception:
            return None
        if not isinstance(fields, list) or len(fields) != 7:
            return None
        round_id, part, sender, weight, chunks, public_key, signature = fields
        if not (isinstance(round_id, bytes) and len(round_id) == 16 and isinstance(part, int) and 0 <= part < MAX_PART
                and isinstance(sender, str) and 0 < len(sender) <= MAX_PEER_ID_CHARS
                and isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight)
                and isinstance(chunks, list) and 0 < len(chunks) <= MAX_CHUNKS
                and all(isinstance(c, bytes) and len(c) == 32 for c in chunks)
                and isinstance(public_key, bytes) and 0 < len(public_key) <= MAX_PUBLIC_KEY_BYTES
                and isinstance(signature, bytes) and 0 < len(signature) <= MAX_SIGNATURE_BYTES):
            return None
        return cls(round_id, part, sender, float(weight), tuple(chunks), public_key, signature)


def commit(key: RSAPrivateKey, round_id: bytes, part: int, sender: str, weight: float, encoded: Sequence[bytes]) -> Commitment:
    """The sender's signed commitment to the encoded chunks of its contribution to `part` (`key`: its identity key)."""
    unsigned = Commitment(round_id, part, sender, float(weight), tuple(hashlib.sha256(d).digest() for d in encoded),
                          key.get_public_key().to_bytes(), b"")
    return Commitment(unsigned.round_id, part, sender, unsigned.weight, unsigned.chunks, unsigned.public_key,
                      key.sign(unsigned.signed_bytes()))
