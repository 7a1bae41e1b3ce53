"""Progress estimation: when the swarm reaches its global batch, from peers' records and our own clock."""
from __future__ import annotations

import time

import pytest

from swarm.averaging.progress import ProgressTracker, SwarmView
from swarm.net.records import ProgressRecord

pytestmark = pytest.mark.timeout(30)


def rec(peer: str, epoch: int, samples: int, rate: float, role="trainer", leaving=False, clock_offset=0.0):
    return ProgressRecord(peer_id=peer, epoch=epoch, samples=samples, samples_per_second=rate, role=role,
                          upload_bps=1e6, download_bps=1e6, time=time.time() + clock_offset, leaving=leaving)


class FakeNode:
    run_id = "run"
    peer_id = "me"


def tracker(target=100):
    return ProgressTracker(FakeNode(), target, "trainer", lambda: (1.0, 1.0))


def test_samples_are_summed_at_the_epoch_and_extrapolated_by_rate():
    now = time.monotonic()
    view = SwarmView(epoch=2, peers=(rec("a", 2, 10, 5.0), rec("b", 2, 20, 10.0), rec("c", 1, 999, 100.0)), fetched_at=now)
    assert view.samples_at(2, now) == 30
    assert view.samples_at(2, now + 2.0) == pytest.approx(30 + 2 * 15)
    assert view.rate_at(2) == 15.0


def test_leaving_peers_do_not_count():
    now = time.monotonic()
    view = SwarmView(epoch=1, peers=(rec("a", 1, 50, 5.0, leaving=True), rec("b", 1, 20, 1.0)), fetched_at=now)
    assert view.samples_at(1, now) == 20


def test_ready_and_eta_include_our_own_samples():
    t = tracker(target=100)
    now = time.monotonic()
    t.view = SwarmView(epoch=0, peers=(rec("a", 0, 40, 10.0), rec("me", 0, 0, 0.0)), fetched_at=now)
    t.vouch(["a"])   # "a" averaged with us before: its samples count
    t.report(samples=30, samples_per_second=20.0)
    assert not t.ready(0)
    assert t.eta(0) == pytest.approx(30 / 30, rel=0.05)  # 30 missing at 10 + 20 samples/s
    t.report(samples=60)
    assert t.ready(0)
    assert t.eta(0) == 0.0


def test_a_peer_with_a_wrong_clock_changes_nothing():
    """Extrapolation uses the time *we* fetched the record, not the sender's timestamp."""
    now = time.monotonic()
    honest = SwarmView(epoch=0, peers=(rec("a", 0, 40, 10.0),), fetched_at=now)
    skewed = SwarmView(epoch=0, peers=(rec("a", 0, 40, 10.0, clock_offset=-600),), fetched_at=now)
    assert honest.samples_at(0, now + 1) == skewed.samples_at(0, now + 1)


def test_global_epoch_is_the_highest_live_epoch():
    t = tracker()
    t.view = SwarmView(epoch=5, peers=(rec("a", 5, 0, 1.0),), fetched_at=time.monotonic())
    t.report(epoch=3)
    assert t.global_epoch() == 5


def test_strangers_of_a_fresh_run_reach_the_batch_together():
    """Before any round nobody is vouched for: three peers with a third of the batch each are ready together,
    not each one only once it has the whole batch alone."""
    t = tracker(target=90)
    now = time.monotonic()
    t.view = SwarmView(epoch=0, peers=(rec("a", 0, 30, 1.0), rec("b", 0, 30, 1.0)), fetched_at=now)
    t.report(samples=20, samples_per_second=1.0)
    assert t.estimated_samples(0, now) == 60        # strangers count up to our own 20 each
    assert not t.ready(0)
    t.report(samples=30)
    assert t.ready(0)


def test_a_strangers_rate_counts_up_to_ours():
    t = tracker(target=1000)
    now = time.monotonic()
    t.view = SwarmView(epoch=0, peers=(rec("fast", 0, 0, 500.0),), fetched_at=now)
    t.report(samples=0, samples_per_second=2.0)
    assert t.eta(0) == pytest.approx(1000 / 4.0, rel=0.01)
    t.vouch(["fast"])
    assert t.eta(0) == pytest.approx(1000 / 502.0, rel=0.01)


def test_vouches_outlast_slow_epochs():
    t = tracker(target=10)
    t.vouch(["a"])
    t._last_vouch -= 1000.0                           # the next group formed 1000 s later (a slow model's epoch)
    t.vouch(["a"])
    assert t._vouched["a"] - time.monotonic() > 2900


def test_a_quick_second_group_shortens_no_vouch():
    t = tracker(target=10)
    t.vouch(["a"])
    t._last_vouch -= 1000.0
    t.vouch(["a"])
    long_until = t._vouched["a"]
    t.vouch(["a"])                                    # a retry moments later: the gap is short
    assert t._vouched["a"] == long_until
