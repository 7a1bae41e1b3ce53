"""Issue 13, items 1-4: hostile records and join requests are bounded, and no single claim moves the swarm."""
from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import msgpack
import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord

from swarm.averaging.matchmaking import Matchmaker, group_problem
from swarm.averaging.progress import ProgressTracker, SwarmView, swarm_epoch
from swarm.net import records
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(30)


def progress(**kw) -> dict:
    base = dict(peer_id="peerA", epoch=3, samples=10, samples_per_second=2.5, role="trainer",
                upload_bps=1e6, download_bps=1e6, time=time.time())
    return base | kw


def metrics(**kw) -> dict:
    base = dict(peer_id="peerA", epoch=3, loss=1.0, samples_per_second=2.5, mini_steps=1, samples_total=10,
                round_seconds=0.5, time=time.time())
    return base | kw


def stored(key: str, value: dict) -> DHTRecord:
    return DHTRecord(key=DHTID.generate(source=key).to_bytes(), subkey=b"[owner:abc]", value=msgpack.packb(value),
                     expiration_time=time.time() + 10)


# -- item 1: integers past SQLite's int64 (and non-finite floats) never pass validation --------------------

@pytest.mark.parametrize("field", ["bytes_sent", "bytes_received", "epoch", "samples_total", "mini_steps", "group_size"])
def test_metrics_record_with_a_huge_integer_is_rejected(field):
    v = records.SchemaValidator("run")
    assert v.validate(stored(records.metrics_key("run"), metrics()))
    assert not v.validate(stored(records.metrics_key("run"), metrics(**{field: 2**64 - 1})))


@pytest.mark.parametrize("bad", [{"epoch": 2**64 - 1}, {"samples": 10**18}, {"samples_per_second": math.inf},
                                 {"samples_per_second": math.nan}, {"upload_bps": math.inf}, {"time": math.nan}])
def test_progress_record_out_of_bounds_is_rejected(bad):
    v = records.SchemaValidator("run")
    assert not v.validate(stored(records.progress_key("run"), progress(**bad)))
    assert records.decode(records.ProgressRecord, progress(**bad)) is None


def test_history_stores_the_largest_values_a_record_may_hold(tmp_path):
    from coordinator.history import History

    h = History(tmp_path / "h.sqlite")
    m = records.MetricsRecord(**metrics(epoch=records.MAX_EPOCH, bytes_sent=records.MAX_COUNT, bytes_received=records.MAX_COUNT,
                                        samples_total=records.MAX_COUNT))
    assert h.add_round_report(m.epoch, m.peer_id, t=m.time, group_size=m.group_size, seconds=m.round_seconds,
                              bytes_sent=m.bytes_sent, bytes_received=m.bytes_received)
    h.see_peer(m.peer_id, role="trainer", device="cpu", t=1.0, samples_total=m.samples_total)
    assert h.bytes_sent_total() == records.MAX_COUNT
    h.close()


def test_bounded_clamps_what_an_honest_publisher_sends():
    assert records.bounded(math.inf, records.MAX_RATE) == 0.0
    assert records.bounded(1e30, records.MAX_RATE) == records.MAX_RATE
    assert records.bounded(-3, 10) == 0.0


# -- item 2: one record claiming a far epoch does not move the swarm's epoch --------------------------------

def rec(peer: str, epoch: int, samples: int = 0, rate: float = 0.0) -> records.ProgressRecord:
    return records.ProgressRecord(**progress(peer_id=peer, epoch=epoch, samples=samples, samples_per_second=rate, training=True))


class FakeNode:
    run_id = "run"
    peer_id = "me"

    def __init__(self, found):
        self.found = found

    async def fetch_records(self, key, model, *, replicas=False, expected=0):
        return list(self.found)


def test_swarm_epoch_needs_two_voters_or_one_epoch_of_lead():
    assert swarm_epoch([5, 5, 10**9]) == 5            # a lone claim far ahead is not the swarm's epoch
    assert swarm_epoch([5, 6]) == 6                   # a peer one epoch ahead is (its group just stepped)
    assert swarm_epoch([5, 7]) == 5
    assert swarm_epoch([7]) == 7                      # the only peer we see: a newcomer follows it
    assert swarm_epoch([]) == 0


def test_a_forged_far_epoch_does_not_stall_a_peer():
    found = [rec("a", 5), rec("b", 5), rec("forged", 10**9)]
    t = ProgressTracker(FakeNode(found), 64, "trainer", lambda: (1.0, 1.0))
    t.report(epoch=5)
    view = asyncio.run(t.refresh())
    assert view.epoch == 5 and t.global_epoch() == 5   # before: 10**9, and every trainer tried to download it


