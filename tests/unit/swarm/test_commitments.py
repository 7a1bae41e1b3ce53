"""Senders' commitments (swarm.averaging.commitments), a statement's list of inputs (swarm.averaging.result_statements),
and an audit's recomputation (swarm.averaging.audits.recompute): what each accepts from untrusted bytes, and what it
proves."""
from __future__ import annotations

import hashlib

import msgpack
import pytest
import torch
from hivemind.utils.crypto import RSAPrivateKey

from swarm.averaging.audits import AUDIT_TOLERANCE, AuditStore, pack_accusation, pack_layout, recompute, unpack_accusation, unpack_layout
from swarm.averaging.commitments import Commitment, commit
from swarm.averaging.result_statements import Input, ResultStatement, pack_inputs, sign_statement, unpack_inputs
from swarm.compression.codecs import get_codec
from swarm.net.identity import peer_id_of

pytestmark = pytest.mark.timeout(60)

KEY = RSAPrivateKey()
ME = peer_id_of(KEY.get_public_key().to_bytes())
ROUND = bytes(range(16))


def test_a_commitment_names_each_parts_chunks_and_only_its_sender_can_sign_one():
    c = commit(KEY, ROUND, ME, 3.0, {2: [b"a", b"bb"], 0: [b"z"], 1: []})
    back = Commitment.unpack(c.pack())
    assert back == c and back.valid()
    assert [p for p, _ in back.parts] == [0, 2] and back.chunks_of(1) is None
    assert back.holds(2, 0, b"a") and back.holds(2, 1, b"bb") and back.holds(0, 0, b"z")
    assert not back.holds(2, 1, b"b") and not back.holds(2, 2, b"") and not back.holds(0, 0, b"a") and not back.holds(1, 0, b"z")
    other = RSAPrivateKey()
    forged = commit(other, ROUND, ME, 3.0, {2: [b"a", b"bb"]})          # signed by another key in my name
    assert not forged.valid()
    heavier = Commitment(c.round_id, c.sender, 30.0, c.parts, c.public_key, c.signature)   # a weight changed
    assert not heavier.valid()
    assert c.digest() != commit(KEY, ROUND, ME, 3.0, {2: [b"a", b"bc"], 0: [b"z"]}).digest()


@pytest.mark.parametrize("data", [
    b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb({"a": 1}),
    msgpack.packb([bytes(16), "x", 1.0, [], b"k", b"s"]),                          # no parts
    msgpack.packb([bytes(16), "x", 1.0, [[0, []]], b"k", b"s"]),                   # a part without chunks
    msgpack.packb([bytes(15), "x", 1.0, [[0, [bytes(32)]]], b"k", b"s"]),          # a short round id
    msgpack.packb([bytes(16), "x", float("nan"), [[0, [bytes(32)]]], b"k", b"s"]),   # a weight that is not a number
    msgpack.packb([bytes(16), "x", 1.0, [[0, [bytes(31)]]], b"k", b"s"]),          # a digest of the wrong size
    msgpack.packb([bytes(16), "x", 1.0, [[-1, [bytes(32)]]], b"k", b"s"]),
    msgpack.packb([bytes(16), "x", 1.0, [[1, [bytes(32)]], [1, [bytes(32)]]], b"k", b"s"]),   # a part twice
    msgpack.packb([bytes(16), "x", 1.0, [[p, [bytes(32)] * 4000] for p in range(5)], b"k", b"s"]),   # too many chunks
    b"\x00" * (1 << 21),
])
def test_malformed_commitments_are_refused_before_use(data):
    assert Commitment.unpack(data) is None


def test_a_statement_signs_its_inputs_and_old_statements_without_them_still_read():
    inputs = pack_inputs(bytes(32), [Input(0, 3, bytes(32)), Input(2, 1, b"\x01" * 32)])
    s = sign_statement(KEY, ROUND, 1, ME, b"\x02" * 32, inputs)
    back = ResultStatement.unpack(s.pack())
    assert back == s and back.valid()
    assert unpack_inputs(back.inputs) == (bytes(32), [Input(0, 3, bytes(32)), Input(2, 1, b"\x01" * 32)])
    swapped = ResultStatement(s.round_id, s.part, s.reducer, s.digest, s.public_key, s.signature,
                              pack_inputs(bytes(32), [Input(0, 3, bytes(32))]))   # an input dropped after signing
    assert not swapped.valid()
    plain = sign_statement(KEY, ROUND, 1, ME, b"\x02" * 32)   # a statement of an older peer lists nothing
    assert ResultStatement.unpack(plain.pack()).inputs == b"" and plain.valid()


