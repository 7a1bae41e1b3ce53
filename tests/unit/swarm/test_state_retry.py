"""Re-sync after a failed state download: no hammering of the donors, and a donor that failed is not asked again
while its record (which outlives a dead peer) still lists it. Seen in tests/chaos: a newcomer whose donor died
mid-transfer retried the dead donor a dozen times in half a second, once per micro-batch."""
from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch

from swarm import collaboration as collaboration_module
from swarm.averaging.progress import LocalProgress, SwarmView
from swarm.collaboration import Collaboration
from swarm.config import EngineConfig
from swarm.errors import NetworkError
from swarm.net.records import ProgressRecord
from swarm.optim.core import CollaborativeOptimizer

pytestmark = pytest.mark.timeout(30)


def record(peer_id: str, epoch: int) -> ProgressRecord:
    return ProgressRecord(peer_id=peer_id, epoch=epoch, samples=0, samples_per_second=1.0, role="trainer", upload_bps=1.0,
                          download_bps=1.0, time=0.0, training=True)


class BehindTracker:
    """This peer is at epoch 0; the swarm is at epoch 5."""

    target_batch_size = 10**9

    def __init__(self):
        self.local = LocalProgress()
        self.view = SwarmView(epoch=5, peers=(record("donor", 5),), fetched_at=time.monotonic())

    def report(self, **kw):
        pass

    def poke(self):
        pass

    def ready(self, epoch):
        return False


class FailingDownloads:
    peer_id = "me"
    role = "trainer"

    def __init__(self):
        self.config = EngineConfig()
        self.tracker = BehindTracker()
        self.calls = 0

    def begin_training(self, schema, snapshot):
        pass

    def download_state(self, donors, min_epoch):
        self.calls += 1
        raise NetworkError("donor died mid-transfer")


def test_a_failed_download_is_retried_after_a_pause_not_at_every_micro_batch():
    collab = FailingDownloads()
    model = torch.nn.Linear(4, 1)
    opt = CollaborativeOptimizer(collab, model.parameters(), torch.optim.SGD, lr=0.1)
    for _ in range(20):
        model(torch.randn(2, 4)).sum().backward()
        assert opt.step(samples=2) is False
        opt.zero_grad()
    assert collab.calls == 1
    opt._retry_after = 0.0  # the pause is over
    model(torch.randn(2, 4)).sum().backward()
    opt.step(samples=2)
    assert collab.calls == 2


def test_a_donor_that_failed_is_not_asked_again_for_a_record_lifetime(monkeypatch):
    calls: list[list[str]] = []

    async def download_from_any(p2p, run_id, donors, min_epoch, timeout, attempts=3, authorizer=None, failed=None, progress=None, rate_bps=None, asked=None):
        calls.append(list(donors))
        for donor in donors:
            failed(donor)
        raise NetworkError("could not download the state")

    monkeypatch.setattr(collaboration_module, "download_from_any", download_from_any)
    collab = Collaboration("run", config=EngineConfig(record_ttl=8.0), start=False)
    collab.node = SimpleNamespace(p2p=None)  # type: ignore[assignment]
    collab.loop.start()
    try:
        with pytest.raises(NetworkError):
            collab.download_state(["dead"], 5)
        with pytest.raises(NetworkError, match="every donor failed"):
            collab.download_state(["dead"], 5)
        with pytest.raises(NetworkError, match="could not download"):
            collab.download_state(["dead", "alive"], 5)
        assert calls == [["dead"], ["alive"]]
        collab._failed_donors["dead"] = time.monotonic() - 1  # its quarantine is over
        with pytest.raises(NetworkError, match="every donor failed"):
            collab.download_state(["alive"], 5)
        with pytest.raises(NetworkError, match="could not download"):
            collab.download_state(["dead", "alive"], 5)
        assert calls[-1] == ["dead"]
    finally:
        collab.node = None
        collab.loop.stop()
