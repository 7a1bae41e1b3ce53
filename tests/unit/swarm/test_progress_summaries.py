"""Progress summaries (swarm.averaging.summaries): who aggregates, which summaries a reader uses, how they merge, and
the tracker reading them instead of every record."""
from __future__ import annotations

import asyncio

import msgpack
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord

from swarm.averaging import summaries as summary
from swarm.averaging.progress import ProgressTracker, SwarmView
from swarm.net import clock, records
from swarm.net.records import ProgressRecord, ProgressSummary

pytestmark = pytest.mark.timeout(30)

RUN = "run"


def rec(pid: str, epoch: int = 3, samples: int = 10, rate: float = 5.0, **kw) -> ProgressRecord:
    return ProgressRecord(peer_id=pid, epoch=epoch, samples=samples, samples_per_second=rate, role="trainer",
                          upload_bps=1e6, download_bps=1e6, time=0.0, training=True, **kw)


def summ(agg: str, peers: list[ProgressRecord], window: int = 10, time: float = 600.0) -> ProgressSummary:
    return ProgressSummary(aggregator=agg, window=window, time=time, peers=peers)


IDS = [f"peer{i:02d}" for i in range(40)]


# -- who aggregates ---------------------------------------------------------------------------------------------


def test_every_peer_that_sees_the_same_ids_picks_the_same_aggregators():
    a = summary.aggregators(RUN, 7, IDS)
    assert len(a) == summary.AGGREGATORS and set(a) <= set(IDS)
    assert summary.aggregators(RUN, 7, list(reversed(IDS))) == a
    assert summary.aggregators(RUN, 7, IDS[:2]) == sorted(IDS[:2], key=lambda p: summary._rank(RUN, 7, p))
    # the set rotates with the window and differs between runs
    assert len({tuple(summary.aggregators(RUN, w, IDS)) for w in range(10)}) > 1
    assert summary.aggregators("other", 7, IDS) != a


def test_a_peer_that_sees_one_peer_more_or_less_mostly_agrees():
    a = set(summary.aggregators(RUN, 7, IDS))
    outsider = next(p for p in IDS if p not in a)
    assert set(summary.aggregators(RUN, 7, [p for p in IDS if p != outsider])) == a


def test_the_previous_windows_aggregators_count_only_within_the_grace():
    start = 11 * summary.WINDOW
    early = summary.chosen(RUN, start + 1.0, IDS)
    late = summary.chosen(RUN, start + summary.GRACE + 1.0, IDS)
    assert set(late) == set(summary.aggregators(RUN, 11, IDS)) and set(late.values()) == {11}
    assert set(early) == set(summary.aggregators(RUN, 11, IDS)) | set(summary.aggregators(RUN, 10, IDS))
    assert all(early[p] == 11 for p in summary.aggregators(RUN, 11, IDS))


# -- which summaries a reader uses ------------------------------------------------------------------------------


def test_a_summary_is_used_only_from_a_chosen_aggregator_for_its_window_and_fresh():
    allowed = {"a": 10, "b": 10}
    ok = summ("a", [rec("x")], time=600.0)
    assert summary.check(ok, allowed, now=601.0) is ok
    cases = {
        "not one of the window's aggregators": summ("mallory", [rec("x")]),
        "for window 9": summ("a", [rec("x")], window=9),
        "ahead": summ("a", [rec("x")], time=700.0),
        "old": summ("a", [rec("x")], time=500.0),
        "lists a peer twice": summ("a", [rec("x"), rec("x", samples=99)]),
    }
    for why, s in cases.items():
        with pytest.raises(summary.InvalidSummary, match=why):
            summary.check(s, allowed, now=601.0)


def test_an_oversized_or_malformed_summary_is_rejected_by_the_schema_and_by_every_replica():
    peers = [rec(f"p{i}").model_dump() for i in range(records.MAX_SUMMARY_PEERS + 1)]
    value = {"aggregator": "a", "window": 1, "time": 1.0, "peers": peers}
    assert records.decode(ProgressSummary, value) is None
    assert records.decode(ProgressSummary, {**value, "peers": peers[:3]}) is not None
    assert records.decode(ProgressSummary, {**value, "peers": peers[:3], "window": -1}) is None
    assert records.decode(ProgressSummary, {**value, "peers": [{**peers[0], "epoch": 2**64 - 1}]}) is None

    validator = records.SchemaValidator(RUN)
    key = DHTID.generate(source=records.progress_summary_key(RUN)).to_bytes()
    signed = b"[owner:ssh-rsa AAAA]"

    def accepted(v: dict, subkey: bytes = signed) -> bool:
        return validator.validate(DHTRecord(key, subkey, msgpack.packb(v), 0.0))

    assert accepted({**value, "peers": peers[:3]})
    assert not accepted(value)                                   # too many peers
    assert not accepted({**value, "peers": peers[:3]}, b"x")     # not signed by an owner


# -- how summaries merge ----------------------------------------------------------------------------------------


def test_one_hostile_aggregator_of_three_can_neither_add_a_peer_nor_inflate_progress():
    honest = [rec("a", samples=10), rec("b", samples=20)]
    hostile = [rec("a", epoch=10**9, samples=2**53, rate=1e9), rec("b", samples=20), rec("ghost", samples=2**53)]
    merged = summary.merge([summ("h1", honest), summ("h2", honest), summ("evil", hostile)])
    assert [p.peer_id for p in merged] == ["a", "b"]
    assert [(p.epoch, p.samples, p.samples_per_second) for p in merged] == [(3, 10, 5.0), (3, 20, 5.0)]


