"""Overlapped sync mode: updates land at most one step late, identical on every peer, and no sample is lost."""
from __future__ import annotations

import copy
import time

import pytest
import torch

from swarm.optim.core import CollaborativeOptimizer
from tests.helpers.fake_swarm import FakeSwarm

pytestmark = pytest.mark.timeout(120)


def _train(opt, model, gen, steps, sleep=0.01):
    """A training loop that records which parameter version each micro-batch's gradients were computed at."""
    versions_of: dict[int, list[int]] = {}     # round epoch -> versions of the micro-batches it averaged
    current: list[int] = []
    reports = []
    opt.on_step.append(reports.append)
    for _ in range(steps):
        version = opt.epoch
        x = torch.randn(8, 4, generator=gen)
        loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
        loss.backward()
        before = opt.pending
        opt.step(samples=8)
        opt.zero_grad()
        current.append(version)
        if opt.pending is not None and opt.pending is not before:
            versions_of.setdefault(opt.pending.epoch, []).extend(current)
            current = []
        time.sleep(sleep)
    opt.finish()
    return reports, versions_of, current


def test_an_update_is_never_more_than_one_step_late():
    swarm = FakeSwarm(1, per_peer_target=16, delay=0.12)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.SGD, lr=0.05, overlap=True)
        reports, versions_of, _ = _train(opt, model, torch.Generator().manual_seed(1), steps=60)
    finally:
        swarm.close()
    assert len(reports) >= 5
    assert [r.epoch for r in reports] == list(range(1, len(reports) + 1)), "each update applied once, in order"
    for r in reports:
        update = r.epoch - 1                     # update e takes the parameters from version e to e + 1
        oldest = min(versions_of[update])
        assert update - oldest <= 1, f"update {update} used gradients of version {oldest}"
        assert r.staleness == update - oldest
    assert any(r.staleness == 1 for r in reports), "the rounds never overlapped with computation"


def test_peers_hold_identical_parameters_and_a_failed_round_loses_no_samples():
    steps = 100
    swarm = FakeSwarm(2, per_peer_target=16, delay=0.05, timeout=3.0)
    swarm.fail_epochs = {2}
    torch.manual_seed(0)
    initial = torch.nn.Linear(4, 1)

    def peer(i, collab):
        model = copy.deepcopy(initial)            # identical initial parameters
        opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, overlap=True)
        reports, _, _ = _train(opt, model, torch.Generator().manual_seed(10 + i), steps=steps, sleep=0.02)
        return opt, reports

    try:
        (opt0, rep0), (opt1, rep1) = swarm.run_peers(peer)
    finally:
        swarm.close()
    assert opt0.rounds_failed >= 1 and opt1.rounds_failed >= 1
    h0, h1 = {r.epoch: r.params_hash for r in rep0}, {r.epoch: r.params_hash for r in rep1}
    common = set(h0) & set(h1)
    assert len(common) >= 4 and all(h0[e] == h1[e] for e in common), "peers that step must hold identical parameters"
    assert 3 in common, "the failed epoch was retried"
    assert all(r.staleness <= 1 for r in rep0 + rep1)
    # every sample computed is in an applied update or still accumulated: the failed round dropped none
    applied = sum(r.samples for r in (rep0 if len(rep0) >= len(rep1) else rep1))
    assert applied + opt0.local_samples + opt1.local_samples == 2 * 8 * steps


def test_finish_applies_the_round_in_flight():
    swarm = FakeSwarm(1, per_peer_target=8, delay=0.3)
    try:
        model = torch.nn.Linear(2, 1)
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.SGD, lr=0.1, overlap=True)
        model(torch.ones(1, 2)).sum().backward()
        opt.step(samples=8)
        assert opt.pending is not None and opt.epoch == 0
        opt.finish()
        assert opt.pending is None and opt.epoch == 1 and opt.history[-1].staleness == 0
    finally:
        swarm.close()


def test_a_peer_alone_at_an_epoch_counts_one_failed_round_however_often_it_retries(caplog):
    """A peer whose swarm restarts around it forms a group of one once a second (swarm.errors.Alone): that is one wait
    for the swarm, so one failed round and one warning for the epoch, not one per retry; the epoch then commits."""
    swarm = FakeSwarm(1, per_peer_target=8)
    swarm.alone_tries = {1: 3}
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = CollaborativeOptimizer(swarm.collabs[0], model.parameters(), torch.optim.SGD, lr=0.05)
        with caplog.at_level("WARNING", logger="swarm.optim.core"):
            reports, _, _ = _train(opt, model, torch.Generator().manual_seed(1), steps=120, sleep=0.03)
    finally:
        swarm.close()
    assert swarm.collabs[0]._attempts[1] == 3, "the peer retried the epoch until it was no longer alone"
    assert 2 in {r.epoch for r in reports}, "epoch 1's round committed once the peer was not alone"
    assert opt.rounds_failed == 1
    assert sum("alone in the group of epoch 1" in r.getMessage() for r in caplog.records) == 1
