"""Error feedback: nothing a lossy compressor drops is lost over rounds."""
from __future__ import annotations

import pytest
import torch

from swarm.compression.codecs import get_codec
from swarm.compression.error_feedback import ErrorFeedback
from swarm.compression.powersgd import low_rank_round, orthogonalize

pytestmark = pytest.mark.timeout(120)


def _roundtrip(codec_name):
    codec = get_codec(codec_name)
    return lambda m: codec.decode(codec.encode(m.reshape(-1))).reshape(m.shape)


def _top1(m: torch.Tensor) -> torch.Tensor:
    q = torch.ones(m.shape[1], 1)
    p = orthogonalize(m @ q)
    return p @ (m.t() @ p).t()


@pytest.mark.parametrize("compress", [_roundtrip("uniform8bit"), _roundtrip("fp16"), _top1, lambda m: torch.zeros_like(m)],
                         ids=["uniform8bit", "fp16", "rank1", "drop-everything"])
def test_sum_of_sent_plus_residual_equals_sum_of_inputs(compress):
    gen = torch.Generator().manual_seed(0)
    ef = ErrorFeedback()
    inputs_sum = torch.zeros(24, 16, dtype=torch.float64)
    sent_sum = torch.zeros(24, 16, dtype=torch.float64)
    for _ in range(30):
        x = torch.randn(24, 16, generator=gen) * 3
        m = ef.compensate("w", x)
        sent = compress(m)
        ef.update("w", m, sent)
        inputs_sum += x.double()
        sent_sum += sent.double()
    residual = ef.residual("w").double()
    torch.testing.assert_close(sent_sum + residual, inputs_sum, rtol=0, atol=1e-3)


def test_residual_stays_bounded_with_a_contractive_compressor():
    gen = torch.Generator().manual_seed(1)
    ef = ErrorFeedback()
    codec = _roundtrip("uniform8bit")
    norms = []
    for _ in range(50):
        m = ef.compensate("w", torch.randn(1000, generator=gen))
        ef.update("w", m, codec(m))
        norms.append(ef.norm())
    assert max(norms[25:]) < 2 * max(norms[:25]) + 1e-6


def test_compensate_does_not_modify_its_input_and_reset_forgets():
    ef = ErrorFeedback()
    x = torch.ones(3)
    m = ef.compensate("a", x)
    ef.update("a", m, torch.zeros(3))
    again = ef.compensate("a", x)
    assert torch.equal(x, torch.ones(3)) and torch.equal(again, torch.full((3,), 2.0))
    ef.reset()
    assert len(ef) == 0 and torch.equal(ef.compensate("a", x), x)


def test_shape_mismatch_is_refused():
    ef = ErrorFeedback()
    ef.update("a", torch.ones(3), torch.zeros(3))
    with pytest.raises(ValueError, match="shape"):
        ef.compensate("a", torch.ones(4))


def test_many_members_weighted_mean_of_residuals_is_what_the_swarm_missed():
    """PowerSGD's local error feedback: the update is the weighted mean of each member's local decompression."""
    gen = torch.Generator().manual_seed(2)
    ms = [torch.randn(20, 12, generator=gen) for _ in range(3)]
    weights = [1.0, 2.0, 5.0]
    update, local, _ = low_rank_round(ms, weights, torch.randn(12, 2, generator=gen))
    mean_m = sum(w * m for w, m in zip(weights, ms)) / sum(weights)
    mean_residual = sum(w * (m - s) for w, m, s in zip(weights, ms, local)) / sum(weights)
    torch.testing.assert_close(update + mean_residual, mean_m, rtol=0, atol=1e-5)
