"""DHT calls that a caller's timeout does not cancel (swarm.net.detached), and the progress tracker's use of them:
a read abandoned by its caller runs to its end, a caller never waits on a read older than join_within, at most
`limit` run at once, and a read that ends after a newer one does not overwrite the newer view."""
from __future__ import annotations

import asyncio

import pytest

from swarm.averaging.progress import ProgressTracker
from swarm.net.detached import DetachedCalls
from swarm.net.records import ProgressRecord

pytestmark = pytest.mark.timeout(30)


def test_a_timed_out_caller_leaves_the_call_running_and_a_later_caller_joins_it():
    async def main():
        started, release = [], asyncio.Event()

        async def call():
            started.append(1)
            await release.wait()
            return len(started)

        calls = DetachedCalls(call, join_within=5.0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(calls(), 0.05)
        assert calls.under_way == 1          # not cancelled by the caller's timeout
        later = asyncio.ensure_future(calls())
        await asyncio.sleep(0.05)
        assert len(started) == 1             # joined the call under way, none beside it
        release.set()
        assert await asyncio.wait_for(later, 2) == 1
        assert calls.under_way == 0

    asyncio.run(main())


def test_a_caller_starts_a_fresh_call_beside_one_older_than_join_within_and_the_oldest_beyond_the_limit_is_cancelled():
    async def main():
        tasks, release = [], asyncio.Event()

        async def call():
            tasks.append(asyncio.current_task())
            await release.wait()
            return len(tasks)

        calls = DetachedCalls(call, join_within=0.0, limit=2)
        for _ in range(3):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(calls(), 0.02)
        assert len(tasks) == 3                                  # never joined an old call
        await asyncio.sleep(0)
        assert tasks[0].cancelled() and calls.under_way == 2    # the limit: the oldest went
        release.set()
        await asyncio.sleep(0.05)
        assert not tasks[1].cancelled() and not tasks[2].cancelled() and calls.under_way == 0
        calls.cancel()

    asyncio.run(main())


class SlowNode:
    """Reads that end when the test says, each with the records it was given."""

    run_id = "run"
    peer_id = "me"

    def __init__(self):
        self.pending: list[tuple[asyncio.Event, list]] = []

    async def store_record(self, key, record, ttl, *, direct=False, blind=False, replicas=False, timeout=None):
        return True

    async def fetch_records(self, key, model, **kwargs):
        done, box = asyncio.Event(), []
        self.pending.append((done, box))
        await done.wait()
        return box


def _record(peer: str, epoch: int) -> ProgressRecord:
    return ProgressRecord(peer_id=peer, epoch=epoch, samples=0, samples_per_second=1.0, role="trainer", upload_bps=1.0,
                          download_bps=1.0, time=0.0, training=True)


def test_a_read_that_ends_after_a_newer_one_leaves_the_newer_view():
    async def main():
        node = SlowNode()
        t = ProgressTracker(node, 100, "trainer", lambda: (1.0, 1.0))
        old = asyncio.ensure_future(t.refresh())
        await asyncio.sleep(0.01)
        t._reads.join_within = 0.0            # the next refresh starts its own read (as after READ_JOIN_WITHIN)
        new = asyncio.ensure_future(t.refresh())
        await asyncio.sleep(0.01)
        assert len(node.pending) == 2
        (old_done, old_box), (new_done, new_box) = node.pending
        new_box += [_record("a", 7), _record("b", 7)]
        new_done.set()
        assert (await asyncio.wait_for(new, 2)).epoch == 7
        old_box += [_record("a", 3), _record("b", 3)]
        old_done.set()
        await asyncio.wait_for(old, 2)
        assert t.view.epoch == 7

    asyncio.run(main())
