"""Streaming DiLoCo: one fragment per outer round, in turn; identical outer state on every peer after every round."""
from __future__ import annotations

import copy

import pytest
import torch

from swarm.averaging.layout import TensorLayout
from swarm.compression.codecs import CompressionPolicy
from swarm.compression.fragments import FragmentedRoundCodec
from swarm.compression.policy import FixedRoundCodec
from swarm.errors import ConfigError
from swarm.optim.core import CollaborativeOptimizer
from swarm.optim.strategies import StreamingDiLoCo, layers_of, strided_fragments
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)

F = 4


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*(m for _ in range(F) for m in (torch.nn.Linear(8, 8), torch.nn.Tanh())))


def _loss(model, peer, step):
    gen = torch.Generator().manual_seed(1000 * peer + step)
    x = torch.randn(8, 8, generator=gen)
    return torch.nn.functional.mse_loss(model(x), x.flip(1))


def _streaming(model, collab, **kw) -> CollaborativeOptimizer:
    mode = StreamingDiLoCo(kw.pop("overlap", True), outer_lr=0.7, outer_momentum=0.9, fragments=F, layers=layers_of(model))
    return CollaborativeOptimizer(collab, model.parameters(), torch.optim.AdamW, lr=0.01, mode=mode, **kw)


def _train(opt, model, i, steps):
    for step in range(steps):
        _loss(model, i, step).backward()
        opt.step(samples=8)
        opt.zero_grad()


def test_layers_are_strided_over_fragments():
    model = _model()
    assert layers_of(model) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert strided_fragments(layers_of(model), 2, 8) == [[0, 1, 4, 5], [2, 3, 6, 7]]
    with pytest.raises(ConfigError, match="at most 4 fragments"):
        strided_fragments(layers_of(model), 5, 8)
    with pytest.raises(ConfigError, match="positive integer"):
        StreamingDiLoCo(fragments=0)


def test_each_round_moves_one_fragment_in_turn_and_peers_hold_identical_outer_state():
    initial = _model()
    swarm = FakeSwarm(3, per_peer_target=16)   # 2 inner steps per round: each fragment every 8 inner steps

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = _streaming(model, collab, overlap=False)
        outer_after: dict[int, list[torch.Tensor]] = {0: [o.clone() for o in opt.strategy.outer_params]}
        opt.on_step.append(lambda report: outer_after.__setitem__(report.epoch, [o.clone() for o in opt.strategy.outer_params]))
        _train(opt, model, i, 2 * 2 * F)   # two outer steps of every fragment
        return opt, outer_after

    try:
        results = swarm.run_peers(peer)
    finally:
        swarm.close()
    (o0, outer0), others = results[0], results[1:]
    assert o0.epoch == 2 * F and sorted(outer0) == list(range(2 * F + 1))
    for opt, outer in others:
        assert opt.params_hash() == o0.params_hash()
        for epoch in outer0:                      # the same bytes after every fragment round
            assert all(torch.equal(a, b) for a, b in zip(outer[epoch], outer0[epoch]))
    for epoch in range(1, 2 * F + 1):             # round e moved fragment (e-1) mod F and nothing else
        moved = {i for i, (a, b) in enumerate(zip(outer0[epoch - 1], outer0[epoch])) if not torch.equal(a, b)}
        assert moved == set(o0.strategy.fragment_at(epoch - 1))


