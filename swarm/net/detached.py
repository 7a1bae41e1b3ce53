"""DHT calls that a caller's timeout does not cancel.

Cancelling a hivemind DHT read or store under way leaves its traversal's helper tasks pending
(hivemind/dht/traverse.py waits on search_finished_event), and the garbage collector then destroys them: 30-180
"Task was destroyed but it is pending!" lines per peer in 5 minutes of emulated hybrid, one burst after each
"progress refresh failed: TimeoutError". So a call runs as its own task, and a caller that stops waiting leaves it
to end by the DHT's own timeouts.

A caller never waits on a call begun more than `join_within` seconds before it: a read begun while a link was cut
may hang long after the link came back, and a peer that waited on it saw the swarm seconds late (and stepped
alone meanwhile: tests/chaos/test_network_cut.py). It starts a fresh call beside the old one instead. At most
`limit` calls are under way; beyond that the oldest is cancelled (its destroyed tasks are the lesser harm than
calls without bound).
"""
from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class DetachedCalls(Generic[T]):
    def __init__(self, call: Callable[[], Awaitable[T]], *, join_within: float, limit: int = 3, name: str = "dht-call"):
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self._call, self.join_within, self.limit, self.name = call, join_within, limit, name
        self._under_way: list[tuple[float, asyncio.Future[T]]] = []   # (started, task), oldest first

    def _start(self) -> asyncio.Future[T]:
        self._under_way = [(t, task) for t, task in self._under_way if not task.done()]
        while len(self._under_way) >= self.limit:
            self._under_way.pop(0)[1].cancel()
        task = asyncio.ensure_future(self._call())
        if isinstance(task, asyncio.Task):
            task.set_name(self.name)
        self._under_way.append((time.monotonic(), task))
        return task

    def _joinable(self) -> asyncio.Future[T] | None:
        now = time.monotonic()
        for started, task in reversed(self._under_way):
            if not task.done() and now - started <= self.join_within:
                return task
        return None

    async def __call__(self) -> T:
        """The outcome of a call begun at most `join_within` seconds ago (this one's own if none is). A caller's
        cancellation (its timeout) stops its wait, not the call (and asyncio.shield marks an abandoned call's failure
        as retrieved: the loop does not log it)."""
        task = self._joinable() or self._start()
        return await asyncio.shield(task)

    @property
    def under_way(self) -> int:
        return sum(1 for _, task in self._under_way if not task.done())

    def cancel(self) -> None:
        """When the owner stops: end every call under way."""
        for _, task in self._under_way:
            task.cancel()
        self._under_way.clear()
