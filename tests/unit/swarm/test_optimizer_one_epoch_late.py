"""A peer one epoch behind the swarm asks the formed group for its result only when its parameters are the swarm's
at its epoch (it stepped with a group or downloaded the state): a newcomer's own initial parameters plus the group's
averaged update would be parameters nobody else holds."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from swarm.optim.core import CollaborativeOptimizer
from tests.unit.swarm.test_optimizer_state import FakeCollab, trained

pytestmark = pytest.mark.timeout(30)


def late_by_one(opt: CollaborativeOptimizer) -> None:
    opt.collab.tracker.view = SimpleNamespace(epoch=opt.epoch + 1)


def test_a_newcomer_with_its_own_parameters_downloads_instead():
    model = torch.nn.Linear(4, 2)
    opt = CollaborativeOptimizer(FakeCollab(), model.parameters(), torch.optim.SGD, lr=0.1)
    late_by_one(opt)   # a fresh peer at epoch 0; the swarm at epoch 1
    assert not opt._one_epoch_late()


def test_a_peer_synced_at_its_epoch_asks_once_per_epoch():
    _, src = trained(torch.optim.SGD, 0, lr=0.1)
    _, opt = trained(torch.optim.SGD, 1, lr=0.1)
    opt.load_state(src.snapshot())   # epoch 5, the swarm's parameters
    late_by_one(opt)
    assert opt._one_epoch_late()
    assert not opt._one_epoch_late(), "one try per epoch: the next micro-batch downloads the state"
    opt.collab.tracker.view = SimpleNamespace(epoch=opt.epoch + 2)
    opt._late_tried = -1
    assert not opt._one_epoch_late(), "two epochs behind: only the state will do"
