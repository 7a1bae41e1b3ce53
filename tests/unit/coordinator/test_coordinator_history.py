"""coordinator.history: time series, peers seen across restarts, idempotent round reports, checkpoints."""
from __future__ import annotations

import sqlite3

import pytest

from coordinator.history import History
from swarm.errors import DataError


@pytest.fixture
def history(tmp_path):
    h = History(tmp_path / "history.sqlite")
    yield h
    h.close()


def test_series_buckets_and_skips_missing_loss(history):
    for i in range(100):
        history.add_sample(1000.0 + i, epoch=i // 10, samples_per_second=10.0 * i, loss=None if i < 5 else 5.0 - i / 100, peers=3)
    loss = history.series("loss", points=10)
    assert 9 <= len(loss) <= 11
    assert all(v is not None for _, v in loss)
    assert loss[0][0] >= 1005.0
    assert loss[-1][1] < loss[0][1]
    assert len(history.series("samples_per_second", points=1000)) == 100
    assert [v for _, v in history.series("epoch", since=1095.0)] == [9.0] * 5
    with pytest.raises(ValueError):
        history.series("nope")


def test_peer_samples_accumulate_over_process_restarts(history):
    history.see_peer("A", role="trainer", device="cpu", t=1.0, samples_total=100)
    history.see_peer("A", role="trainer", device="cpu", t=2.0, samples_total=300)
    history.see_peer("A", role="trainer", device="", t=3.0, samples_total=40)     # restarted with the same identity
    seen = history.peer("A")
    assert seen.samples_contributed == 340 and seen.device == "cpu"
    assert seen.first_seen == 1.0 and seen.online_since == 1.0
    history.see_peer("A", role="client", device="cpu", t=400.0, samples_total=50, absent_before=2.5)  # the coordinator was not watching
    assert history.peer("A").online_since == 1.0
    history.see_peer("A", role="client", device="cpu", t=500.0, samples_total=50, absent_before=450.0)  # away while the coordinator watched
    seen = history.peer("A")
    assert seen.online_since == 500.0 and seen.role == "client" and seen.samples_contributed == 350
    history.see_peer("B", role="trainer", device="cuda", t=4.0, samples_total=None)
    assert history.leaderboard() == [("A", 350)]


def test_round_reports_are_recorded_once(history):
    assert history.add_round_report(3, "A", t=10.0, group_size=2, seconds=0.5, bytes_sent=100, bytes_received=90)
    assert not history.add_round_report(3, "A", t=11.0, group_size=2, seconds=0.7, bytes_sent=100, bytes_received=90)
    assert history.add_round_report(3, "B", t=10.5, group_size=2, seconds=0.6, bytes_sent=120, bytes_received=80)
    assert history.add_round_report(4, "A", t=12.0, group_size=3, seconds=0.4, bytes_sent=10, bytes_received=9)
    rounds = history.rounds()
    assert [r.epoch for r in rounds] == [4, 3]
    assert (rounds[1].members, rounds[1].seconds, rounds[1].bytes_sent, rounds[1].reporters) == (2, 0.6, 220, 2)
    assert history.bytes_sent_total() == 230


def test_history_survives_reopen_and_recent_maddrs(tmp_path):
    h = History(tmp_path / "h.sqlite")
    import time

    h.see_peer("A", role="trainer", device="cpu", t=time.time(), samples_total=1)
    h.set_maddrs("A", ["/ip4/127.0.0.1/tcp/1/p2p/A"])
    h.add_checkpoint(5, t=1.0, path="/x", digest="d", size=10, donor="A")
    h.add_checkpoint(10, t=2.0, path="/y", digest="e", size=10, donor="A")
    h.mark_removed(5)
    h.close()
    h = History(tmp_path / "h.sqlite")
    assert h.recent_maddrs(60) == ["/ip4/127.0.0.1/tcp/1/p2p/A"]
    assert [c["epoch"] for c in h.checkpoints()] == [10]
    assert [c["epoch"] for c in h.checkpoints(include_removed=True)] == [10, 5]
    assert h.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    h.close()


def test_garbage_database_is_one_clear_error(tmp_path):
    path = tmp_path / "history.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(DataError, match="--fresh"):
        History(path)
    assert sqlite3 is not None
