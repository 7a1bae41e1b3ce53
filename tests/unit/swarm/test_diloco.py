"""DiLoCo mode: inner steps, averaged pseudo-gradients, an outer Nesterov step; identical outer state on every peer."""
from __future__ import annotations

import copy

import pytest
import torch

from swarm.errors import ConfigError
from swarm.optim.core import CollaborativeOptimizer
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)


def _data(peer: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * peer + step)
    x = torch.randn(8, 6, generator=gen)
    return x, x[:, :1] * 2 - x[:, 1:2]


def _loss(model, peer, step):
    x, y = _data(peer, step)
    return torch.nn.functional.mse_loss(model(x), y)


def _initial() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))


def test_one_inner_step_outer_lr_1_no_momentum_is_sync_averaging_of_parameters():
    initial = _initial()
    swarm = FakeSwarm(2, per_peer_target=8)   # every micro-batch of 8 completes the epoch: H = 1

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.AdamW, lr=0.05, outer_lr=1.0, outer_momentum=0.0, mode="diloco")
        _loss(model, i, 0).backward()
        assert opt.step(samples=8) is True
        return model, opt

    try:
        (m0, o0), (m1, o1) = swarm.run_peers(peer)
    finally:
        swarm.close()
    # reference: each peer's AdamW step from the same start, then the plain mean of the parameters
    expected = []
    for i in range(2):
        model = copy.deepcopy(initial)
        inner = torch.optim.AdamW(model.parameters(), lr=0.05)
        _loss(model, i, 0).backward()
        inner.step()
        expected.append([p.detach().clone() for p in model.parameters()])
    for p0, p1, a, b in zip(m0.parameters(), m1.parameters(), *expected):
        assert torch.equal(p0, p1)
        torch.testing.assert_close(p0.detach(), (a + b) / 2, rtol=0, atol=1e-6)
    assert o0.epoch == o1.epoch == 1 and o0.params_hash() == o1.params_hash()
    assert o0.history[-1].codec == "none"    # the round says what it sent (small tensors travel exactly)


def test_peers_end_every_outer_step_identical_and_weights_follow_samples():
    initial = _initial()
    swarm = FakeSwarm(3, per_peer_target=24)   # 3 inner steps of 8 per outer step

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.AdamW, lr=0.01, outer_lr=0.7, outer_momentum=0.9, mode="diloco")
        losses = []
        for step in range(15):
            loss = _loss(model, i, step)
            loss.backward()
            losses.append(loss.item())
            opt.step(samples=8)
            opt.zero_grad()
            if opt.strategy.inner_steps == 0:   # right after an outer step the local parameters are the outer ones
                assert all(torch.equal(p, o) for p, o in zip(model.parameters(), opt.strategy.outer_params))
        return opt, losses

    try:
        results = swarm.run_peers(peer)
    finally:
        swarm.close()
    opts = [o for o, _ in results]
    assert all(o.epoch == 5 for o in opts)
    for epoch in range(1, 6):
        assert len({o.history[epoch - 1].params_hash for o in opts}) == 1
    momenta = [torch.cat([o.strategy.outer.state[p]["momentum_buffer"].reshape(-1) for p in o.strategy.outer_params]) for o in opts]
    assert all(torch.equal(momenta[0], m) for m in momenta[1:])
    assert opts[0].history[-1].samples == 72       # 3 peers x 24 samples
    assert not all(torch.equal(p, q) for p, q in zip(opts[0].strategy.outer_params, initial.parameters()))


def test_newcomer_loads_outer_parameters_momentum_and_epoch():
    initial = _initial()
    swarm = FakeSwarm(1, per_peer_target=16)
    try:
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.AdamW, lr=0.01, mode="diloco")
        for step in range(8):
            _loss(model, 0, step).backward()
            opt.step(samples=8)
            opt.zero_grad()
        _loss(model, 0, 99).backward()
        opt.step(samples=8)                              # an inner step after the last outer step: local != outer
        state = opt.snapshot()
    finally:
        swarm.close()
    assert state.epoch == 4 and any(k.endswith("momentum_buffer") for k in state.tensors)
    other = FakeSwarm(1, per_peer_target=16)
    try:
        fresh_model = copy.deepcopy(initial)
        fresh = CollaborativeOptimizer(other.collabs[0], fresh_model.parameters(), torch.optim.AdamW, lr=0.01, mode="diloco")
        fresh.load_state(state)
    finally:
        other.close()
    assert fresh.epoch == 4 and fresh.params_hash() == opt.params_hash()
    for p, o in zip(fresh_model.parameters(), opt.strategy.outer_params):
        assert torch.equal(p.detach(), o)       # inner steps start from the outer parameters
    for a, b in zip(fresh.strategy.outer_params, opt.strategy.outer_params):
        assert torch.equal(fresh.strategy.outer.state[a]["momentum_buffer"], opt.strategy.outer.state[b]["momentum_buffer"])


def test_overlap_keeps_the_inner_work_done_while_the_round_ran():
    """One peer, outer lr 1 without momentum: the outer step moves to where the inner steps were at submission,
    so with the drift kept the run equals plain local training, though every outer update lands one step late."""
    initial = _initial()
    swarm = FakeSwarm(1, per_peer_target=16, delay=0.1)
    steps = 30
    try:
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.SGD, lr=0.05, outer_lr=1.0, outer_momentum=0.0, overlap=True, mode="diloco")
        for step in range(steps):
            _loss(model, 0, step).backward()
            opt.step(samples=8)
            opt.zero_grad()
        opt.finish()
    finally:
        swarm.close()
    reference = copy.deepcopy(initial)
    sgd = torch.optim.SGD(reference.parameters(), lr=0.05)
    for step in range(steps):
        _loss(reference, 0, step).backward()
        sgd.step()
        sgd.zero_grad()
    assert opt.epoch >= 3
    assert all(r.staleness <= 1 for r in opt.history) and any(r.staleness == 1 for r in opt.history)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=0, atol=1e-5)


def test_a_failed_outer_round_is_retried_with_all_local_progress():
    initial = _initial()
    swarm = FakeSwarm(2, per_peer_target=16)
    swarm.fail_epochs = {1}

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.AdamW, lr=0.01, mode="diloco")
        opt._retry_after = 0.0
        step = 0
        while opt.epoch < 3 and step < 200:
            _loss(model, i, step).backward()
            opt.step(samples=8)
            opt.zero_grad()
            opt._retry_after = 0.0   # retry at once (the engine waits 1 s)
            step += 1
        return opt

    try:
        o0, o1 = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert o0.rounds_failed == o1.rounds_failed == 1
    assert o0.params_hash() == o1.params_hash()
    retried = o0.history[1]
    assert retried.epoch == 2 and retried.samples >= 2 * 24   # the failed round's samples plus the ones after it


def test_bad_outer_hyperparameters_are_refused():
    swarm = FakeSwarm(1)
    try:
        with pytest.raises(ConfigError, match="outer_momentum"):
            CollaborativeOptimizer(swarm.collabs[0], _initial().parameters(), torch.optim.AdamW, lr=0.01, outer_momentum=1.0, mode="diloco")
    finally:
        swarm.close()
