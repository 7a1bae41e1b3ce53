"""swarm.net.validation: a record's verdict is computed once and reused for its identical copies, never for a copy
that differs in any byte; the cache is bounded and forgets everything when the validator set changes."""
from __future__ import annotations

import dataclasses
import time

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord, RecordValidatorBase
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.serializer import MSGPackSerializer

from swarm.net import records
from swarm.net.records import ProgressRecord
from swarm.net.validation import CachedValidator

pytestmark = pytest.mark.timeout(60)

RUN = "run"


class Counting(RecordValidatorBase):
    """Accepts everything, counting the records it was asked about."""

    def __init__(self):
        self.calls = 0

    def validate(self, record: DHTRecord) -> bool:
        self.calls += 1
        return True


def _signed(signer: RSASignatureValidator, validator: CompositeValidator, samples: int = 10, expires: float | None = None) -> DHTRecord:
    record = ProgressRecord(peer_id="p" * 46, epoch=3, samples=samples, samples_per_second=1.0, role="trainer",
                            upload_bps=1e6, download_bps=1e6, time=time.time(), training=True)
    key = DHTID.generate(source=records.progress_key(RUN)).to_bytes()
    raw = DHTRecord(key, signer.local_public_key, MSGPackSerializer.dumps(records.encode(record)), expires or time.time() + 10)
    return dataclasses.replace(raw, value=validator.sign_value(raw))


def test_verdicts_match_the_plain_validator_and_no_altered_copy_borrows_one():
    signer = RSASignatureValidator(RSAPrivateKey())
    plain = CompositeValidator([signer, records.SchemaValidator(RUN)])
    cached = CachedValidator([signer, records.SchemaValidator(RUN)])
    good = _signed(signer, plain)
    assert cached.validate(good) and cached.validate(good) and plain.validate(good)
    flipped = bytearray(good.value)
    flipped[len(flipped) // 3] ^= 1                                     # a byte of the signed value
    altered = [
        dataclasses.replace(good, value=bytes(flipped)),
        dataclasses.replace(good, expiration_time=good.expiration_time + 1),   # the expiration is signed too
        dataclasses.replace(good, subkey=RSASignatureValidator(RSAPrivateKey()).local_public_key),  # another owner
        dataclasses.replace(good, value=good.value + b"x"),
    ]
    for record in altered:
        assert plain.validate(record) is False
        assert cached.validate(record) is False, record
    assert cached.validate(good)                                        # the original still passes
    other = _signed(signer, plain, samples=11)
    assert cached.validate(other) is plain.validate(other) is True


def test_identical_copies_are_checked_once():
    counting = Counting()
    cached = CachedValidator([counting])
    record = DHTRecord(b"k" * 20, b"s", b"v", 123.0)
    for _ in range(5):                                                  # five replicas' answers, then the next read
        assert cached.validate(dataclasses.replace(record))
    assert counting.calls == 1 and cached.hits == 4
    assert cached.validate(dataclasses.replace(record, value=b"w"))
    assert counting.calls == 2


def test_the_cache_is_bounded_and_cleared_when_validators_change():
    counting = Counting()
    cached = CachedValidator([counting], max_verdicts=3)
    for i in range(10):
        cached.validate(DHTRecord(b"k", b"s", str(i).encode(), 1.0))
    assert len(cached._verdicts) == 3
    cached.validate(DHTRecord(b"k", b"s", b"9", 1.0))
    assert counting.calls == 10                                          # the newest is still remembered

    class RefuseAll(RecordValidatorBase):
        def validate(self, record: DHTRecord) -> bool:
            return False

    cached.extend([RefuseAll()])
    assert cached.validate(DHTRecord(b"k", b"s", b"9", 1.0)) is False    # not the old verdict