def test_a_round_sends_one_fragment_about_a_quarter_of_diloco_s_bytes():
    initial = _model()
    swarm = FakeSwarm(1, per_peer_target=8)
    sent: list[int] = []
    collab = swarm.collabs[0]
    submit = collab.submit_round

    def recording(request, codec, tensors):
        sent.append(sum(t.numel() for t in tensors))
        return submit(request, codec, tensors)

    collab.submit_round = recording
    try:
        model = copy.deepcopy(initial)
        opt = _streaming(model, collab, overlap=False)
        _train(opt, model, 0, F)
    finally:
        swarm.close()
    total = sum(p.numel() for p in model.parameters())
    assert sent == [total // F] * F
    assert isinstance(opt.codec, FragmentedRoundCodec)
    assert [c.predicted_bytes() * F for c in opt.codec.codecs] == [_full_bytes(model)] * F


def _full_bytes(model) -> int:
    """What one DiLoCo round of the whole model weighs with the same (default) codec."""
    layout = TensorLayout.build([p.shape for p in model.parameters()], lambda i, n: CompressionPolicy().codec_for(str(i), n))
    return FixedRoundCodec.from_layout(layout).predicted_bytes()


def test_a_failed_fragment_round_loses_no_inner_progress_and_is_retried():
    initial = _model()
    swarm = FakeSwarm(2, per_peer_target=16)
    swarm.fail_epochs = {1}

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = _streaming(model, collab, overlap=False)
        opt._retry_after = 0.0
        step = 0
        while opt.epoch < 3 and step < 200:
            _loss(model, i, step).backward()
            outer = [o.clone() for o in opt.strategy.outer_params]
            failed = opt.rounds_failed
            opt.step(samples=8)
            opt.zero_grad()
            if opt.rounds_failed > failed:   # the failed round moved no outer parameter, and training went on from the local ones
                assert opt.epoch == 1
                assert all(torch.equal(a, b) for a, b in zip(opt.strategy.outer_params, outer))
                assert not any(torch.equal(p.detach(), o) for p, o in zip(model.parameters(), outer))
            opt._retry_after = 0.0   # retry at once (the engine waits 1 s)
            step += 1
        return opt

    try:
        o0, o1 = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert o0.rounds_failed == o1.rounds_failed == 1
    assert o0.params_hash() == o1.params_hash() and o0.epoch == o1.epoch == 3
    retried = o0.history[1]
    assert retried.epoch == 2 and retried.samples >= 2 * 24   # both peers: the failed round's 16 samples plus the step after it


def test_the_schema_names_the_split_so_peers_with_another_split_never_meet():
    model = _model()
    shapes = [p.shape for p in model.parameters()]

    def fragmented(split):
        policy = CompressionPolicy()
        codecs = [FixedRoundCodec.from_layout(TensorLayout.build([shapes[i] for i in f], lambda i, n: policy.codec_for(str(i), n))) for f in split]
        return FragmentedRoundCodec(shapes, split, codecs)

    four, two = fragmented(strided_fragments(layers_of(model), 4, 8)), fragmented(strided_fragments(layers_of(model), 2, 8))
    assert four.schema.schema_hash() != two.schema.schema_hash()
    assert four.schema.schema_hash() == fragmented(strided_fragments(layers_of(model), 4, 8)).schema.schema_hash()
    with pytest.raises(ConfigError, match="exactly once"):
        fragmented([[0, 1, 2], [2, 3, 4, 5, 6, 7]])
    with pytest.raises(ConfigError, match="not one fragment"):
        four.validate([torch.zeros(3, 3)])


def test_a_newcomer_loads_every_fragment_s_outer_state_and_the_epoch():
    initial = _model()
    swarm = FakeSwarm(1, per_peer_target=8)
    try:
        model = copy.deepcopy(initial)
        opt = _streaming(model, swarm.collabs[0], overlap=False)
        _train(opt, model, 0, F + 1)
        state = opt.snapshot()
        fresh_model = copy.deepcopy(initial)
        fresh = _streaming(fresh_model, swarm.collabs[0], overlap=False)
        fresh.load_state(state)
    finally:
        swarm.close()
    assert fresh.epoch == F + 1 and fresh.params_hash() == opt.params_hash()
    for a, b in zip(fresh.strategy.outer_params, opt.strategy.outer_params):
        assert torch.equal(fresh.strategy.outer.state[a]["momentum_buffer"], opt.strategy.outer.state[b]["momentum_buffer"])
    assert all(torch.equal(p.detach(), o) for p, o in zip(fresh_model.parameters(), fresh.strategy.outer_params))


def test_overlapped_fragment_rounds_keep_the_inner_work_done_meanwhile():
    """One peer, outer lr 1 without momentum: each fragment's outer step moves it to where it was at submission,
    so with the drift kept the run equals plain local training, though the rounds run while inner steps go on."""
    initial = _model()
    swarm = FakeSwarm(1, per_peer_target=16, delay=0.05)
    steps = 30
    try:
        model = copy.deepcopy(initial)
        mode = StreamingDiLoCo(True, outer_lr=1.0, outer_momentum=0.0, fragments=F, layers=layers_of(model))
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.SGD, lr=0.05, mode=mode)
        _train(opt, model, 0, steps)
        opt.finish()
    finally:
        swarm.close()
    reference = copy.deepcopy(initial)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05)
    for step in range(steps):
        _loss(reference, 0, step).backward()
        sgd.step()
        sgd.zero_grad()
    assert opt.epoch >= F and any(r.staleness == 1 for r in opt.history)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-5)
