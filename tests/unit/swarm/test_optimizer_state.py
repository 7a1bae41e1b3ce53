"""The collaborative optimizer's state snapshot loads back exactly, for optimizers with tensor and int state."""
from __future__ import annotations

import pytest
import torch

from swarm.config import EngineConfig
from swarm.optim import Lamb
from swarm.optimizer import CollaborativeOptimizer
from swarm.state_sync import state_digest

pytestmark = pytest.mark.timeout(30)


class FakeTracker:
    def __init__(self):
        self.reports = []

    def report(self, **kw):
        self.reports.append(kw)

    def poke(self):
        pass


class FakeCollab:
    """Enough of a Collaboration for snapshot/load: no network."""

    peer_id = "me"

    def __init__(self):
        self.config = EngineConfig()
        self.tracker = FakeTracker()

    def _attach(self, opt):
        self.opt = opt


def trained(opt_cls, seed, **kw):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))
    opt = CollaborativeOptimizer(FakeCollab(), model.parameters(), opt_cls, **kw)
    for _ in range(3):
        model(torch.randn(4, 8)).pow(2).mean().backward()
        with torch.no_grad():
            opt.inner.step()
        opt.zero_grad()
    opt.epoch = 5
    return model, opt


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.AdamW, {"lr": 1e-2}), (Lamb, {"lr": 1e-2}), (torch.optim.SGD, {"lr": 0.1, "momentum": 0.9})])
def test_snapshot_loads_back_bitwise(opt_cls, kw):
    src_model, src = trained(opt_cls, 0, **kw)
    state = src.snapshot()
    dst_model, dst = trained(opt_cls, 1, **kw)
    assert src.params_hash() != dst.params_hash()
    dst.load_state(state)
    assert dst.epoch == 5 and dst.params_hash() == src.params_hash()
    assert state_digest(dst.snapshot().tensors, 5) == state_digest(state.tensors, 5)
    # the next inner step behaves identically on both
    x = torch.randn(4, 8)
    for model, opt in ((src_model, src), (dst_model, dst)):
        model(x).pow(2).mean().backward()
        opt.inner.step()
    assert dst.params_hash() == src.params_hash()
