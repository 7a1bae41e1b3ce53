"""StallWatch measures how long the event loop stood still, the stretch still open when asked included."""
from __future__ import annotations

import asyncio
import time

import pytest

from swarm.averaging.stall_watch import StallWatch

pytestmark = pytest.mark.timeout(30)


def test_a_loop_that_keeps_running_shows_no_stall():
    async def main():
        watch = StallWatch(period=0.05)
        watch.start()
        await asyncio.sleep(0.5)
        longest = watch.longest()
        await watch.stop()
        return longest

    assert asyncio.run(main()) < 0.2


def test_a_blocked_loop_is_measured_after_the_next_tick_and_before_it():
    async def main():
        watch = StallWatch(period=0.05)
        watch.start()
        await asyncio.sleep(0.1)
        time.sleep(0.6)              # the loop stands still (as under SIGSTOP)
        before_tick = watch.longest()   # asked in the same iteration that resumes: no tick since
        await asyncio.sleep(0.2)
        after_tick = watch.longest()
        await watch.stop()
        return before_tick, after_tick

    before_tick, after_tick = asyncio.run(main())
    assert before_tick >= 0.5 and after_tick >= 0.5


def test_a_stretch_before_the_watch_started_counts_when_asked_to():
    """A round's watch counts from the round's start: a process stopped between forming its round and running it."""
    async def main():
        watch = StallWatch(period=0.05)
        watch.start(since=time.monotonic() - 1.0)
        await asyncio.sleep(0.2)
        counted = watch.longest()
        await watch.stop()
        plain = StallWatch(period=0.05)
        plain.start()
        await asyncio.sleep(0.2)
        fresh = plain.longest()
        await plain.stop()
        return counted, fresh

    counted, fresh = asyncio.run(main())
    assert counted >= 0.9 and fresh < 0.2
