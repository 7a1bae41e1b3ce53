"""Reducers sign their results; two signed results that disagree prove that their reducer equivocated.

A reducer in a round that checks results signs one statement per part it reduced: (round id, part number, its
peer id, sha256 of the part's averaged bytes in chunk order). It sends the statement at the end of each member's
reply stream, after the part's last chunk; the member checks that the statement is its reducer's (the signer's
key is the peer id's identity, swarm.net.identity) and that the digest is that of the bytes it received, and
otherwise treats the part as lost. An honest reducer sends every member the same bytes, so one statement.

After the all-gather the members swap the statements they hold (swarm.averaging.result_exchange). Two valid
statements of one reducer for one part of one round with different digests are a proof (`contradiction`):
anyone can check it offline, and no member can make one up, because only the reducer's key signs statements
naming it. So a proof can go into the DHT and be verified by each peer before it bans (swarm.averaging.bans).

A statement also lists what the reducer reduced (`inputs`): the digest of the part's chunk layout (each chunk's codec
and length) and, per sender, its member index, how many of the part's chunks hold its values (a sender excluded
midway counts in a prefix of them) and the digest of its signed commitment (swarm.averaging.commitments). With it an
auditor can recompute the part from contributions that anyone holding them may hand over (swarm.averaging.audits):
the reducer signed which ones it used, and each sender signed its own. A robust reducer also signs each chunk's
CenteredClip radius (`radii`): with it an auditor checks the part even without some inputs (swarm.averaging.clip_check),
its own contribution, which the reducer alone holds, included.

Bounds: a packed statement is at most MAX_STATEMENT_BYTES; every field is checked for type and size before use.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import msgpack
from hivemind.utils.crypto import RSAPrivateKey

from swarm.net.identity import MAX_PEER_ID_CHARS, MAX_PUBLIC_KEY_BYTES, MAX_SIGNATURE_BYTES, signed_by

__all__ = ["ResultStatement", "Input", "sign_statement", "contradiction", "pack_inputs", "unpack_inputs", "unpack_radii",
           "MAX_STATEMENT_BYTES"]

_DOMAIN = b"swarm-result-v1\0"
MAX_INPUTS = 256              # senders one statement lists (robust groups are far smaller)
MAX_RADII = 16384             # chunks of one part (swarm.averaging.commitments.MAX_CHUNKS)
MAX_STATEMENT_BYTES = 4096 + MAX_INPUTS * 48 + MAX_RADII * 4
MAX_PART = 1 << 20            # part numbers on the wire (a group's members, or a backup's dead reducer's)


@dataclass(frozen=True)
class ResultStatement:
    round_id: bytes        # 16 bytes
    part: int              # the part's number on the wire
    reducer: str           # base58 peer id of the signer
    digest: bytes          # sha256 of the part's averaged bytes
    public_key: bytes      # the reducer's RSA key (OpenSSH bytes): its peer id must be `reducer`
    signature: bytes
    inputs: bytes = b""    # pack_inputs(...): what it reduced (empty: not listed, the part cannot be audited)

    def signed_bytes(self) -> bytes:
        fields = [self.round_id, self.part, self.reducer, self.digest] + ([self.inputs] if self.inputs else [])
        return _DOMAIN + msgpack.packb(fields)

    def valid(self) -> bool:
        """The reducer named signed it: the key is the reducer's identity and the signature checks."""
        return signed_by(self.reducer, self.public_key, self.signed_bytes(), self.signature)

    def pack(self) -> bytes:
        return msgpack.packb([self.round_id, self.part, self.reducer, self.digest, self.public_key, self.signature]
                             + ([self.inputs] if self.inputs else []))

    @classmethod
    def unpack(cls, data: object) -> "ResultStatement | None":
        """A statement from untrusted bytes; None unless every field has its type and bounds (not yet verified)."""
        if not isinstance(data, bytes) or len(data) > MAX_STATEMENT_BYTES:
            return None
        try:
            fields = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_STATEMENT_BYTES,
                                     max_str_len=MAX_PEER_ID_CHARS, max_array_len=7, max_map_len=0)
        except Exception:
            return None
        if not isinstance(fields, list) or len(fields) not in (6, 7):
            return None
        round_id, part, reducer, digest, public_key, signature = fields[:6]
        inputs = fields[6] if len(fields) == 7 else b""
        if not isinstance(inputs, bytes) or (len(fields) == 7 and not inputs):
            return None
        if not (isinstance(round_id, bytes) and len(round_id) == 16 and isinstance(part, int) and 0 <= part < MAX_PART
                and isinstance(reducer, str) and 0 < len(reducer) <= MAX_PEER_ID_CHARS and isinstance(digest, bytes)
                and len(digest) == 32 and isinstance(public_key, bytes) and 0 < len(public_key) <= MAX_PUBLIC_KEY_BYTES
                and isinstance(signature, bytes) and 0 < len(signature) <= MAX_SIGNATURE_BYTES):
            return None
        return cls(round_id, part, reducer, digest, public_key, signature, inputs)


