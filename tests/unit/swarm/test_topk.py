"""Top-k with error feedback (swarm.compression.topk): what is not sent waits in the residual, the residual changes only when
a round commits (a failed round loses nothing), members apply identical bytes, and the bytes a member sends."""
from __future__ import annotations

import asyncio
import copy

import pytest
import torch

from benchmarks.outer_codecs import wire_round  # every member's buckets encoded, one reducer, one reply
from swarm.averaging.rounds import RoundRequest
from swarm.compression.codecs import get_codec
from swarm.compression.policy import make_round_codec
from swarm.compression.codecs import CompressionPolicy
from swarm.compression.topk import TopKRoundCodec, select_topk
from swarm.config import EngineConfig
from swarm.errors import RoundFailed
from swarm.optim.core import CollaborativeOptimizer
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)


def _randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_select_topk_keeps_the_k_largest_with_2_bit_or_fp16_values():
    m = _randn(10_000, seed=0)
    for bits in (2, 16):
        sent = select_topk(m, 200, bits)
        kept = sent != 0
        assert int(kept.sum()) == 200
        assert float(m[~kept].abs().max()) <= float(m[kept].abs().min())   # the largest magnitudes
        assert torch.equal(torch.sign(sent[kept]), torch.sign(m[kept]))
        assert torch.equal(sent, sent.half().float())                     # fp16 numbers: the sparse codec is exact
    assert torch.unique(select_topk(m, 200, 2)[kept]).numel() == 4         # sign x {lo, hi}
    torch.testing.assert_close(select_topk(m, 200, 16)[kept], m[kept], rtol=2**-10, atol=0)
    assert int((select_topk(m.view(100, 100), 10_000, 2) != 0).sum()) == 10_000


def _run(codec, epoch, x, swarm):
    result, _ = swarm.collabs[0].submit_round(RoundRequest(epoch, 1.0), codec, [x]).wait()
    return result


def test_what_is_not_sent_stays_in_the_residual_and_is_sent_later():
    codec = TopKRoundCodec([(64, 64)], fraction=0.02, min_numel=16)
    assert codec.k == {0: 82}
    sent_sum = torch.zeros(64, 64, dtype=torch.float64)
    input_sum = torch.zeros(64, 64, dtype=torch.float64)
    swarm = FakeSwarm(1)
    try:
        x0 = _randn(64, 64, seed=1)
        result = _run(codec, 0, x0, swarm)
        result.commit()
        sent_sum += result.tensors[0].double()
        input_sum += x0.double()
        for epoch in range(1, 40):      # then nothing new: the residual drains, largest first
            result = _run(codec, epoch, torch.zeros(64, 64), swarm)
            result.commit()
            sent_sum += result.tensors[0].double()
    finally:
        swarm.close()
    residual = codec.ef.residual("0").double()
    torch.testing.assert_close(sent_sum + residual, input_sum, rtol=0, atol=1e-4)   # nothing lost
    assert float(residual.norm()) < 0.2 * float(input_sum.norm())                   # and most of it arrived


def test_a_failed_round_leaves_the_residual_and_the_retry_sends_the_same_values():
    shapes = [(64, 64)]
    failing, reference = TopKRoundCodec(shapes, min_numel=16), TopKRoundCodec(shapes, min_numel=16)
    inputs = [_randn(64, 64, seed=s) for s in range(3)]
    swarm, clean = FakeSwarm(1), FakeSwarm(1)
    swarm.fail_epochs = {1}
    try:
        _run(failing, 0, inputs[0], swarm).commit()
        _run(reference, 0, inputs[0], clean).commit()
        before = failing.ef.residual("0").clone()
        with pytest.raises(RoundFailed):
            _run(failing, 1, inputs[1], swarm)
        assert torch.equal(failing.ef.residual("0"), before)       # the failed round changed nothing
        retried = _run(failing, 1, inputs[1], swarm)                # same inputs, second attempt
        expected = _run(reference, 1, inputs[1], clean)
        assert torch.equal(retried.tensors[0], expected.tensors[0])
        retried.commit()
        expected.commit()
        assert torch.equal(failing.ef.residual("0"), reference.ef.residual("0"))
        uncommitted = _run(failing, 2, inputs[2], swarm)              # a result never applied: no change either
        assert torch.equal(failing.ef.residual("0"), reference.ef.residual("0"))
        assert uncommitted.tensors is not None
    finally:
        swarm.close()
        clean.close()


