"""DHT record schemas and the validator that guards this run's keys."""
from __future__ import annotations

import time

import msgpack
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord

from swarm.net import records

pytestmark = pytest.mark.timeout(30)


def progress(**kw):
    base = dict(peer_id="peerA", epoch=3, samples=10, samples_per_second=2.5, role="trainer",
                upload_bps=1e6, download_bps=1e6, time=time.time())
    base.update(kw)
    return base


def record(key: str, value, subkey=b"[owner:abc]") -> DHTRecord:
    return DHTRecord(key=DHTID.generate(source=key).to_bytes(), subkey=subkey, value=msgpack.packb(value), expiration_time=time.time() + 10)


def test_valid_progress_record_passes():
    v = records.SchemaValidator("run")
    assert v.validate(record(records.progress_key("run"), progress()))


@pytest.mark.parametrize("bad", [
    {"epoch": -1}, {"epoch": "3"}, {"role": "admin"}, {"samples_per_second": -1.0}, {"peer_id": ""}, {"samples": None},
])
def test_malformed_progress_record_is_rejected(bad):
    v = records.SchemaValidator("run")
    assert not v.validate(record(records.progress_key("run"), progress(**bad)))


def test_garbage_bytes_and_unsigned_records_are_rejected():
    v = records.SchemaValidator("run")
    key = DHTID.generate(source=records.progress_key("run")).to_bytes()
    assert not v.validate(DHTRecord(key=key, subkey=b"[owner:x]", value=b"\xc1\xff", expiration_time=time.time() + 5))
    assert not v.validate(record(records.progress_key("run"), progress(), subkey=b"nobody"))


def test_other_keys_are_left_to_other_validators():
    v = records.SchemaValidator("run")
    assert v.validate(record("some_other_key", {"anything": 1}))
    # another run's progress key is not this validator's business either
    assert v.validate(record(records.progress_key("other-run"), {"x": 1}))


def test_records_of_newer_peers_with_unknown_fields_still_validate():
    v = records.SchemaValidator("run")
    assert v.validate(record(records.progress_key("run"), progress(field_from_the_future=[1, 2])))
    assert records.decode(records.ProgressRecord, progress(field_from_the_future=1)) is not None


def test_decode_drops_malformed_values():
    assert records.decode(records.ProgressRecord, progress()) is not None
    assert records.decode(records.ProgressRecord, {"epoch": 1}) is None
    assert records.decode(records.ProgressRecord, "garbage") is None


def test_config_record_round_trip():
    r = records.ConfigRecord(run_id="r", task="albert", target_batch_size=256, fingerprint={"tokenizer": "ab"},
                             hyperparameters={"lr": 0.1, "mode": "sync"}, created_at=1.0)
    assert records.ConfigRecord.model_validate(records.encode(r)) == r
