"""swarm.net.clock: NTP-style offset samples, a median that one liar cannot move, and hivemind's DHT on the swarm's clock."""
from __future__ import annotations

import asyncio
import time

import pytest
from hivemind.dht import node as dht_node
from hivemind.dht import protocol as dht_protocol
from hivemind.utils import TimedStorage

from swarm.net import clock


@pytest.fixture
def restore_clock():
    before = clock.offset()
    yield
    clock.install(before)


def test_a_sample_is_the_remote_time_minus_the_midpoint_of_the_exchange():
    assert clock.sample_offset(sent=1000.0, remote=1300.5, round_trip=1.0) == pytest.approx(300.0)
    assert clock.sample_offset(sent=1000.0, remote=700.0, round_trip=0.0) == pytest.approx(-300.0)


def test_the_median_ignores_silent_peers_and_one_liar():
    assert clock.median_offset([None, None]) is None
    assert clock.median_offset([]) is None
    assert clock.median_offset([300.1, None, 299.9, -86400.0]) == pytest.approx(300.0, abs=0.2)
    assert clock.median_offset([0.01, 0.02, 3600.0]) == pytest.approx(0.02)


def test_installed_offset_moves_hivemind_dht_time(restore_clock):
    clock.install(300.0)
    assert clock.now() == pytest.approx(time.time() + 300.0, abs=0.5)
    # the DHT's modules read the swarm's clock: ping validation, storage expiry, refresh timers
    assert dht_node.get_dht_time() == pytest.approx(time.time() + 300.0, abs=0.5)
    assert dht_protocol.get_dht_time() == pytest.approx(time.time() + 300.0, abs=0.5)
    storage = TimedStorage()
    assert not storage.store("stale", b"x", time.time() + 60)         # expired on the swarm's clock
    assert storage.store("fresh", b"x", clock.now() + 60)
    clock.install(0.0)
    assert dht_node.get_dht_time() == pytest.approx(time.time(), abs=0.5)


def test_small_offsets_are_left_alone(restore_clock, monkeypatch):
    async def measured(*_args, **_kwargs):
        return [0.3, 0.4, None]

    monkeypatch.setattr(clock, "measure", measured)
    assert asyncio.run(clock.synchronize(None, [])) == pytest.approx(0.35)  # type: ignore[arg-type]
    assert clock.offset() == 0.0


def test_a_skewed_host_adopts_the_swarm_clock(restore_clock, monkeypatch):
    async def measured(*_args, **_kwargs):
        return [-299.8, -300.2, None]  # this host runs 5 min ahead of its peers

    monkeypatch.setattr(clock, "measure", measured)
    assert asyncio.run(clock.synchronize(None, [])) == pytest.approx(-300.0)  # type: ignore[arg-type]
    assert clock.offset() == pytest.approx(-300.0)
    assert dht_node.get_dht_time() == pytest.approx(time.time() - 300.0, abs=0.5)


def test_a_skewed_host_on_the_swarm_clock_signs_messages_others_accept(restore_clock, monkeypatch):
    """Invite-only runs sign every message with a time that peers check within MAX_CLOCK_SKEW: the swarm's time."""
    from hivemind.utils.crypto import RSAPrivateKey

    from tests.unit.swarm.test_auth import ME, join_request, member, with_token

    keys = {name: RSAPrivateKey() for name in ("organizer", "alice", "bob")}
    bob = with_token(member(keys, "bob"))
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 300)   # alice's host runs 5 min ahead
    alice = with_token(member(keys, "alice"))
    skewed, corrected = join_request(), join_request()
    alice.sign_message(skewed, ME)
    clock.install(-300.0)                                      # what swarm.net.clock.synchronize measures for it
    alice.sign_message(corrected, ME)
    monkeypatch.setattr(time, "time", real)
    clock.install(0.0)
    assert bob.check_message(skewed, ME) == "stale request (clocks differ, or a replay)"
    assert bob.check_message(corrected, ME) is None
