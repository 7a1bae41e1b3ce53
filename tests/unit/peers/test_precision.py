"""peers.precision: autocast and GradScaler wiring of the daemon's loop; an overflowed fp16 step reaches nobody."""
from __future__ import annotations

import copy

import pytest
import torch

from peers.precision import MixedPrecision
from swarm.errors import ConfigError
from swarm.optim.core import CollaborativeOptimizer
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")
def test_auto_is_fp32_on_cpu_and_fp16_with_a_scaler_on_cuda():
    cpu = MixedPrecision.from_config("auto", "cpu")
    assert cpu.dtype is None and cpu.scaler is None
    cuda = MixedPrecision("auto", "cuda")     # constructing it needs no GPU
    assert cuda.dtype == torch.float16 and cuda.scaler is not None
    assert MixedPrecision("bf16", "cpu").scaler is None                    # bf16 needs no loss scaling
    with pytest.raises(ConfigError, match="unknown precision 'fp8'"):
        MixedPrecision("fp8", "cpu")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_runs_the_forward_in_low_precision(precision):
    amp = MixedPrecision(precision, "cpu")
    model = torch.nn.Linear(4, 2)
    with amp.autocast():
        out = model(torch.randn(3, 4))
    assert out.dtype == amp.dtype


def train(collab, model, amp, gen, steps, overflow_at=()):
    opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.SGD, lr=0.1)
    contributed = 0
    for step in range(steps):
        x = torch.randn(8, 4, generator=gen)
        with amp.autocast():
            loss = (model(x).float() - x.sum(1, keepdim=True)).pow(2).mean()
        if step in overflow_at:
            loss = loss * float("inf")     # what an fp16 overflow does to the scaled gradients
        amp.backward(loss)
        if amp.step(opt, samples=8):
            contributed += 8
        opt.zero_grad()
    return opt, contributed


def test_an_overflowed_fp16_step_on_one_peer_leaves_every_peer_finite_and_identical():
    swarm = FakeSwarm(2, per_peer_target=16, timeout=10.0)
    torch.manual_seed(0)
    initial = torch.nn.Linear(4, 1)
    amps = [MixedPrecision("fp16", "cpu"), MixedPrecision("fp16", "cpu")]

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt, contributed = train(collab, model, amps[i], torch.Generator().manual_seed(i), steps=24,
                                 overflow_at={5, 6} if i == 0 else ())
        return model, opt, contributed

    try:
        (m0, o0, c0), (m1, _, c1) = swarm.run_peers(peer)
    finally:
        swarm.close()
    # fp16 gradients can also overflow on their own while the scaler finds its scale: the forced ones come on top
    assert amps[0].skipped_steps >= 2
    assert c0 == (24 - amps[0].skipped_steps) * 8 and c1 == (24 - amps[1].skipped_steps) * 8   # skipped samples not counted
    assert o0.epoch >= 3
    for a, b in zip(m0.parameters(), m1.parameters()):
        assert torch.isfinite(a).all() and torch.equal(a, b)
