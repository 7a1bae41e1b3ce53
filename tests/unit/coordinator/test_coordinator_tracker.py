"""coordinator.tracker: swarm-wide figures from progress and metrics records (no network)."""
from __future__ import annotations

import math

from coordinator.history import History
from coordinator.metrics import CoordinatorMetrics
from coordinator.tracker import Tracker, aggregate
from swarm.net.records import MetricsRecord, ProgressRecord


def progress(pid: str, epoch: int = 3, rate: float = 10.0, role: str = "trainer", leaving: bool = False) -> ProgressRecord:
    return ProgressRecord(peer_id=pid, epoch=epoch, samples=5, samples_per_second=rate, role=role, upload_bps=1e6,
                          download_bps=2e6, time=0.0, leaving=leaving)


def metrics(pid: str, epoch: int = 3, loss: float = 4.0, t: float = 1.0, total: int = 100, **kw) -> MetricsRecord:
    return MetricsRecord(peer_id=pid, epoch=epoch, loss=loss, samples_per_second=10.0, mini_steps=10, samples_total=total,
                         round_seconds=0.25, time=t, **kw)


def test_aggregate_figures():
    fig = aggregate(
        [progress("a"), progress("b", epoch=4, rate=5.0), progress("c", role="client", rate=1.0), progress("x", role="aux", rate=99.0),
         progress("gone", leaving=True), progress("me")],
        [metrics("a", loss=4.0), metrics("a", loss=3.0, t=2.0), metrics("b", loss=-1.0), metrics("gone", loss=1.0)],
        {}, now=50.0, exclude={"me"},
    )
    assert fig.epoch == 4
    assert fig.samples_per_second == 16.0          # aux brings no samples
    assert fig.loss == 3.0                          # a's latest; b's -1 means "no loss yet"
    assert fig.peers_by_role == {"trainer": 2, "client": 1, "aux": 1}
    ids = {p.id for p in fig.peers}
    assert ids == {"a", "b", "c", "x"}              # leaving and excluded peers are not listed
    c = next(p for p in fig.peers if p.id == "c")
    assert c.client_mode and c.loss is None and c.upload_bps == 1e6 and c.last_seen == 50.0


def test_expired_peer_drops_off_and_history_keeps_it(tmp_path):
    history = History(tmp_path / "h.sqlite")
    m = CoordinatorMetrics("r")
    tracker = Tracker(history, m)
    tracker.update([progress("a"), progress("b")], [metrics("a", group_size=2, bytes_sent=1000), metrics("b", group_size=2, bytes_sent=500)], now=10.0)
    assert {p.id for p in tracker.figures.peers} == {"a", "b"}
    fig = tracker.update([progress("a", epoch=4)], [metrics("a", epoch=4, t=3.0, total=150, group_size=1, bytes_sent=0)], now=12.0)
    assert [p.id for p in fig.peers] == ["a"]        # b's record expired: it is not in the DHT's answer
    assert fig.peers[0].samples_contributed == 150 and fig.peers[0].online_since == 10.0
    assert history.peer("b").last_seen == 10.0
    rounds = history.rounds()
    assert [(r.epoch, r.members, r.bytes_sent) for r in rounds] == [(4, 1, 0), (3, 2, 1500)]
    fig = tracker.update([], [], now=14.0)
    assert fig.epoch == 4 and fig.peers == []       # nobody online: the run stays at its epoch
    text = m.render().decode()
    assert "swarm_bytes_sent_total 1500.0" in text
    assert 'swarm_peers{role="trainer"} 0.0' in text
    history.close()
    # a restarted coordinator restores the counters from history
    history = History(tmp_path / "h.sqlite")
    m2 = CoordinatorMetrics("r")
    t2 = Tracker(history, m2)
    assert t2.figures.epoch == 4
    text = m2.render().decode()
    assert "swarm_bytes_sent_total 1500.0" in text and "swarm_round_seconds_count 3.0" in text
    history.close()


def test_metrics_exposition_parses():
    from prometheus_client.parser import text_string_to_metric_families

    m = CoordinatorMetrics("run")
    m.set_swarm(epoch=7, samples_per_second=123.5, loss=None, peers_by_role={"trainer": 3})
    m.observe_round(0.3, 2_000_000)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    assert families["swarm_epoch"].samples[0].value == 7
    assert math.isnan(families["swarm_loss"].samples[0].value)
    assert {s.labels["role"]: s.value for s in families["swarm_peers"].samples} == {"trainer": 3, "client": 0, "aux": 0}
    assert families["swarm_bytes_sent"].samples[0].value == 2_000_000
    assert families["swarm_round_seconds"].type == "histogram"