@dataclass(frozen=True)
class Input:
    """One contribution a reducer reduced: member `sender`'s values are in the part's first `chunks` chunks, and its
    signed commitment packs to bytes whose sha256 is `commitment`."""
    sender: int
    chunks: int
    commitment: bytes


def pack_inputs(layout_digest: bytes, inputs: list[Input], radii: list[float] | None = None) -> bytes:
    """`radii`: each chunk's CenteredClip radius (a robust reducer's), as float32."""
    fields: list = [layout_digest, [[i.sender, i.chunks, i.commitment] for i in inputs]]
    if radii is not None:
        fields.append(struct.pack(f"<{len(radii)}f", *radii))
    return msgpack.packb(fields)


def _unpack_fields(data: bytes) -> list | None:
    try:
        fields = msgpack.unpackb(data, raw=False, max_bin_len=MAX_RADII * 4, max_str_len=0, max_array_len=max(MAX_INPUTS, 3),
                                 max_map_len=0)
    except Exception:
        return None
    if not (isinstance(fields, list) and len(fields) in (2, 3) and isinstance(fields[0], bytes) and len(fields[0]) == 32
            and isinstance(fields[1], list) and len(fields[1]) <= MAX_INPUTS):
        return None
    if len(fields) == 3 and not (isinstance(fields[2], bytes) and len(fields[2]) % 4 == 0 and 0 < len(fields[2]) <= MAX_RADII * 4):
        return None
    return fields


def unpack_radii(data: bytes) -> list[float] | None:
    """Each chunk's CenteredClip radius from a statement's `inputs`; None if it lists none (a plain mean's) or is
    malformed. Not checked against the layout's length here (the auditor does)."""
    fields = _unpack_fields(data)
    if fields is None or len(fields) < 3:
        return None
    return list(struct.unpack(f"<{len(fields[2]) // 4}f", fields[2]))


def unpack_inputs(data: bytes) -> tuple[bytes, list[Input]] | None:
    """(digest of the part's chunk layout, the inputs) from a statement's `inputs`; None unless well-formed: at most
    MAX_INPUTS, distinct senders in increasing order, positive chunk counts."""
    fields = _unpack_fields(data)
    if fields is None:
        return None
    inputs = []
    for entry in fields[1]:
        if not (isinstance(entry, list) and len(entry) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in entry[:2])
                and 0 <= entry[0] < MAX_INPUTS and 0 < entry[1] <= MAX_PART and isinstance(entry[2], bytes) and len(entry[2]) == 32):
            return None
        if inputs and entry[0] <= inputs[-1].sender:
            return None
        inputs.append(Input(entry[0], entry[1], entry[2]))
    return fields[0], inputs


def sign_statement(key: RSAPrivateKey, round_id: bytes, part: int, reducer: str, digest: bytes, inputs: bytes = b"") -> ResultStatement:
    """The reducer's statement that the averaged bytes of `part` hash to `digest` (`key`: its identity key), and that
    they reduce the contributions `inputs` lists (pack_inputs)."""
    unsigned = ResultStatement(round_id, part, reducer, digest, key.get_public_key().to_bytes(), b"", inputs)
    return ResultStatement(round_id, part, reducer, digest, unsigned.public_key, key.sign(unsigned.signed_bytes()), inputs)


def contradiction(a: ResultStatement, b: ResultStatement) -> bool:
    """Whether `a` and `b` prove their reducer equivocated: both valid, same reducer, round and part, other digests."""
    return (a.reducer == b.reducer and a.round_id == b.round_id and a.part == b.part and a.digest != b.digest
            and a.valid() and b.valid())
