"""How often the progress tracker publishes and reads: reads (every record from each replica) are the control
plane's bulk, so they follow the time to the target within [min_read, max_read]; our own record is published
every third of it within [min_refresh, MAX_PUBLISH], lives long enough to last until the next, each expiring
after the one before; a change readers act on is published at once; a poke reads at once; stores go straight to
the replicas once read."""
from __future__ import annotations

import asyncio
import time

import pytest

from swarm.averaging.progress import MAX_PUBLISH, PUBLISHED_TTLS, ProgressTracker, SwarmView
from swarm.net import clock
from swarm.net.records import ProgressRecord

pytestmark = pytest.mark.timeout(30)


class CountingNode:
    """The two Node calls the tracker makes, counted (keep_in_touch's pings fail on it and are only logged)."""

    run_id = "run"
    peer_id = "me"

    def __init__(self):
        self.stores: list[bool] = []   # the `direct` flag of each store
        self.stored: list[tuple[ProgressRecord, float]] = []   # each store's record and expiration
        self.reads = 0

    async def store_record(self, key, record, ttl, *, direct=False, blind=False, replicas=False, timeout=None):
        self.stores.append(direct)
        self.stored.append((record, clock.now() + ttl))
        return True

    async def fetch_records(self, key, model, *, replicas=False, expected=0):
        self.reads += 1
        return []


async def _until(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def test_reads_and_publishes_follow_the_time_to_the_target_within_their_bounds():
    t = ProgressTracker(CountingNode(), 10**6, "trainer", lambda: (1.0, 1.0), min_refresh=0.2, max_refresh=2.0,
                        min_read=0.5, max_read=4.0)
    assert t._publish_period() == 2.0                            # nobody trains yet: peers gathering watch the view
    t.report(epoch=0, samples=0, samples_per_second=10.0)       # 10**5 s from the target
    assert t._read_period() == 4.0 and t._publish_period() == MAX_PUBLISH
    assert t._period() == 4.0                                    # the loop turns for whichever is due first
    t.target_batch_size = 1000
    t.report(samples=999)                                        # 0.1 s from it
    assert t._read_period() == 0.5 and t._period() == 0.2
    t.report(samples=970)                                        # 3 s from it: a third of that for both
    assert t._read_period() == pytest.approx(1.0) and t._period() == pytest.approx(1.0)
    t.report(samples=700)                                        # 30 s from it
    assert t._publish_period() == pytest.approx(10.0)


def test_a_record_far_from_the_target_lives_until_the_next_publish_and_each_expires_after_the_one_before():
    async def main():
        node = CountingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), record_ttl=8.0)
        t.report(epoch=0, samples=0, samples_per_second=10.0)   # far: published every MAX_PUBLISH seconds
        await t.publish()
        far_record, far_expires = node.stored[-1]
        assert far_expires - clock.now() == pytest.approx(PUBLISHED_TTLS * MAX_PUBLISH, abs=0.5)
        # expiring before the round it could be counted in: a third of the time to the target, 2.5 times
        assert PUBLISHED_TTLS * MAX_PUBLISH < 3 * MAX_PUBLISH
        t.target_batch_size = 10                                 # the round is now a second away: short-lived records...
        t.report(samples=0)
        await t.publish()
        near_expires = node.stored[-1][1]
        # ...but a replica keeps a subkey's record with the latest expiration: an earlier one would be refused
        assert near_expires > far_expires
        await t.publish()
        assert node.stored[-1][1] > near_expires
        t.local.leaving = True                                   # the withdrawal too
        await t.publish()
        assert node.stored[-1][1] > near_expires and node.stored[-1][0].leaving
    asyncio.run(main())