@pytest.mark.parametrize("entries", [
    [[1, 1, bytes(32)], [0, 1, bytes(32)]],          # senders out of order
    [[1, 1, bytes(32)], [1, 2, bytes(32)]],          # a sender twice
    [[0, 0, bytes(32)]],                              # no chunk
    [[0, 1, bytes(31)]],
    [[True, 1, bytes(32)]],
    [[0, 1, bytes(32)]] * 300,                        # more than MAX_INPUTS
])
def test_malformed_input_lists_are_refused(entries):
    assert unpack_inputs(msgpack.packb([bytes(32), entries])) is None


def test_layouts_and_accusations_round_trip_and_refuse_garbage():
    layout = [("fp16", 500), ("none", 12)]
    assert unpack_layout(pack_layout(layout)) == layout
    assert unpack_layout(msgpack.packb([["fp16", 0]])) is None and unpack_layout(b"\xc1") is None
    s = sign_statement(KEY, ROUND, 1, ME, b"\x02" * 32, pack_inputs(bytes(32), [Input(0, 1, bytes(32))]))
    assert unpack_accusation(pack_accusation(s, layout, ME, [1])) == (s, layout, ME, [1], None)
    assert unpack_accusation(msgpack.packb([s.pack(), b"\xc1", ME, [0]])) is None
    assert unpack_accusation(pack_accusation(s, layout, ME, [2])) is None      # a chunk the layout does not have
    assert unpack_accusation(pack_accusation(s, layout, ME, [])) is None       # no chunk found wrong: no accusation
    assert unpack_accusation(b"\x00" * (1 << 16)) is None
    # the reducer's own commitment rides along when the lie is its omission; anything else in its place is refused
    c = commit(KEY, ROUND, ME, 1.0, {1: [b"a", b"b"]})
    assert unpack_accusation(pack_accusation(s, layout, ME, [1], c)) == (s, layout, ME, [1], c)
    assert unpack_accusation(msgpack.packb([s.pack(), pack_layout(layout), ME, [1], b"not a commitment"])) is None
    assert unpack_accusation(msgpack.packb([s.pack(), pack_layout(layout), ME, [1], c.pack(), b"sixth"])) is None


def _contribution(values: torch.Tensor, sender: int, codec: str = "fp16", chunk: int = 256):
    c = get_codec(codec)
    encoded = [c.encode(values[i:i + chunk]) for i in range(0, values.numel(), chunk)]
    return Input(sender, len(encoded), bytes(32)), commit(KEY, ROUND, ME, 1.0 + sender, {0: encoded}), dict(enumerate(encoded))


def test_a_recomputation_matches_an_honest_result_whatever_the_order_and_finds_noise():
    from swarm.averaging.robust import CenteredClipReduction
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1024, generator=g)
    inputs = [_contribution(base + 0.3 * torch.randn(1024, generator=g), i) for i in range(4)]
    layout = [("fp16", 256)] * 4
    codec = get_codec("fp16")
    honest = []
    for k in range(4):   # the reducer's reduction, in another order than the auditor's
        red = CenteredClipReduction(256)
        for entry, commitment, chunks in reversed(inputs):
            red.add(codec.decode(chunks[k]), commitment.weight, sender=entry.sender)
        honest.append(codec.encode(red.result()))
    assert max(recompute(layout, inputs, honest).values()) < AUDIT_TOLERANCE / 10
    noisy = list(honest)
    noisy[2] = codec.encode(codec.decode(honest[2]) + codec.decode(honest[2]).norm() / 16 * torch.randn(256, generator=g))
    distances = recompute(layout, inputs, noisy)
    assert distances[2] > 0.5 and max(distances[k] for k in (0, 1, 3)) < AUDIT_TOLERANCE / 10
    assert list(recompute(layout, inputs, noisy, indices=[1, 2])) == [1, 2]       # a sample: those chunks only
    # a sender excluded midway counts only in the chunks the statement says
    partial = [(Input(e.sender, 2 if e.sender == 3 else e.chunks, e.commitment), c, ch) for e, c, ch in inputs]
    distances = recompute(layout, partial, honest)    # the reducer used sender 3 in all 4 chunks
    assert max(distances[k] for k in (0, 1)) < AUDIT_TOLERANCE / 10 and min(distances[k] for k in (2, 3)) > AUDIT_TOLERANCE


