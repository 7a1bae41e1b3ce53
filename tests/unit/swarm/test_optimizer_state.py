"""The collaborative optimizer's state snapshot loads back exactly, for optimizers with tensor and int state."""
from __future__ import annotations

import pytest
import torch

from swarm.averaging.state_sync import state_digest
from swarm.config import EngineConfig
from swarm.optim import Lamb
from swarm.optim.core import CollaborativeOptimizer

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

    def begin_training(self, schema, snapshot):
        self.schema = schema


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


def bn_model(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 2))
    model(torch.randn(32, 8) * (1 + seed))  # training-mode forward: running statistics move, differently per seed
    return model


def test_buffers_travel_with_the_state():
    src_model, dst_model = bn_model(0), bn_model(1)
    src = CollaborativeOptimizer(FakeCollab(), src_model.parameters(), torch.optim.SGD, lr=0.1, buffers=src_model.buffers())
    dst = CollaborativeOptimizer(FakeCollab(), dst_model.parameters(), torch.optim.SGD, lr=0.1, buffers=dst_model.buffers())
    bn_src, bn_dst = src_model[1], dst_model[1]
    assert not torch.equal(bn_src.running_mean, bn_dst.running_mean)
    state = src.snapshot()
    assert {"buffer.0", "buffer.1", "buffer.2"} <= set(state.tensors)  # running_mean, running_var, num_batches_tracked
    dst.load_state(state)
    for a, b in zip(src_model.buffers(), dst_model.buffers()):
        assert torch.equal(a, b)
    src_model.eval(), dst_model.eval()
    x = torch.randn(4, 8)
    assert torch.equal(src_model(x), dst_model(x)), "the downloaded model must evaluate like its donor's"


def test_a_state_without_buffers_keeps_ours_and_a_misfit_is_refused():
    from swarm.errors import NetworkError

    src_model, dst_model = bn_model(0), bn_model(1)
    src = CollaborativeOptimizer(FakeCollab(), src_model.parameters(), torch.optim.SGD, lr=0.1)  # shares no buffers
    dst = CollaborativeOptimizer(FakeCollab(), dst_model.parameters(), torch.optim.SGD, lr=0.1, buffers=dst_model.buffers())
    before = dst_model[1].running_mean.clone()
    dst.load_state(src.snapshot())
    assert torch.equal(dst_model[1].running_mean, before)
    state = src.snapshot()
    state.tensors["buffer.0"] = torch.zeros(3)
    params_before = dst.params_hash()
    with pytest.raises(NetworkError, match="buffer 0"):
        dst.load_state(state)
    assert dst.params_hash() == params_before, "a state that does not fit must change nothing"
