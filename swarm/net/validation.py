"""A DHT record validator that remembers its verdicts: the same signed record is checked once, not once per copy.

A progress read returns every peer's record from each replica that answers (about five), and hivemind checks
every copy's RSA signature and schema (~60-110 us each here): at 64 peers one read verified ~320 signatures, and
64 peers reading every second or two spent over a core on it. A record's bytes (key, subkey, value with its
signature, expiration) decide the verdict alone, so a verdict is cached under their digest: the other replicas'
copies, and the next reads until the owner republishes, cost a hash. Bounded (least recently used out), and
cleared when the validator set changes.
"""
from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from typing import Iterable

from hivemind.dht.validation import CompositeValidator, DHTRecord, RecordValidatorBase

MAX_VERDICTS = 8192   # about 1 MB; a swarm of 1024 peers' progress records several times over


def record_digest(record: DHTRecord) -> bytes:
    h = hashlib.blake2b(digest_size=20)
    for part in (record.key, record.subkey or b"", record.value):
        h.update(struct.pack("<Q", len(part)))   # lengths first: no two splits of the same bytes collide
        h.update(part)
    h.update(struct.pack("<d", record.expiration_time))   # signed with the value: a new expiration is a new record
    return h.digest()


class CachedValidator(CompositeValidator):
    """hivemind's CompositeValidator whose `validate` verdicts are cached by the record's digest."""

    def __init__(self, validators: Iterable[RecordValidatorBase] = (), max_verdicts: int = MAX_VERDICTS):
        self._verdicts: OrderedDict[bytes, bool] = OrderedDict()
        self.max_verdicts = max_verdicts
        self.hits = self.misses = 0
        super().__init__(validators)

    def extend(self, validators: Iterable[RecordValidatorBase]) -> None:
        super().extend(validators)
        self._verdicts.clear()   # a new validator may refuse what the old set accepted

    def validate(self, record: DHTRecord) -> bool:
        digest = record_digest(record)
        verdict = self._verdicts.get(digest)
        if verdict is not None:
            self._verdicts.move_to_end(digest)
            self.hits += 1
            return verdict
        self.misses += 1
        verdict = super().validate(record)
        self._verdicts[digest] = verdict
        if len(self._verdicts) > self.max_verdicts:
            self._verdicts.popitem(last=False)
        return verdict