def test_a_sparse_result_is_checked_for_its_values_and_the_weight_of_its_choice():
    """sparse-topk (swarm.compression.topk): the reducer sends the top of the average. An honest one passes whatever its
    order of summation; changed values, positions picked below the top, or more values than one input has do not."""
    from swarm.averaging.reduction import Reduction
    from swarm.averaging.robust import CenteredClipReduction
    from swarm.compression.sparse import top_values
    from swarm.compression.topk import select_topk
    g = torch.Generator().manual_seed(4)
    codec = get_codec("sparse-topk")
    inputs = [_contribution(select_topk(torch.randn(1024, generator=g), 20), i, "sparse-topk") for i in range(5)]
    layout = [("sparse-topk", 256)] * 4
    honest = []
    for k in range(4):
        red = CenteredClipReduction(256)
        for entry, commitment, chunks in reversed(inputs):    # another order than the auditor's
            red.add(codec.decode(chunks[k]), commitment.weight, sender=entry.sender)
        honest.append(codec.encode(codec.reduce_result(red.result(), [chunks[k] for _, _, chunks in inputs])))
    assert all(0 < int((codec.decode(h) != 0).sum()) <= max(int((codec.decode(c[k]) != 0).sum()) for _, _, c in inputs)
               for k, h in enumerate(honest))
    assert max(recompute(layout, inputs, honest).values()) < AUDIT_TOLERANCE / 10
    lied = list(honest)
    value = codec.decode(honest[0])
    lied[0] = codec.encode(value * (1 + 0.2 * (value != 0).float() * torch.rand(256, generator=g)))     # values changed
    mean = codec.decode(codec.encode(sum(c.weight * codec.decode(ch[1]) for _, c, ch in inputs) / sum(c.weight for _, c, _ in inputs)))
    keep = int((codec.decode(honest[1]) != 0).sum())
    smallest = mean * (mean != 0) * (mean.abs() <= mean[mean != 0].abs().kthvalue(keep).values)
    lied[1] = codec.encode(smallest)                                  # the average's values, but its smallest ones
    lied[2] = codec.encode(codec.decode(honest[2]) + top_values(mean.roll(7), 60) * (codec.decode(honest[2]) == 0))  # more values
    distances = recompute(layout, inputs, lied)
    assert min(distances[k] for k in (0, 1)) > AUDIT_TOLERANCE and distances[2] == float("inf") and distances[3] < AUDIT_TOLERANCE / 10
    # a bundle (sent when smaller) is the whole average, checked as one: here the plain mean's
    bundled = codec.bundle([(c.weight, ch[3]) for _, c, ch in inputs], 256)
    assert recompute(layout, inputs, {3: bundled}, reduction=Reduction, indices=[3])[3] < AUDIT_TOLERANCE / 10


def test_the_store_keeps_recent_rounds_and_pinned_evidence():
    store = AuditStore(keep_rounds=2)
    c = commit(KEY, bytes(16), ME, 1.0, {0: [b"x"]})
    store.put_contribution(c, 0, [b"x"])
    store.pin(bytes(16))
    for r in range(1, 5):
        store.put_result(bytes([r]) * 16, 0, hashlib.sha256(b"y").digest(), [b"y"])
    assert store.get(bytes(16), 0, c.digest()) is not None           # pinned: kept
    assert store.get(bytes([1]) * 16, 0, hashlib.sha256(b"y").digest()) is None   # beyond the window
    assert store.get(bytes([4]) * 16, 0, hashlib.sha256(b"y").digest()) is not None


@pytest.mark.parametrize("codec", ["none", "fp16", "uniform8bit", "quantile8bit", "uniform4bit", "uniform2bit"])
def test_an_honest_part_reduced_in_another_order_passes_in_every_codec_and_a_liar_does_not(codec):
    """The reducer adds contributions as they arrive, the auditor in member order: float noise, which a coarse codec
    rounds a whole step away (an honest reducer was banned at 4 bits with a 1% tolerance in a streaming DiLoCo run)."""
    import warnings

    from swarm.averaging.audits import tolerance
    from swarm.averaging.robust import CenteredClipReduction

    c = get_codec(codec)
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # hivemind's 8-bit quantizers use deprecated torch calls
        for seed in range(20):
            g = torch.Generator().manual_seed(seed)
            rows = [c.decode(c.encode(torch.randn(4096, generator=g))) for _ in range(3)]
            sums = []
            for order in ((0, 1, 2), (2, 0, 1)):
                reduction = CenteredClipReduction(4096)
                for i in order:
                    reduction.add(rows[i], 1.0 + i, sender=i)
                sums.append(c.decode(c.encode(reduction.result())))
            worst = max(worst, float((sums[0] - sums[1]).norm() / sums[0].norm()))
            lie = sums[0] + sums[0].norm() / 64 * torch.randn(4096, generator=g)   # the harness's liar: noise of the norm
            assert float((c.decode(c.encode(lie)) - sums[0]).norm() / sums[0].norm()) > 2 * tolerance(codec)
    assert worst < tolerance(codec) / 2, (codec, worst)
