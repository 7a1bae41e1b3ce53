"""A reducer's wait for its members' last words (AllReduceRound._await_deliveries) ends on the news itself: the last
word that completes the set, or a gone member's grace running out; never on a poll's period."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from swarm.averaging import allreduce
from swarm.averaging.allreduce import AllReduceRound, _all_or_none
from swarm.proto import swarm_pb2

pytestmark = pytest.mark.timeout(60)


def waiting_reducer(members: int, grace: float = 30.0) -> AllReduceRound:
    """The delivery-confirmation state of reducer 0 of a round of `members`, every other member still receiving."""
    r = AllReduceRound.__new__(AllReduceRound)
    r.group = SimpleNamespace(needs=lambda i: True, round_id=b"r" * 16, peer_ids=[f"peer{i}" for i in range(members)])
    r._expected = set(range(1, members))
    r._delivered, r._gave_up, r._gone, r._open = set(), set(), {}, {}
    r._handed_over = False
    r._delivery_news = asyncio.Event()
    r._gone_grace = lambda: grace  # type: ignore[method-assign]
    return r


def test_the_last_word_that_completes_the_set_ends_the_wait_at_once(monkeypatch):
    monkeypatch.setattr(allreduce, "DELIVERY_RECHECK", 3600.0)   # only the news can end it within the test

    async def main():
        r = waiting_reducer(4)
        for sender in (1, 2, 3):
            r._opened(sender)
        wait = asyncio.create_task(r._await_deliveries())
        for sender in (1, 2):
            r._last_word(sender, swarm_pb2.PartChunk(received=True))
            await asyncio.sleep(0.01)
            assert not wait.done()   # member 3 may still be receiving
        r._last_word(3, swarm_pb2.PartChunk(received=True))
        await asyncio.wait_for(wait, 5)

    asyncio.run(main())


def test_a_member_gone_for_the_grace_ends_the_wait_without_news(monkeypatch):
    monkeypatch.setattr(allreduce, "DELIVERY_RECHECK", 3600.0)

    async def main():
        r = waiting_reducer(3, grace=0.3)
        for sender in (1, 2):
            r._opened(sender)
        r._last_word(1, swarm_pb2.PartChunk(received=True))
        r._closed(1)
        r._closed(2)   # member 2's stream ended without its last word: it may open another within the grace
        started = time.monotonic()
        await asyncio.wait_for(r._await_deliveries(), 5)
        assert time.monotonic() - started >= 0.25   # it waited for the grace, not less

    asyncio.run(main())


def test_a_member_that_comes_back_within_the_grace_is_waited_for(monkeypatch):
    monkeypatch.setattr(allreduce, "DELIVERY_RECHECK", 3600.0)

    async def main():
        r = waiting_reducer(2, grace=0.3)
        r._opened(1)
        r._closed(1)
        wait = asyncio.create_task(r._await_deliveries())
        await asyncio.sleep(0.05)
        r._opened(1)   # its fetch: a new stream
        await asyncio.sleep(0.6)
        assert not wait.done()   # no longer gone: it is receiving my part again
        r._last_word(1, swarm_pb2.PartChunk(received=True))
        await asyncio.wait_for(wait, 5)

    asyncio.run(main())


def test_side_by_side_waits_end_together_and_a_failure_cancels_the_other():
    async def main():
        done = []

        async def finishes(name: str, after: float):
            await asyncio.sleep(after)
            done.append(name)

        await _all_or_none([finishes("a", 0.02), finishes("b", 0.05)])
        assert sorted(done) == ["a", "b"]

        other = asyncio.Event()

        async def fails():
            raise RuntimeError("compare broke")

        async def forever():
            try:
                await asyncio.sleep(3600)
            finally:
                other.set()

        with pytest.raises(RuntimeError, match="compare broke"):
            await _all_or_none([fails(), forever()])
        assert other.is_set()   # cancelled and awaited before the error went on

    asyncio.run(main())
