"""The claim ceiling (swarm.averaging.claims): a commitment signed with more samples than it is a proof every peer
checks itself; anything else proves nothing; a ban record carries such proofs to peers outside the round."""
from __future__ import annotations

import pytest
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.bans import BanList
from swarm.averaging.claims import MAX_CLAIM_BATCHES, capped, claim_ceiling, overclaim
from swarm.averaging.commitments import Commitment, commit
from swarm.net import records
from swarm.net.identity import peer_id_of

pytestmark = pytest.mark.timeout(60)

KEY = RSAPrivateKey()
CLAIMANT = peer_id_of(KEY.get_public_key().to_bytes())
ROUND = bytes(range(16))
TARGET = 256


def claim(weight: float, key: RSAPrivateKey = KEY, sender: str = CLAIMANT) -> bytes:
    return commit(key, ROUND, sender, weight, {0: [b"a", b"b"], 1: [b"c"]}).pack()


def test_an_honest_member_never_claims_more_than_the_ceiling():
    assert claim_ceiling(TARGET) == MAX_CLAIM_BATCHES * TARGET
    assert capped(100.0, TARGET) == 100.0
    assert capped(1e9, TARGET) == claim_ceiling(TARGET)


def test_a_signed_claim_over_the_ceiling_proves_its_sender_lied():
    assert overclaim(claim(claim_ceiling(TARGET) + 1), TARGET) == CLAIMANT
    assert overclaim(claim(64_000.0), TARGET) == CLAIMANT
    assert overclaim(claim(claim_ceiling(TARGET)), TARGET) is None          # at the ceiling: what an honest peer may claim
    assert overclaim(claim(64_000.0), 100_000) is None                     # another run's ceiling


def test_a_claim_that_its_named_sender_did_not_sign_proves_nothing():
    other = RSAPrivateKey()
    assert overclaim(claim(64_000.0, key=other, sender=CLAIMANT), TARGET) is None     # signed by another key in its name
    honest = Commitment.unpack(claim(10.0))
    inflated = Commitment(honest.round_id, honest.sender, 64_000.0, honest.parts, honest.public_key, honest.signature)
    assert overclaim(inflated.pack(), TARGET) is None                                 # the weight changed after signing


@pytest.mark.parametrize("data", [b"", b"\x93\x01\x02\x03", "text", None, b"\x00" * (records.MAX_CLAIM_BYTES + 1)])
def test_malformed_or_oversized_claims_prove_nothing(data):
    assert overclaim(data, TARGET) is None  # type: ignore[arg-type]
    assert BanList(TARGET).consider_claim(data) is None  # type: ignore[arg-type]


def test_a_claim_bans_its_sender_here_and_in_every_peer_that_reads_the_record():
    mine = BanList(TARGET)
    assert mine.claim([claim(10.0), claim(64_000.0)]) == [CLAIMANT]
    assert mine.banned == {CLAIMANT}
    record = records.BanRecord.model_validate(mine.record().model_dump())   # what the DHT carries, validated again
    assert len(record.claims) == 1
    other = BanList(TARGET)
    for packed in record.claims:
        other.consider_claim(packed)
    assert other.banned == {CLAIMANT}
    assert BanList(None).consider_claim(record.claims[0]) is None   # a peer that does not know the run's target bans nobody


def test_a_ban_record_bounds_its_claims():
    too_many = [b"x"] * (records.MAX_CLAIMS + 1)
    with pytest.raises(Exception):
        records.BanRecord(proofs=[], claims=too_many, time=1.0)
    with pytest.raises(Exception):
        records.BanRecord(proofs=[], claims=[b"x" * (records.MAX_CLAIM_BYTES + 1)], time=1.0)
    assert records.BanRecord(proofs=[], time=1.0).claims == []   # a record from before claims still reads