def test_a_claimant_that_failed_to_serve_its_epoch_is_ignored():
    found = [rec("forged", 10**9)]
    t = ProgressTracker(FakeNode(found), 64, "trainer", lambda: (1.0, 1.0))
    t.report(epoch=5)
    assert asyncio.run(t.refresh()).epoch == 10**9     # the only other peer: believed until its state fails
    t.distrust("forged", 60.0)
    assert asyncio.run(t.refresh()).epoch == 0 and t.global_epoch() == 5


def test_coordinator_epoch_ignores_a_lone_far_claim():
    from coordinator.tracker import aggregate

    fig = aggregate([rec("a", 4), rec("b", 4), rec("forged", 10**9)], [], {}, now=1.0)
    assert fig.epoch == 4


# -- item 3: samples count only from peers that averaged with us --------------------------------------------

def test_inflated_samples_of_a_stranger_do_not_make_the_batch_ready():
    t = ProgressTracker(FakeNode([]), 64, "trainer", lambda: (1.0, 1.0))
    t.view = SwarmView(epoch=0, peers=(rec("forged", 0, samples=records.MAX_COUNT, rate=records.MAX_RATE),), fetched_at=time.monotonic())
    t.report(samples=10, samples_per_second=1.0)
    assert not t.ready(0)                              # before: ready with 10 real samples of 64
    assert t.estimated_samples(0) == 20                # before any round a stranger counts for at most our own samples
    t.vouch(["honest"])
    assert t.estimated_samples(0) == 10                # once a group formed with others, strangers count for nothing
    t.vouch(["forged"])                                # once it has averaged with us, its progress counts
    assert t.ready(0)


def test_auxiliary_peer_counts_everyone():
    t = ProgressTracker(FakeNode([]), 64, "aux", lambda: (1.0, 1.0))
    t.view = SwarmView(epoch=0, peers=(rec("a", 0, samples=70),), fetched_at=time.monotonic())
    assert t.ready(0)


# -- item 4: an infinite weight never enters a group ---------------------------------------------------------

def matchmaker() -> Matchmaker:
    tracker = ProgressTracker(FakeNode([]), 64, "trainer", lambda: (1.0, 1.0))
    mm = Matchmaker(SimpleNamespace(peer_id="me"), "run", tracker, schema_hash=b"s")
    return mm


@pytest.mark.parametrize("weight", [math.inf, math.nan, -1.0, 1e300])
def test_join_request_with_an_unbounded_weight_is_refused(weight):
    mm = matchmaker()
    request = swarm_pb2.JoinRequest(run_id="run", epoch=0, peer_id="zz", role="client", weight=weight,
                                    upload_bps=1.0, download_bps=1.0, schema_hash=b"s")
    reply = asyncio.run(mm._handle_join(request, SimpleNamespace(remote_id="zz")))
    assert reply.status == swarm_pb2.GroupInfo.REJECTED and "weight" in reply.reason


def test_join_request_with_infinite_bandwidth_is_refused():
    mm = matchmaker()
    request = swarm_pb2.JoinRequest(run_id="run", epoch=0, peer_id="zz", role="trainer", weight=1.0,
                                    upload_bps=math.inf, download_bps=1.0, schema_hash=b"s")
    reply = asyncio.run(mm._handle_join(request, SimpleNamespace(remote_id="zz")))
    assert reply.status == swarm_pb2.GroupInfo.REJECTED


def test_a_leaders_group_with_an_infinite_weight_is_unusable():
    info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=0, timeout=5.0, shares=[0.5, 0.5])
    info.members.add(peer_id="a", role="trainer", weight=3.0, upload_bps=1.0, download_bps=1.0)
    info.members.add(peer_id="b", role="client", weight=math.inf, upload_bps=1.0, download_bps=1.0)
    assert "weight" in group_problem(info)
    info.members[1].weight = 4.0
    assert group_problem(info) == ""


def test_a_leader_waits_for_a_newcomer_it_never_averaged_with():
    mm = matchmaker()
    mm.tracker.view = SwarmView(epoch=4, peers=(rec("a", 4), rec("new", 4)), fetched_at=time.monotonic())
    mm.tracker.vouch(["a", "me"])
    assert mm._expected(4) == {"a", "new", "me"}   # waiting only for "a" kept a newcomer out of every group