def test_with_two_summaries_a_peer_needs_both_and_each_number_is_the_lower():
    merged = summary.merge([summ("h", [rec("a", samples=10)]), summ("evil", [rec("a", samples=10**6), rec("ghost")])])
    assert [(p.peer_id, p.samples) for p in merged] == [("a", 10)]


def test_one_summary_is_never_enough():
    with pytest.raises(summary.InvalidSummary, match="at least 2"):
        summary.merge([summ("a", [rec("x")])])


# -- the tracker ------------------------------------------------------------------------------------------------


class SummaryNode:
    """The Node calls the tracker makes: every record under the progress key, summaries under the summary key."""

    run_id = RUN

    def __init__(self, peer_id: str, everyone: list[ProgressRecord], summaries: list[ProgressSummary]):
        self.peer_id = peer_id
        self.everyone, self.summaries = everyone, summaries
        self.full_reads = 0
        self.stored: list[tuple[str, object]] = []

    async def store_record(self, key, record, ttl, *, direct=False, blind=False, replicas=False, timeout=None):
        self.stored.append((key, record))
        return True

    async def fetch_records(self, key, model, *, latest=True, replicas=False, expected=0):
        if key == records.progress_summary_key(RUN):
            return list(self.summaries)
        self.full_reads += 1
        return list(self.everyone)


def _tracker(me: str, everyone: list[ProgressRecord], sums: list[ProgressSummary]) -> tuple[ProgressTracker, SummaryNode]:
    node = SummaryNode(me, everyone, sums)
    t = ProgressTracker(node, 10**6, "trainer", lambda: (1.0, 1.0), summaries=True)  # type: ignore[arg-type]
    t.view = SwarmView(epoch=3, peers=tuple(everyone), fetched_at=0.0)
    return t, node


def test_a_peer_that_is_not_an_aggregator_reads_the_summaries_not_every_record():
    everyone = [rec(p) for p in IDS[:8]]
    now = clock.now()
    allowed = summary.chosen(RUN, now, [p.peer_id for p in everyone])
    me = next(p for p in IDS[:8] if p not in allowed)
    aggs = sorted(allowed)
    sums = [summ(a, everyone[:6], window=allowed[a], time=now - 1.0) for a in aggs[:2]]
    t, node = _tracker(me, everyone, sums)
    t.report(epoch=3, samples=7)
    view = asyncio.run(t.refresh())
    assert node.full_reads == 0 and t.reads["summary"] == 1
    assert {p.peer_id for p in view.peers} == {p.peer_id for p in everyone[:6]} | {me}
    assert next(p for p in view.peers if p.peer_id == me).samples == 7     # our own record comes from ourselves
    assert view.epoch == 3


def test_a_reader_with_one_fresh_summary_reads_every_record():
    everyone = [rec(p) for p in IDS[:8]]
    now = clock.now()
    allowed = summary.chosen(RUN, now, [p.peer_id for p in everyone])
    me = next(p for p in IDS[:8] if p not in allowed)
    a, b = sorted(allowed)[:2]
    sums = [summ(a, everyone[:2], window=allowed[a], time=now - 1.0),
            summ(b, everyone[:2], window=allowed[b], time=now - 60.0),    # stale
            summ("mallory", everyone[:2], window=allowed[a], time=now)]   # not chosen
    t, node = _tracker(me, everyone, sums)
    view = asyncio.run(t.refresh())
    assert node.full_reads == 1 and t.reads["full"] == 1
    assert len(view.peers) == 8


def test_an_aggregator_reads_every_record_and_publishes_them_as_its_summary():
    everyone = [rec(p) for p in IDS[:8]] + [rec("leaver", leaving=True)]
    allowed = summary.chosen(RUN, clock.now(), [p.peer_id for p in everyone[:8]])
    me = sorted(allowed)[0]
    t, node = _tracker(me, everyone, [])

    async def main():
        await t.refresh()
        await asyncio.wait_for(t._summarizing, 5)   # stored beside the refresh

    asyncio.run(main())
    assert node.full_reads == 1 and t.reads["aggregated"] == 1
    [(key, published)] = node.stored
    assert key == records.progress_summary_key(RUN)
    assert published.aggregator == me and published.window == allowed[me]
    assert [p.peer_id for p in published.peers] == sorted(p.peer_id for p in everyone[:8])


def test_a_reader_whose_summary_read_hangs_reads_every_record_in_time():
    everyone = [rec(p) for p in IDS[:8]]
    allowed = summary.chosen(RUN, clock.now(), [p.peer_id for p in everyone])
    me = next(p for p in IDS[:8] if p not in allowed)
    t, node = _tracker(me, everyone, [])
    read_all = node.fetch_records

    async def hanging(key, model, *, latest=True, replicas=False, expected=0):
        if key == records.progress_summary_key(RUN):
            await asyncio.sleep(60)
        return await read_all(key, model, latest=latest)

    node.fetch_records = hanging
    view = asyncio.run(asyncio.wait_for(t.refresh(), 5))
    assert node.full_reads == 1 and t.reads["full"] == 1 and len(view.peers) == 8


def test_a_small_swarm_or_summaries_off_reads_every_record():
    everyone = [rec(p) for p in IDS[:summary.MIN_PEERS - 2]]
    t, node = _tracker("me", everyone, [])
    asyncio.run(t.refresh())
    assert node.full_reads == 1 and t.reads["full"] == 1 and not node.stored
    t, node = _tracker("me", [rec(p) for p in IDS[:20]], [])
    t.summaries = False
    asyncio.run(t.refresh())
    assert node.full_reads == 1 and not node.stored
