"""Signed result statements, their comparison among members, and bans on proofs each peer checks itself.

swarm.averaging.result_statements / result_exchange / bans, swarm.net.identity: no network (the exchange's
transport is tested in tests/integration/test_robust_rounds.py).
"""
from __future__ import annotations

import asyncio
import hashlib
from types import SimpleNamespace

import msgpack
import pytest
from hivemind.p2p import PeerID
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.bans import BanList
from swarm.averaging.result_exchange import Report, ResultCheck, unpack_report
from swarm.averaging.result_statements import ResultStatement, contradiction, sign_statement
from swarm.net import records
from swarm.net.identity import identity_bytes, key_from_identity, peer_id_of

ROUND = bytes(range(16))


@pytest.fixture(scope="module")
def keys():
    return [RSAPrivateKey() for _ in range(4)]


def pid(key: RSAPrivateKey) -> str:
    return str(PeerID.from_identity(identity_bytes(key)))


def digest(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


def test_a_keys_peer_id_is_the_one_p2pd_derives_from_the_same_identity(keys):
    key = keys[0]
    assert peer_id_of(key.get_public_key().to_bytes()) == pid(key)
    assert peer_id_of(keys[1].get_public_key().to_bytes()) != pid(key)
    assert key_from_identity(identity_bytes(key)).to_bytes() == key.to_bytes()
    for junk in (b"", b"ssh-rsa AAAA", b"x" * 5000, "text"):
        assert peer_id_of(junk) is None


def test_a_statement_verifies_only_as_its_signers_and_unchanged(keys):
    reducer = pid(keys[0])
    good = sign_statement(keys[0], ROUND, 1, reducer, digest("a"))
    assert good.valid() and ResultStatement.unpack(good.pack()) == good
    forged = sign_statement(keys[1], ROUND, 1, reducer, digest("b"))   # another key naming the reducer
    assert not forged.valid()
    tampered = ResultStatement(good.round_id, good.part, good.reducer, digest("b"), good.public_key, good.signature)
    assert not tampered.valid()
    wrong_part = ResultStatement(good.round_id, 2, good.reducer, good.digest, good.public_key, good.signature)
    assert not wrong_part.valid()


@pytest.mark.parametrize("data", [
    b"", b"\xc1", b"x" * 5000, msgpack.packb([ROUND, 1, "p", b"d" * 31, b"k", b"s"]),          # digest not 32 bytes
    msgpack.packb([ROUND[:8], 1, "p", b"d" * 32, b"k", b"s"]), msgpack.packb([ROUND, -1, "p", b"d" * 32, b"k", b"s"]),
    msgpack.packb({"a": 1}), msgpack.packb([ROUND, 1, "p" * 500, b"d" * 32, b"k", b"s"]), None,
])
def test_malformed_statements_are_refused_before_any_check(data):
    assert ResultStatement.unpack(data) is None


def test_two_different_signed_results_of_one_part_are_a_proof_and_nothing_else_is(keys):
    reducer = pid(keys[0])
    a, b = (sign_statement(keys[0], ROUND, 0, reducer, digest(x)) for x in "ab")
    assert contradiction(a, b)
    assert not contradiction(a, a)
    assert not contradiction(a, sign_statement(keys[0], ROUND, 1, reducer, digest("b")))        # another part
    assert not contradiction(a, sign_statement(keys[0], bytes(16), 0, reducer, digest("b")))    # another round
    assert not contradiction(a, sign_statement(keys[1], ROUND, 0, reducer, digest("b")))        # forged second


def _check(keys, me: int) -> tuple[ResultCheck, list[str]]:
    members = [pid(k) for k in keys]
    return ResultCheck(ROUND, members, me), members


def test_members_holding_the_minoritys_bytes_of_an_equivocating_reducers_part_drop_it(keys):
    check, members = _check(keys, me=1)
    honest = sign_statement(keys[0], ROUND, 0, members[0], digest("honest"))
    noisy = sign_statement(keys[0], ROUND, 0, members[0], digest("noisy"))
    other = sign_statement(keys[2], ROUND, 2, members[2], digest("part 2"))
    check.hold(0, noisy)
    check.hold(2, other)
    check.offer(members[2], Report(ROUND, statements=[honest.pack(), other.pack()]))
    check.offer(members[3], Report(ROUND, statements=[honest.pack(), other.pack()]))
    verdict = check.verdict()
    assert [(a.digest, b.digest) for a, b in verdict.proofs] == [(honest.digest, noisy.digest)]
    assert list(verdict.dropped) == [0]                     # member 1 holds the minority's bytes: it does not step
    majority, _ = _check(keys, me=2)
    majority.hold(0, honest)
    majority.offer(members[1], Report(ROUND, statements=[noisy.pack()]))
    majority.offer(members[3], Report(ROUND, statements=[honest.pack()]))
    assert majority.verdict().dropped == {} and len(majority.verdict().proofs) == 1


def test_the_equivocating_reducers_own_report_is_no_vote(keys):
    check, members = _check(keys, me=1)
    a, b = sorted((sign_statement(keys[0], ROUND, 0, members[0], digest(x)) for x in "xy"), key=lambda st: st.digest, reverse=True)
    assert b.digest < a.digest   # a tie would go to b
    check.hold(0, a)
    check.offer(members[3], Report(ROUND, statements=[a.pack()]))
    check.offer(members[2], Report(ROUND, statements=[b.pack()]))
    check.offer(members[0], Report(ROUND, statements=[b.pack()]))   # the reducer backs the bytes member 2 got: 2 against 1 still
    verdict = check.verdict()
    assert verdict.dropped == {} and len(verdict.proofs) == 1


def test_reports_that_prove_nothing_change_nothing(keys):
    check, members = _check(keys, me=1)
    mine = sign_statement(keys[0], ROUND, 0, members[0], digest("a"))
    check.hold(0, mine)
    forged = sign_statement(keys[3], ROUND, 0, members[0], digest("b"))         # member 3 signs in reducer 0's name
    misplaced = sign_statement(keys[3], ROUND, 0, members[3], digest("c"))      # part 0 is not member 3's
    stale = sign_statement(keys[0], bytes(16), 0, members[0], digest("d"))      # another round
    check.offer(members[3], Report(ROUND, statements=[forged.pack(), misplaced.pack(), stale.pack(), b"junk"]))
    check.offer("not-a-member", Report(ROUND, statements=[sign_statement(keys[0], ROUND, 0, members[0], digest("e")).pack()]))
    verdict = check.verdict()
    assert verdict.proofs == [] and verdict.dropped == {}


def test_a_report_is_bounded_before_it_is_read(keys):
    check, _ = _check(keys, me=0)
    assert unpack_report(check.report()) == Report(ROUND)
    assert unpack_report(b"x" * (1 << 21)) is None
    for junk in ({"r": ROUND, "s": [1, 2]}, {"r": ROUND, "s": [b"x"] * 300}, {"r": ROUND, "d": [[0, b"d" * 31]]},
                 {"r": ROUND, "d": [[-1, b"d" * 32]]}, {"r": ROUND, "d": [[True, b"d" * 32]]}, {"r": ROUND, "d": [[0]]},
                 {"r": ROUND, "w": [1 << 30]}, {"r": ROUND, "w": ["0"]}, {"r": ROUND, "x": 1}, {"d": []}, [ROUND]):
        assert unpack_report(msgpack.packb(junk)) is None, junk


def test_members_swap_digests_and_only_a_dispute_swaps_signed_statements(keys):
    check, members = _check(keys, me=1)
    statements = {j: sign_statement(keys[j], ROUND, j, members[j], digest(f"part {j}")) for j in (0, 2, 3)}
    for j, st in statements.items():
        check.hold(j, st)
    step1 = unpack_report(check.report())
    assert step1.digests == {j: st.digest for j, st in statements.items()} and step1.statements == []
    assert len(check.report()) < sum(len(st.pack()) for st in statements.values()) / 4   # what every round sends
    check.offer(members[2], Report(ROUND, digests={0: statements[0].digest, 3: statements[3].digest}))
    assert check.disputed() == set()
    check.offer(members[3], Report(ROUND, digests={0: digest("other bytes")}))          # a claim is enough to ask
    assert check.disputed() == {0}
    asked = unpack_report(check.request({0}))
    assert asked.wanted == [0] and [ResultStatement.unpack(x) for x in asked.statements] == [statements[0]]
    answer = unpack_report(check.answer(asked))                                           # what a member answers it
    assert [ResultStatement.unpack(x) for x in answer.statements] == [statements[0]] and answer.digests == {}
    assert check.verdict().proofs == [] and check.verdict().dropped == {}                  # but no proof without signatures


def test_an_equivocating_reducer_is_banned_on_its_proof_and_a_forged_proof_bans_nobody(keys):
    honest, accuser = pid(keys[0]), pid(keys[1])
    # the accuser signs two different results in the honest peer's name: the keys are not the honest peer's
    forged = tuple(sign_statement(keys[1], ROUND, 0, honest, digest(x)).pack() for x in "ab")
    # or takes one real statement of the honest peer and a tampered copy of it
    real = sign_statement(keys[0], ROUND, 0, honest, digest("a"))
    tampered = ResultStatement(real.round_id, real.part, real.reducer, digest("b"), real.public_key, real.signature)
    bans = BanList()
    assert bans.accuse([forged, (real.pack(), tampered.pack()), (real.pack(), real.pack())]) == []
    assert bans.consider([b"x", b"y"]) is None and bans.consider([real.pack()]) is None
    assert bans.banned == set() and bans.found == []
    liar = pid(keys[2])
    proof = tuple(sign_statement(keys[2], ROUND, 1, liar, digest(x)).pack() for x in "ab")
    assert bans.accuse([proof]) == [liar]
    assert bans.banned == {liar} and bans.found == [proof]
    assert accuser not in bans.banned


class _FakeNode:
    """Node's two record calls, over a dict (records validated as the DHT's validator would)."""

    run_id = "run"

    def __init__(self):
        self.stored: dict[str, list[dict]] = {}

    async def store_record(self, key, record, ttl):
        self.stored.setdefault(key, []).append(msgpack.unpackb(msgpack.packb(records.encode(record)), raw=False))
        return True

    async def fetch_owned_records(self, key, model):
        """Each stored record with its writer's place in the list as its owner (the DHT's subkey is the signer's)."""
        decoded = [(i, records.decode(model, v)) for i, v in enumerate(self.stored.get(key, []))]
        return [(i, r) for i, r in decoded if r is not None]


def test_every_peer_bans_from_published_proofs_after_checking_them_itself(keys):
    node = _FakeNode()
    liar, honest = pid(keys[2]), pid(keys[0])
    accuser = BanList()
    accuser.accuse([tuple(sign_statement(keys[2], ROUND, 1, liar, digest(x)).pack() for x in "ab")])
    asyncio.run(accuser.publish(node))
    # a second accuser publishes forged evidence against an honest peer (bypassing its own check)
    node.stored[records.bans_key("run")].append({"proofs": [[sign_statement(keys[1], ROUND, 0, honest, digest(x)).pack()
                                                             for x in "ab"]], "time": 0.0})
    others = [BanList() for _ in range(3)]
    for bans in others:
        asyncio.run(bans.refresh(node))
        assert bans.banned == {liar}


def test_the_results_handler_answers_garbage_and_unknown_rounds_with_nothing_at_once():
    from google.protobuf.wrappers_pb2 import BytesValue

    from swarm.averaging.service import AggregateService

    async def scenario():
        service = AggregateService(p2p=None, wait_for_round=0.2)
        context = SimpleNamespace(remote_id="QmSomebody")
        replies = [await asyncio.wait_for(service._handle_results(BytesValue(value=data), context), 2.0) for data in (
            b"", b"\xc1" * 100, b"x" * (1 << 21), msgpack.packb({"r": b"short", "s": []}),
            msgpack.packb({"r": bytes(16), "s": []}))]   # a well-formed report for a round nobody opened
        return replies, len(service._rounds)

    replies, slots = asyncio.run(scenario())
    assert all(reply.value == b"" for reply in replies)
    assert slots <= 1   # the unknown round's slot waits for it like a stream's would (bounded at 64)


def test_one_source_cannot_spend_the_accusation_budget_of_others():
    """Each pusher or record owner queues at most MAX_ACCUSATIONS_PER_SOURCE accusations for audits a window: a peer that
    publishes forged accusations by the thousand stops there, and a real accuser's still gets audited."""
    from swarm.averaging import bans as bans_module

    bans = BanList()
    forged = [b"forged %d" % i for i in range(1000)]
    queued = [bans.offer(a, source="Qm-forger") for a in forged]
    assert sum(queued) == bans_module.MAX_ACCUSATIONS_PER_SOURCE and all(queued[:bans_module.MAX_ACCUSATIONS_PER_SOURCE])
    assert bans.offer(b"real", source="Qm-auditor") and b"real" in bans.to_verify
    assert not bans.offer(b"real", source="Qm-other"), "an accusation already queued is not audited twice"
    assert bans.offer(forged[-1], source="Qm-auditor"), "refused from one source, it is not marked seen for the others"
    # memory stays bounded whoever floods: sources per window, accusations pending and seen
    for i in range(bans_module.MAX_SOURCES + 10):
        bans.offer(b"sybil %d" % i, source=f"Qm-sybil-{i}")
    assert len(bans._per_source) <= bans_module.MAX_SOURCES and len(bans.to_verify) <= bans_module.MAX_PENDING
    assert len(bans._accusations_seen) <= bans_module.MAX_ACCUSATIONS_SEEN
    # a new window gives every source its budget again
    bans._window_start -= bans_module.ACCUSATION_WINDOW + 1
    assert bans.offer(b"forged next hour", source="Qm-forger")
