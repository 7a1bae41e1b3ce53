"""A round's time limits follow the work (swarm.averaging.deadlines): vector size and measured rates in, seconds
out, with the configured values as floors; the leader's GroupInfo carries them and a waiter follows them."""
from __future__ import annotations

import concurrent.futures
import threading
import time
from types import SimpleNamespace

import pytest

from swarm.averaging.balancing import MemberLink, optimal_shares, round_seconds
from swarm.averaging.deadlines import MARGIN, MAX_LIMIT, reply_timeout, round_limits, transfer_limit
from swarm.averaging.layout import TensorLayout
from swarm.averaging.matchmaking import Matchmaker, _Gathering
from swarm.averaging.rounds import RoundRequest
from swarm.compression.codecs import get_codec
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(30)

MBIT = 1e6 / 8
CHUNK = 2**17 * 4   # a default chunk of fp32 values


def links(*mbits: float) -> list[MemberLink]:
    return [MemberLink(upload_bps=m * MBIT, download_bps=m * MBIT) for m in mbits]


def limits(vector_bytes: int, members: list[MemberLink], floor_silence: float = 5.0, floor_averaging: float = 30.0):
    shares, _ = optimal_shares(vector_bytes, members)
    return round_limits(vector_bytes, members, shares, chunk_bytes=CHUNK, floor_silence=floor_silence,
                        floor_averaging=floor_averaging)


def test_a_small_vector_gets_the_floors():
    got = limits(1_000_000, links(100, 100, 100, 100))
    assert (got.silence, got.averaging) == (5.0, 30.0)
    assert got.predicted == pytest.approx(round_seconds(1_000_000, links(100, 100, 100, 100), [0.25] * 4))


def test_a_real_model_gets_its_lp_time_with_a_margin():
    """10M fp32 parameters (40 MB) in a group of 12 at 50 Mbit/s: the old fixed 30 s would cut the round short."""
    members = links(*[50.0] * 12)
    got = limits(40_000_000, members)
    shares, predicted = optimal_shares(40_000_000, members)
    assert predicted > 10.0
    assert got.averaging >= MARGIN * predicted > 30.0
    # twice the work, about twice the time
    bigger = limits(80_000_000, members)
    assert bigger.averaging - 2 * bigger.silence == pytest.approx(2 * (got.averaging - 2 * got.silence))


def test_silence_follows_the_chunk_the_group_size_and_the_slowest_link():
    fast = limits(40_000_000, links(100, 100, 100))
    one_slow = limits(40_000_000, links(100, 100, 1))
    # a chunk on one of the slow peer's two streams: 512 KiB * 2 / (1 Mbit/s)
    assert one_slow.silence == pytest.approx(MARGIN * CHUNK * 2 / MBIT)
    assert one_slow.silence > fast.silence == 5.0
    wider = limits(40_000_000, links(*[1.0] * 6))
    assert wider.silence == pytest.approx(one_slow.silence * 5 / 2)


def test_hostile_rates_cannot_make_a_round_wait_forever():
    members = [MemberLink(upload_bps=1.0, download_bps=1.0), MemberLink(upload_bps=1e9, download_bps=1e9)]
    got = round_limits(10**12, members, [0.0, 1.0], chunk_bytes=CHUNK, floor_silence=5.0, floor_averaging=30.0)
    assert got.silence == got.averaging == MAX_LIMIT


def test_shares_that_do_not_fit_leave_the_floors():
    got = round_limits(10**6, links(10, 10), [0.0, 0.0, 1.0], chunk_bytes=CHUNK, floor_silence=5.0, floor_averaging=30.0)
    assert got.averaging == 30.0 and got.predicted != got.predicted  # nan


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError):
        round_limits(-1, links(10), [1.0], chunk_bytes=CHUNK, floor_silence=5.0, floor_averaging=30.0)


def test_a_reducer_may_wait_out_one_silent_sender_before_it_replies():
    assert reply_timeout(5.0) > 5.0 + 2.0 - 1e-9
    assert reply_timeout(60.0) > 60.0


def test_the_layout_knows_its_wire_size_and_largest_chunk():
    layout = TensorLayout.build([(1000,), (10,)], lambda i, n: get_codec("fp16" if n > 100 else "none"))
    assert layout.wire_bytes() == 1000 * 2 + 10 * 4
    assert layout.chunk_bytes(256) == 256 * 2
    assert layout.chunk_bytes(4) == 4 * 4


def test_the_leader_sends_the_limits_of_the_work():
    tracker = SimpleNamespace(role="trainer")
    mm = Matchmaker(SimpleNamespace(peer_id="me"), "run", tracker, schema_hash=b"s", allreduce_timeout=30.0, sender_timeout=5.0)
    mm.set_schema(b"s", lambda: 40_000_000, lambda: CHUNK)
    g = _Gathering(epoch=3)
    for i in range(12):
        g.requests[f"peer{i:02d}"] = swarm_pb2.JoinRequest(peer_id=f"peer{i:02d}", role="trainer", weight=1.0,
                                                           upload_bps=50 * MBIT, download_bps=50 * MBIT)
    info = mm._make_group(g)
    assert info.timeout == pytest.approx(limits(40_000_000, links(*[50.0] * 12)).averaging)
    assert info.timeout > 30.0 and g.timeout == info.timeout
    mm.set_schema(b"s", lambda: 1000, lambda: 1000)
    assert mm._make_group(g).timeout == 30.0


def test_a_waiter_follows_a_deadline_that_moves():
    """The group's deadline replaces the first estimate once it is formed: a waiter already blocked sees it."""
    request = RoundRequest(epoch=1, weight=1.0)
    request.future = concurrent.futures.Future()
    request.deadline = time.monotonic() + 0.5

    def later():
        request.deadline = time.monotonic() + 5.0   # the group formed, with a longer deadline
        time.sleep(1.5)
        request.future.set_result(("averaged", "report"))

    threading.Timer(0.1, later).start()
    assert request.wait() == ("averaged", "report")


def test_a_waiter_still_gives_up_at_the_deadline():
    request = RoundRequest(epoch=1, weight=1.0)
    request.future = concurrent.futures.Future()
    request.deadline = time.monotonic() + 0.3
    with pytest.raises(Exception, match="did not finish in time"):
        request.wait()
    assert request.future.cancelled()


def test_a_transfer_gets_its_expected_time_with_a_margin_within_bounds():
    assert transfer_limit(100 * 2**20, 1e6, floor=10.0) == pytest.approx(MARGIN * 100 * 2**20 / 1e6)
    assert transfer_limit(1000, 1e6, floor=10.0) == 10.0
    assert transfer_limit(10**15, 1.0, floor=10.0) == MAX_LIMIT
    with pytest.raises(ValueError):
        transfer_limit(1000, 0.0, floor=10.0)
