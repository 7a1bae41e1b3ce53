"""swarm.integrations.transformers: the Trainer's optimizer steps with the swarm, its rate follows the global epoch
on every peer, and a GradScaler's skipped step contributes nothing."""
from __future__ import annotations

import copy

import pytest
import torch

pytest.importorskip("transformers")

from swarm.errors import ConfigError
from swarm.integrations.transformers import SwarmEpochLR, _samples_per_step
from swarm.optim.core import CollaborativeOptimizer
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)


def schedule(epoch: int) -> float:
    return 1.0 / (1 + epoch)


def trainer_loop(collab, model, gen, steps, samples=8):
    """What transformers.Trainer does per step: backward, optimizer.step(), lr_scheduler.step(), zero_grad."""
    opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.SGD, lr=0.1, lr_schedule=schedule,
                                 samples_per_step=samples)
    scheduler = SwarmEpochLR(opt)
    lrs: dict[int, float] = {}
    for _ in range(steps):
        x = torch.randn(samples, 4, generator=gen)
        (model(x) - x.sum(1, keepdim=True)).pow(2).mean().backward()
        opt.step()
        scheduler.step()
        lrs.setdefault(opt.epoch, scheduler.get_last_lr()[0])
        model.zero_grad()
    return opt, lrs


def test_every_peer_has_the_same_rate_at_each_epoch_and_identical_parameters():
    swarm = FakeSwarm(2, per_peer_target=16, timeout=10.0)
    torch.manual_seed(0)
    initial = torch.nn.Linear(4, 1)

    def peer(i, collab):
        model = copy.deepcopy(initial)
        opt, lrs = trainer_loop(collab, model, torch.Generator().manual_seed(i), steps=20)
        return model, opt, lrs

    try:
        (m0, o0, lrs0), (m1, o1, lrs1) = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert o0.epoch >= 4 and o0.epoch == o1.epoch
    for lrs in (lrs0, lrs1):
        assert lrs == {e: pytest.approx(0.1 * schedule(e)) for e in lrs}   # the scheduler never overrides the epoch's rate
    assert set(lrs0) == set(lrs1) and all(lrs0[e] == lrs1[e] for e in lrs0)
    for a, b in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(a, b)
    state = o0.state_dict()   # what the Trainer saves in its checkpoints
    assert state["epoch"] == o0.epoch and "param_groups" in state["inner"]
    o0.load_state_dict(state)
    with pytest.raises(ConfigError, match="not a collaborative optimizer's state_dict"):
        o0.load_state_dict({"state": {}})


def test_grad_scaler_skips_an_overflowed_step_without_counting_its_samples():
    swarm = FakeSwarm(1, per_peer_target=10_000)
    model = torch.nn.Linear(4, 1)
    try:
        opt = swarm_opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.SGD, lr=0.1,
                                                 samples_per_step=8)
        assert opt.param_groups is swarm_opt.inner.param_groups
        scaler = torch.amp.GradScaler("cpu")
        x = torch.randn(8, 4)
        scaler.scale(model(x).pow(2).mean()).backward()
        scaler.step(opt)
        scaler.update()
        assert swarm_opt.local_samples == 8
        model.zero_grad()
        scaler.scale(model(x).pow(2).mean() * float("inf")).backward()
        scaler.step(opt)                     # found inf: the Trainer's scaler does not call step()
        scaler.update()
        assert swarm_opt.local_samples == 8
    finally:
        swarm.close()


def test_samples_per_step_and_one_process_per_peer():
    class Args:
        per_device_train_batch_size, gradient_accumulation_steps, world_size = 8, 4, 1

    assert _samples_per_step(Args) == 32
    Args.world_size = 2
    with pytest.raises(ConfigError, match="local_ranks"):
        _samples_per_step(Args)
