"""A newcomer asks a leader candidate whose address its p2pd does not know yet ("routing: not found": a peer behind NAT
that has just joined) again for a while instead of passing it over, once in its life and only until it has averaged
with another peer (a hostile record of a peer id that exists nowhere must not cost every epoch); a candidate that fails
otherwise (dead: its dial is refused) is passed over at once. No network: the p2p call is faked."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from hivemind.p2p.p2p_daemon_bindings.utils import ControlFailure, P2PDaemonError, P2PHandlerError

from swarm.averaging.matchmaking import ROUTE_PATIENCE, Matchmaker, unroutable
from swarm.averaging.streams import dial_failed
from swarm.proto import swarm_pb2
from tests.unit.swarm.test_matchmaking_step_aside import FakeTracker, join_request

pytestmark = pytest.mark.timeout(30)

LOW, ME = "QmAAow", "QmZZme"   # base58: the fake p2p is called with PeerID.from_base58(candidate)


class FlakyP2P:
    """Fails the first `failures` join calls with `error`, then the leader accepts us in a group of two."""

    def __init__(self, failures: int, error: str):
        self.failures, self.error, self.calls = failures, error, 0
        self.peer_id = ME

    async def call_protobuf_handler(self, peer, handler, request, reply_type):
        self.calls += 1
        if self.calls <= self.failures:
            raise P2PDaemonError(self.error)
        info = swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, epoch=request.epoch, leader=LOW, timeout=10.0,
                                   round_id=b"r" * 16, shares=[0.5, 0.5])
        for pid in (LOW, ME):
            info.members.add(peer_id=pid, role="trainer", weight=1.0, upload_bps=1e6, download_bps=1e6)
        return info


def form(p2p: FlakyP2P, gather_timeout: float = 0.3, mm: Matchmaker | None = None):
    if mm is None:
        mm = Matchmaker(p2p, "run", FakeTracker(epoch=5, peers=[LOW, ME]), schema_hash=b"s", gather_timeout=gather_timeout)
        mm.peer_id = ME
    mm.p2p = p2p
    mm._failed.clear()
    led = []

    async def lead(request, deadline):
        led.append(time.monotonic())
        return None if len(led) < 2 else swarm_pb2.GroupInfo(status=swarm_pb2.GroupInfo.ACCEPTED, leader=ME)

    mm._lead = lead
    return asyncio.run(mm.form_group(join_request(ME, 5), deadline=time.monotonic() + 10)), mm, led


def test_an_unroutable_candidate_is_asked_again_until_our_p2pd_finds_it():
    p2p = FlakyP2P(failures=4, error="routing: not found")
    group, mm, led = form(p2p)
    assert group.leader == LOW and p2p.calls == 5, "joined the lowest candidate once it became reachable"
    assert led == [] and LOW not in mm._failed.get(5, set())


def test_a_candidate_that_refuses_the_dial_is_passed_over_at_once():
    p2p = FlakyP2P(failures=1, error="failed to dial: dial tcp4 127.0.0.1:4001: connect: connection refused")
    started = time.monotonic()
    group, mm, led = form(p2p)
    assert p2p.calls == 1 and LOW in mm._failed[5], "the dead candidate was asked once"
    assert group.leader == ME and led and led[0] - started < 0.5, "the next candidate (here: us) was tried at once"


def test_patience_for_an_unroutable_candidate_is_bounded():
    p2p = FlakyP2P(failures=10**6, error="routing: not found")
    started = time.monotonic()
    group, mm, led = form(p2p, gather_timeout=0.2)
    assert LOW in mm._failed[5] and group.leader == ME
    assert ROUTE_PATIENCE <= led[0] - started < ROUTE_PATIENCE + 2.0


def test_a_peer_that_averaged_with_another_passes_an_unroutable_candidate_over_at_once():
    group, mm, _ = form(FlakyP2P(failures=0, error=""))
    assert len(group.members) == 2, "first a group of two"
    p2p = FlakyP2P(failures=1, error="routing: not found")
    started = time.monotonic()
    group, mm, led = form(p2p, mm=mm)
    assert p2p.calls == 1 and LOW in mm._failed[5], "asked once: our p2pd can route to the swarm, the id exists nowhere"
    assert group.leader == ME and led[0] - started < 0.5


def test_the_patience_is_spent_once_in_a_peers_life():
    group, mm, led = form(FlakyP2P(failures=10**6, error="routing: not found"), gather_timeout=0.2)
    assert group.leader == ME
    p2p = FlakyP2P(failures=10**6, error="routing: not found")
    started = time.monotonic()
    group, mm, led = form(p2p, mm=mm)
    assert p2p.calls == 1 and group.leader == ME and led[0] - started < 0.5, "a second fake id costs nothing"


def test_which_errors_are_unroutable():
    assert unroutable(P2PDaemonError("routing: not found"))
    assert not unroutable(P2PDaemonError("failed to dial: connection refused"))
    assert not unroutable(asyncio.TimeoutError())


def test_which_errors_are_failed_dials():
    """p2pd's words for a peer that cannot be dialed (a dead peer's port refuses; the retry meets the dial backoff), as
    seen on loopback: the all-reduce takes such a reducer for gone at once (swarm.averaging.allreduce._unreachable)."""
    refused = ("Connect failed. msg=failed to dial: failed to dial 12D3KooWLX6G: all dials failed\n"
               "  * [/ip4/127.0.0.1/tcp/34713] dial tcp4 127.0.0.1:34713: connect: connection refused")
    backoff = "Connect failed. msg=failed to dial: failed to dial 12D3KooWLX6G: all dials failed\n  * [/ip4/127.0.0.1/tcp/34713] dial backoff"
    assert dial_failed(ControlFailure(refused)) and dial_failed(ControlFailure(backoff))
    assert not dial_failed(P2PDaemonError("routing: not found"))
    assert not dial_failed(P2PHandlerError("the reducer's handler failed: failed to dial"))   # the remote's words, not ours
    assert not dial_failed(asyncio.TimeoutError()) and not dial_failed(ConnectionResetError())
