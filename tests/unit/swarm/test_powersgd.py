"""PowerSGD: exact for low-rank matrices, identical updates on every member, error feedback, warm start, state."""
from __future__ import annotations

import pytest
import torch

from swarm.averaging.rounds import RoundRequest
from swarm.compression.powersgd import PowerSGDRoundCodec, low_rank_round, orthogonalize
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)


def _low_rank(n, m, rank, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, rank, generator=gen) @ torch.randn(rank, m, generator=gen)


def test_orthogonalize_gives_orthonormal_columns_and_zero_for_dependent_ones():
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(50, 4, generator=gen)
    q = orthogonalize(p)
    torch.testing.assert_close(q.t() @ q, torch.eye(4), rtol=0, atol=1e-5)
    dependent = torch.cat([p[:, :2], p[:, :1] * 3 + p[:, 1:2]], dim=1)
    q = orthogonalize(dependent)
    assert float(q[:, 2].abs().max()) == 0.0
    torch.testing.assert_close(q[:, :2].t() @ q[:, :2], torch.eye(2), rtol=0, atol=1e-5)


@pytest.mark.parametrize("true_rank, rank", [(1, 1), (2, 4), (3, 3)])
def test_low_rank_matrix_is_reconstructed_exactly(true_rank, rank):
    m = _low_rank(64, 48, true_rank, seed=true_rank)
    q = torch.randn(48, rank, generator=torch.Generator().manual_seed(9))
    update, local, _ = low_rank_round([m], [1.0], q)
    torch.testing.assert_close(update, m, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(local[0], m, rtol=1e-4, atol=1e-4)


def _run_round(codecs, inputs, weights):
    swarm = FakeSwarm(len(codecs))
    try:
        def peer(i, collab):
            result, _ = collab.submit_round(RoundRequest(0, weights[i]), codecs[i], inputs[i]).wait()
            result.commit()
            return result
        return swarm.run_peers(peer)
    finally:
        swarm.close()


def test_two_members_get_the_same_update_and_rank_2_mean_is_exact():
    shapes = [(64, 48), (48,)]
    codecs = [PowerSGDRoundCodec(shapes, rank=2, min_numel=16) for _ in range(2)]
    assert codecs[0].low_rank == [0] and codecs[0].rest == [1]
    inputs = [[_low_rank(64, 48, 1, seed=10 + i), torch.full((48,), float(i))] for i in range(2)]
    weights = [1.0, 3.0]
    results = _run_round(codecs, inputs, weights)
    assert results[0].codec == "powersgd"
    for a, b in zip(results[0].tensors, results[1].tensors):
        assert torch.equal(a, b), "members must apply bitwise-identical updates"
    mean = (inputs[0][0] * 1 + inputs[1][0] * 3) / 4
    torch.testing.assert_close(results[0].tensors[0], mean, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(results[0].tensors[1], torch.full((48,), 0.75), rtol=0, atol=1e-3)  # fp16 bucket
    # warm start: both members now hold the same averaged Q
    assert torch.equal(codecs[0].q[0], codecs[1].q[0])


def test_error_feedback_over_rounds_loses_nothing_for_a_single_member():
    shapes = [(32, 32)]
    codec = PowerSGDRoundCodec(shapes, rank=1, min_numel=16)
    gen = torch.Generator().manual_seed(3)
    sent_sum = torch.zeros(32, 32, dtype=torch.float64)
    input_sum = torch.zeros(32, 32, dtype=torch.float64)
    swarm = FakeSwarm(1)
    try:
        for epoch in range(12):
            x = torch.randn(32, 32, generator=gen)
            result, _ = swarm.collabs[0].submit_round(RoundRequest(epoch, 1.0), codec, [x]).wait()
            result.commit()
            sent_sum += result.tensors[0].double()
            input_sum += x.double()
    finally:
        swarm.close()
    residual = codec.ef.residual("0").double()
    torch.testing.assert_close(sent_sum + residual, input_sum, rtol=0, atol=1e-3)
    assert float(residual.norm()) < float(input_sum.norm())


def test_a_round_that_is_not_committed_changes_nothing():
    codec = PowerSGDRoundCodec([(32, 32)], rank=2, min_numel=16)
    q_before = codec.q[0].clone()
    swarm = FakeSwarm(1)
    try:
        result, _ = swarm.collabs[0].submit_round(RoundRequest(0, 1.0), codec, [torch.randn(32, 32)]).wait()
    finally:
        swarm.close()
    assert torch.equal(codec.q[0], q_before) and codec.ef.residual("0") is None
    result.commit()
    assert not torch.equal(codec.q[0], q_before) and codec.ef.residual("0") is not None


def test_small_and_1d_tensors_keep_their_codec_and_the_schema_is_the_same_everywhere():
    shapes = [(512, 256), (10, 10), (256,), (4, 3, 3, 3)]
    a, b = PowerSGDRoundCodec(shapes, rank=4), PowerSGDRoundCodec(shapes, rank=4)
    assert a.low_rank == [0]
    assert a.schema.schema_hash() == b.schema.schema_hash()
    assert PowerSGDRoundCodec(shapes, rank=8).schema.schema_hash() == a.schema.schema_hash()  # rank: a hyperparameter of the run
    assert a.compression_ratio() > 20
    policy_rest = [c.name for c in a.layout_p().codecs]
    assert "none" in policy_rest


def test_state_tensors_round_trip_warm_start():
    a = PowerSGDRoundCodec([(64, 64)], rank=2, min_numel=16, seed=1)
    b = PowerSGDRoundCodec([(64, 64)], rank=2, min_numel=16, seed=2)
    assert not torch.equal(a.q[0], b.q[0])
    b.load_state_tensors(a.state_tensors())
    assert torch.equal(a.q[0], b.q[0])
    b.load_state_tensors({"codec.powersgd.q.0": torch.full((64, 2), float("nan"))})   # garbage is ignored
    assert torch.equal(a.q[0], b.q[0])


def test_auxiliary_member_reduces_both_phases_without_values():
    shapes = [(64, 48)]
    codecs = [PowerSGDRoundCodec(shapes, rank=2, min_numel=16) for _ in range(3)]
    inputs = [[_low_rank(64, 48, 1, seed=1)], [_low_rank(64, 48, 1, seed=2)], None]
    swarm = FakeSwarm(3)
    try:
        def peer(i, collab):
            result, _ = collab.submit_round(RoundRequest(0, 0.0 if inputs[i] is None else 1.0), codecs[i], inputs[i]).wait()
            return result
        results = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert results[2].tensors is None
    torch.testing.assert_close(results[0].tensors[0], (inputs[0][0] + inputs[1][0]) / 2, rtol=1e-4, atol=1e-4)