def test_a_new_epoch_is_published_as_soon_as_the_store_under_way_ends_not_a_period_later():
    class SlowStores(CountingNode):
        def __init__(self):
            super().__init__()
            self.release = asyncio.Event()

        async def store_record(self, key, record, ttl, *, direct=False, blind=False, replicas=False, timeout=None):
            await self.release.wait()
            return await super().store_record(key, record, ttl, direct=direct, blind=blind, timeout=timeout)

    async def main():
        node = SlowStores()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), min_read=60.0, max_read=60.0)
        t.report(epoch=0, samples=0, samples_per_second=10.0)   # far from the target: the next publish in 15 s
        t.start()
        try:
            await _until(lambda: node.reads >= 1, timeout=2.0)  # the first store is under way, held
            t.report(epoch=1)                                    # a step while it is
            t.poke()                                             # the step's poke: a store is under way, none starts
            await asyncio.sleep(0.2)
            node.release.set()
            await _until(lambda: len(node.stored) >= 2, timeout=2.0)   # within a second, not MAX_PUBLISH
            assert [r.epoch for r, _ in node.stored[:2]] == [0, 1]
            await asyncio.sleep(0.5)
            assert len(node.stored) == 2                         # and then nothing until the period: nothing changed
        finally:
            await t.stop(withdraw=False)
    asyncio.run(main())


def test_the_loop_publishes_every_period_reads_at_its_own_pace_and_reads_at_once_when_poked():
    async def main():
        node = CountingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), min_refresh=0.01, max_refresh=0.01,
                            min_read=60.0, max_read=60.0, direct_stores=True)
        t.start()
        try:
            await _until(lambda: len(node.stores) >= 10)
            assert node.reads == 1                      # the first read only: the next is a minute away
            assert node.stores[0] is False              # nothing read yet: the first store traverses the DHT
            assert all(node.stores[1:])                 # then straight to the replicas the reads met
            t.poke()
            await _until(lambda: node.reads >= 2)
            assert node.reads == 2, node.reads
        finally:
            await t.stop()
        assert node.stores[-1] is False                 # the withdrawal takes the full path
    asyncio.run(main())


def test_stores_traverse_the_dht_unless_direct_stores_are_asked_for():
    async def main():
        node = CountingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), min_refresh=0.01, max_refresh=0.01)
        t.start()
        try:
            await _until(lambda: len(node.stores) >= 5)
        finally:
            await t.stop()
        assert not any(node.stores)
    asyncio.run(main())


def _record(peer: str, samples: int, rate: float) -> ProgressRecord:
    return ProgressRecord(peer_id=peer, epoch=0, samples=samples, samples_per_second=rate, role="trainer",
                          upload_bps=1e6, download_bps=1e6, time=time.time(), training=True)


def test_far_from_the_target_a_peer_reads_twice_a_minute_by_default():
    t = ProgressTracker(CountingNode(), 10**6, "trainer", lambda: (1.0, 1.0))
    assert t._read_period() == 2.0                                 # nobody trains yet: peers may be waiting for peers
    t.report(epoch=0, samples=0, samples_per_second=10.0)          # a DiLoCo inner phase: a day from the target
    assert t._read_period() == 30.0
    t.target_batch_size = 1000
    t.report(samples=990)                                         # 1 s away: as often as before the long bound
    assert t._read_period() == pytest.approx(1 / 3)


def test_a_newcomer_reads_at_the_pace_of_the_swarms_claims_though_they_count_for_nothing_yet():
    t = ProgressTracker(CountingNode(), 1000, "trainer", lambda: (1.0, 1.0))
    t.report(epoch=0, samples=0, samples_per_second=1.0)
    t.view = SwarmView(epoch=0, peers=(_record("a", 900, 50.0), _record("b", 900, 50.0)), fetched_at=time.monotonic())
    assert t.trusted() == set() and t.eta(0) > 100                 # nobody vouched for: the batch is far by our count
    assert t._read_period() < 1.0                                  # but the swarm may step within a second: read soon


def test_an_aggregator_of_the_summaries_reads_within_a_quarter_of_the_records_ttl(monkeypatch):
    from swarm.averaging import summaries as summary
    from swarm.net import clock
    monkeypatch.setattr(clock, "now", lambda: 100 * summary.WINDOW + 30.0)   # mid-window: one set of aggregators
    ids = [f"peer{i}" for i in range(8)]
    node = CountingNode()
    t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), summaries=True, record_ttl=8.0)
    t.view = SwarmView(epoch=0, peers=tuple(_record(p, 0, 1.0) for p in ids), fetched_at=time.monotonic())
    chosen = summary.chosen(node.run_id, clock.now(), ids)
    for me, aggregating in ((next(iter(chosen)), True), (next(p for p in ids if p not in chosen), False)):
        t.peer_id = me
        assert t._aggregating() is aggregating
        assert t._read_period() == (2.0 if aggregating else 30.0), me
    t.summaries = False                                            # nobody aggregates: everyone reads every record
    t.peer_id = next(iter(chosen))
    assert t._read_period() == 30.0


