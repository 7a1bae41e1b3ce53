"""Did this process stop answering during a round? A member whose event loop stood still (SIGSTOP, a debugger, a
swapped-out machine) could not answer a backup that asked it what it held (swarm.averaging.failover): the backup
then decided without it, maybe averaging a part again that this member holds, or reduces, as the reducer sent it.
Such a member must not step with what it holds: its round fails and it catches up like any failed member.

`StallWatch` ticks every PERIOD seconds while a round runs; `longest()` is the longest the loop went without a tick,
the stretch still open at the moment of the call included (a process resumed from SIGSTOP may finish its round in
the very loop iteration that wakes it, before the watch ticks again).
"""
from __future__ import annotations

import asyncio
import time

__all__ = ["PERIOD", "StallWatch"]

PERIOD = 0.25


class StallWatch:
    """Measures the event loop's longest stand-still between start() and stop()."""

    def __init__(self, period: float = PERIOD):
        self.period = period
        self._longest = 0.0
        self._last = time.monotonic()
        self._task: asyncio.Task | None = None

    def start(self, since: float | None = None) -> None:
        """Tick from now on; `since` (a time.monotonic() reading): count the stretch from then to the first tick too."""
        self._last = time.monotonic() if since is None else min(since, time.monotonic())
        self._task = asyncio.create_task(self._tick(), name="stall-watch")

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.period)
            now = time.monotonic()
            self._longest = max(self._longest, now - self._last - self.period)
            self._last = now

    def longest(self) -> float:
        """Seconds the loop stood still beyond a tick's period, the stretch since the last tick included."""
        return max(self._longest, time.monotonic() - self._last - self.period)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