def test_members_apply_identical_bytes_and_send_about_1_4_bytes_per_kept_value():
    shapes = [(512, 256), (256,), (64, 64)]
    codecs = [TopKRoundCodec(shapes, fraction=0.02, sparse_result=False) for _ in range(3)]
    assert codecs[0].k == {0: 2622, 2: 82}          # the bias travels in fp16; 64 x 64 = 4096 values is large enough
    inputs = [[_randn(*s, seed=10 * i + j) for j, s in enumerate(shapes)] for i in range(3)]
    results, sent, reply = asyncio.run(wire_round(codecs, inputs, [1.0, 2.0, 3.0]))
    for a, b in zip(results[0].tensors, results[2].tensors):
        assert torch.equal(a, b)
    # the update is the weighted mean of what the members sent (exact on the wire up to fp16)
    sent_values = [select_topk(codecs[i].ef.compensate("0", inputs[i][0]), 2622) for i in range(3)]
    mean = (sent_values[0] + 2 * sent_values[1] + 3 * sent_values[2]) / 6
    torch.testing.assert_close(results[0].tensors[0], mean, rtol=2**-10, atol=1e-6)
    kept = 2622 + 82
    sparse_bytes = sent[0] - len(get_codec("fp16").encode(torch.zeros(256)))    # the bias's message
    # two tensors in one message: 8 distinct values, 3-bit indices (1.28 bytes per value with Rice positions; one
    # tensor: 1.15)
    assert sparse_bytes / kept == pytest.approx(1.28, abs=0.05)
    fp32 = 4 * sum(torch.Size(s).numel() for s in shapes)
    assert fp32 / sent[0] > 60 and codecs[0].compression_ratio() == pytest.approx(fp32 / sent[0], rel=0.1)
    # the reducer sends back the 3 members' messages (a bundle), smaller than their mean (up to 3 x kept fp16 values)
    assert max(reply) <= 20 + 8 * 3 + 3 * max(sent) and max(reply) < 2.5 * 3 * kept


def test_one_large_tensor_costs_1_15_bytes_per_kept_value():
    codecs = [TopKRoundCodec([(1024, 512)], fraction=0.02) for _ in range(2)]
    inputs = [[_randn(1024, 512, seed=i)] for i in range(2)]
    _, sent, reply = asyncio.run(wire_round(codecs, inputs, [1.0, 1.0]))
    k = codecs[0].k[0]
    assert sent[0] / k == pytest.approx(1.15, abs=0.03)
    assert 4 * 1024 * 512 / sent[0] > 170                          # 175x below fp32 at k = 2%
    assert sent[0] <= codecs[0].predicted_bytes() <= 1.08 * sent[0]   # an upper estimate, close


def test_auxiliary_member_reduces_without_values():
    codecs = [TopKRoundCodec([(64, 64)], min_numel=16) for _ in range(3)]
    inputs = [[_randn(64, 64, seed=1)], [_randn(64, 64, seed=2)], None]
    swarm = FakeSwarm(3)
    try:
        def peer(i, collab):
            result, _ = collab.submit_round(RoundRequest(0, 0.0 if inputs[i] is None else 1.0), codecs[i], inputs[i]).wait()
            return result
        results = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert results[2].tensors is None and len(codecs[2].ef) == 0
    expected = (select_topk(inputs[0][0], 82) + select_topk(inputs[1][0], 82)) / 2
    torch.testing.assert_close(results[0].tensors[0], expected, rtol=0, atol=1e-6)


def test_small_tensors_keep_their_codec_and_the_schema_is_the_same_everywhere():
    shapes = [(512, 256), (10, 10), (256,)]
    a, b = TopKRoundCodec(shapes), TopKRoundCodec(shapes, fraction=0.03, value_bits=16)
    assert list(a.k) == [0]
    assert a.schema.schema_hash() == b.schema.schema_hash()       # fraction and bits: hyperparameters of the run
    # the small tensors in fp16 (SMALL_TENSORS), unless the run's policy says otherwise
    assert [c.name for c in a.schema.codecs] == ["fp16", "sparse-topk"] and a.schema.buckets == ((1, 2), (0,))
    exact = TopKRoundCodec(shapes, policy=CompressionPolicy(default="fp16"), sparse_result=False)
    assert [c.name for c in exact.schema.codecs] == ["none", "sparse"]
    # what the reducers send back decides what members put back in their residuals: runs that differ do not match
    assert TopKRoundCodec(shapes, sparse_result=False).schema.schema_hash() != a.schema.schema_hash()
    assert make_round_codec(shapes, "topk", topk_result="exact").sparse_result is False
    assert isinstance(make_round_codec(shapes, "topk", topk_fraction=0.01), TopKRoundCodec)
    for bad in (dict(fraction=0.0), dict(fraction=1.5), dict(value_bits=8)):
        with pytest.raises(ValueError):
            TopKRoundCodec(shapes, **bad)