def test_a_store_that_hangs_does_not_hold_up_the_reads():
    """A store on a cut link (or to dead replicas) can hang for its whole timeout; the read beside it must not wait
    (a peer back from a network cut stepped solo before it saw the swarm: tests/chaos/test_network_cut.py)."""
    class HangingStores(CountingNode):
        async def store_record(self, key, record, ttl, *, direct=False, blind=False, replicas=False, timeout=None):
            self.stores.append(direct)
            await asyncio.sleep(3600)

    async def main():
        node = HangingStores()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), min_read=60.0, max_read=60.0)
        t.start()
        try:
            await _until(lambda: node.reads >= 1, timeout=1.0)
            t.poke()
            await _until(lambda: node.reads >= 2, timeout=1.0)   # the first store still hangs
            await asyncio.sleep(0.5)
            assert len(node.stores) == 1                           # and no second one piles up beside it
        finally:
            await t.stop(withdraw=False)
    asyncio.run(main())


def test_near_the_target_reads_come_no_more_often_than_the_swarm_size_allows():
    """A read returns every record: its bytes grow with N, so its shortest period does too (a peer's read bytes per
    second then stay flat as the swarm grows); the distance's third still rules when it is longer."""
    from swarm.averaging.progress import READ_SECONDS_PER_PEER
    t = ProgressTracker(CountingNode(), 1000, "trainer", lambda: (1.0, 1.0), min_read=0.2, max_read=60.0)
    t.report(epoch=0, samples=999, samples_per_second=10.0)       # 0.1 s from the target
    for n in (2, 16, 64):
        t.view = SwarmView(epoch=0, peers=tuple(_record(f"p{i}", 0, 0.0) for i in range(n)), fetched_at=time.monotonic())
        assert t._read_period() == pytest.approx(max(0.2, READ_SECONDS_PER_PEER * n)), n
    t.report(samples=0)                                            # 100 s away: a third of that, as before
    assert t._read_period() == pytest.approx(100 / 3, rel=0.01)


def test_near_the_target_our_record_is_published_at_most_every_second_by_default():
    from swarm.averaging.progress import PUBLISH_FLOOR
    t = ProgressTracker(CountingNode(), 1000, "trainer", lambda: (1.0, 1.0))
    t.report(epoch=0, samples=999, samples_per_second=10.0)       # 0.1 s from the target
    assert t._publish_period() == PUBLISH_FLOOR == 1.0
    t.report(samples=700)                                        # 30 s away: a third of it
    assert t._publish_period() == pytest.approx(10.0)


def test_reads_more_frequent_than_publishes_do_not_drag_the_publishes_along():
    """The loop turns for a read or a publish, whichever is due; a turn for a read publishes nothing (an aggregator
    reads every 2 s, a swarm near the target of 16 peers every 0.8 s, while far-from-the-target records go every 15 s)."""
    async def main():
        node = CountingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), min_read=0.1, max_read=0.1)
        t.report(epoch=0, samples=0, samples_per_second=10.0)   # far from the target: publishes every MAX_PUBLISH
        t.start()
        try:
            await asyncio.sleep(1.5)
        finally:
            await t.stop(withdraw=False)
        assert node.reads >= 8, node.reads                      # reads every 0.1 s...
        assert len(node.stored) == 1, len(node.stored)          # ...one publish, the first
    asyncio.run(main())


def test_reads_and_publishes_go_to_the_replicas_as_last_found_from_replicas_min_peers_on():
    from swarm.averaging.progress import REPLICAS_MIN_PEERS

    class RecordingNode(CountingNode):
        def __init__(self):
            super().__init__()
            self.modes: list[tuple[str, bool]] = []

        async def store_record(self, key, record, ttl, *, direct=False, blind=False, replicas=False, timeout=None):
            self.modes.append(("store", replicas))
            return True

        async def fetch_records(self, key, model, *, replicas=False, expected=0):
            self.modes.append(("read", replicas))
            return []

    def record(pid: str, leaving: bool = False) -> ProgressRecord:
        return ProgressRecord(peer_id=pid, epoch=0, samples=0, samples_per_second=1.0, role="trainer", upload_bps=1.0,
                              download_bps=1.0, time=clock.now(), leaving=leaving)

    async def main():
        node = RecordingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0))
        small = tuple(record(f"p{i}") for i in range(REPLICAS_MIN_PEERS - 1)) + (record("gone", leaving=True),)
        t.view = SwarmView(epoch=0, peers=small, fetched_at=time.monotonic())
        await t.publish()
        await t._read()
        t.view = SwarmView(epoch=0, peers=tuple(record(f"p{i}") for i in range(REPLICAS_MIN_PEERS)), fetched_at=time.monotonic())
        await t.publish()
        await t._read()
        off = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), replicas=False)
        off.view = t.view
        await off.publish()
        return node.modes

    assert asyncio.run(main()) == [("store", False), ("read", False), ("store", True), ("read", True),
                                   ("store", False)]


def test_a_read_expects_at_least_the_last_groups_records_for_a_while():
    # a peer whose cached replicas hold few records must not take their answer for the swarm because its own view has
    # already shrunk: the last group it averaged in says how many a read should find (below half of that: a full read)
    from swarm.averaging import progress

    class ExpectingNode(CountingNode):
        def __init__(self):
            super().__init__()
            self.expected: list[int] = []

        async def fetch_records(self, key, model, *, replicas=False, expected=0):
            self.expected.append(expected)
            return []

    async def main():
        node = ExpectingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0))
        one = ProgressRecord(peer_id="me", epoch=0, samples=0, samples_per_second=1.0, role="trainer", upload_bps=1.0,
                             download_bps=1.0, time=clock.now())
        t.view = SwarmView(epoch=0, peers=(one,), fetched_at=time.monotonic())
        await t._read_all()
        t.vouch([f"p{i}" for i in range(45)])   # a group of 46 with us
        await t._read_all()
        t._last_group = (t._last_group[0], time.monotonic() - progress.GROUP_COUNTS_FOR - 1)   # long ago
        await t._read_all()
        return node.expected

    assert asyncio.run(main()) == [1, 46, 1]


def test_a_read_with_fewer_than_half_the_expected_records_is_not_the_swarm():
    # a traversal cut short at load, or replicas that hold few records, answered with one record: the view stays as it
    # was (counted as partial) until its records would have expired anyway; then the small answer stands
    def record(pid: str) -> ProgressRecord:
        return ProgressRecord(peer_id=pid, epoch=0, samples=0, samples_per_second=1.0, role="trainer", upload_bps=1.0,
                              download_bps=1.0, time=clock.now())

    class FewNode(CountingNode):
        async def fetch_records(self, key, model, *, replicas=False, expected=0):
            return [record("me")]

    async def main():
        t = ProgressTracker(FewNode(), 10**6, "trainer", lambda: (1.0, 1.0), record_ttl=8.0)
        t.view = SwarmView(epoch=0, peers=tuple(record(f"p{i}") for i in range(40)), fetched_at=time.monotonic())
        kept = len((await t.refresh()).peers)
        partial = t.reads["partial"]
        t.view = SwarmView(epoch=0, peers=t.view.peers, fetched_at=time.monotonic() - 9.0)   # older than record_ttl
        applied = len((await t.refresh()).peers)
        return kept, partial, applied

    assert asyncio.run(main()) == (40, 1, 1)


def test_a_read_expects_half_the_routing_tables_nodes_at_least():
    # a peer whose view never grew (1 record) in a swarm whose 40 nodes its DHT routing table holds: a replica read that
    # finds fewer than 10 records must go the full way (swarm.net.node.fetch_owned_records), not stand for the swarm
    class KnowingNode(CountingNode):
        def __init__(self):
            super().__init__()
            self.expected: list[int] = []

        def dht_peers(self) -> int:
            return 40

        async def fetch_records(self, key, model, *, replicas=False, expected=0):
            self.expected.append(expected)
            return []

    async def main():
        node = KnowingNode()
        t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0))
        await t._read_all()
        return node.expected, t._expected_peers()

    assert asyncio.run(main()) == ([20], 0)   # the fetch's bar, not the view's own expectation (see _refresh)