def test_diloco_with_topk_outer_codec_keeps_peers_identical_through_a_failed_round():
    torch.manual_seed(0)
    initial = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    swarm = FakeSwarm(2, per_peer_target=16, config=EngineConfig(target_batch_size=32, topk_fraction=0.05))
    swarm.fail_epochs = {1}

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.AdamW, lr=0.01, mode="diloco", codec="topk")
        gen = torch.Generator().manual_seed(i)
        step = 0
        while opt.epoch < 3 and step < 200:
            x = torch.randn(8, 64, generator=gen)
            torch.nn.functional.mse_loss(model(x), x[:, :1]).backward()
            opt.step(samples=8)
            opt.zero_grad()
            opt._retry_after = 0.0   # retry at once (the engine waits 1 s)
            step += 1
        return opt

    try:
        o0, o1 = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert isinstance(o0.codec, TopKRoundCodec) and o0.history[-1].codec == "topk"
    assert o0.rounds_failed == o1.rounds_failed == 1 and o0.epoch == o1.epoch == 3
    assert o0.params_hash() == o1.params_hash()
    assert o0.codec.ef.residual("0") is not None and float(o0.codec.ef.norm()) > 0


def test_a_sparse_result_sends_about_one_message_back_and_the_residuals_keep_what_it_left_out():
    """gTop-k: the reducer sends the top of the average, no more non-zeros than the largest message; every member puts
    its own sent values back where the update is zero, so the members' residuals, weighted as the average weighs them,
    hold exactly what the updates left out of the inputs (up to fp16 rounding of the kept values)."""
    shapes, n = [(512, 256)], 8
    weights = [float(i + 1) for i in range(n)]
    total = sum(weights)
    topk = [TopKRoundCodec(shapes, fraction=0.02) for _ in range(n)]
    exact = [TopKRoundCodec(shapes, fraction=0.02, sparse_result=False) for _ in range(n)]
    k = topk[0].k[0]
    applied = torch.zeros(512, 256, dtype=torch.float64)
    inputs_sum = torch.zeros(512, 256, dtype=torch.float64)
    for epoch in range(3):
        inputs = [[_randn(512, 256, seed=100 * epoch + i)] for i in range(n)]
        sent = [select_topk(topk[i].ef.compensate("0", inputs[i][0]), k) for i in range(n)]
        results, _, reply = asyncio.run(wire_round(topk, inputs, weights, epoch))
        update = results[0].tensors[0]
        assert all(torch.equal(update, r.tensors[0]) for r in results[1:])
        kept = update != 0
        assert 0.9 * k <= int(kept.sum()) <= k                         # about one message's values, never more
        mean = sum(w * s for w, s in zip(weights, sent)) / total
        torch.testing.assert_close(update[kept], mean[kept], rtol=2**-10, atol=0)   # the average where it kept any
        assert float(mean[~kept].abs().max()) <= float(mean[kept].abs().min())      # and its largest values
        if epoch == 0:   # the exact reply (a bundle of the 8 messages) is about n times larger
            _, _, exact_reply = asyncio.run(wire_round(exact, inputs, weights, epoch))
            assert max(reply) < 0.4 * max(exact_reply)
        for r in results:
            r.commit()
        applied += update.double()
        inputs_sum += sum(w * x[0].double() for w, x in zip(weights, inputs)) / total
        residuals = sum(w * c.ef.residual("0").double() for w, c in zip(weights, topk)) / total
        torch.testing.assert_close(applied + residuals, inputs_sum, rtol=0, atol=2e-3)   # nothing lost, only delayed


def test_a_small_group_gets_the_exact_average_where_the_top_would_save_less_than_half():
    """2 members' messages bundled cost less than twice the top of their average: the reducer sends the bundle, and
    nothing waits a round (SparseCodec.bundle_preference)."""
    shapes = [(512, 256)]
    codecs = [TopKRoundCodec(shapes, fraction=0.02) for _ in range(2)]
    inputs = [[_randn(512, 256, seed=40 + i)] for i in range(2)]
    sent = [select_topk(codecs[i].ef.compensate("0", inputs[i][0]), codecs[0].k[0]) for i in range(2)]
    results, messages, reply = asyncio.run(wire_round(codecs, inputs, [1.0, 3.0]))
    assert sum(messages) < reply[0] < sum(messages) + 100          # the two messages, bundled
    torch.testing.assert_close(results[0].tensors[0], (sent[0] + 3 * sent[1]) / 4, rtol=0, atol=1e-6)
    for r in results:
        r.commit()
    for i in range(2):   # each residual is what its own message left out, as without a sparse result
        torch.testing.assert_close(codecs[i].ef.residual("0"), inputs[i][0] - sent[i], rtol=0, atol=0)
