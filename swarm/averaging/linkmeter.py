"""What this machine's network interfaces carried during a round, to time a member's upload by its link.

A member cannot tell its upload rate from when the transport takes its messages while the transport still
has room: about a megabyte per stream goes into socket and p2pd buffers at once, and a round with many
members has many streams of less than that (on the emulated dedloc-albert, 17 streams of 0.5 MB per
trainer). The bound from acknowledgements then says how long the round took, not how fast the link is,
and the LP, fed those figures, gave the auxiliary peers nearly the whole vector. The interface counters of
/proc/net/dev (this network namespace's, loopback left out) count what actually left, so a round that
keeps the link busy for a while shows its rate whatever the buffers hold.

`LinkMeter` samples them while a round runs; `rates()` turns the samples into the best sustained rates,
scaled to the round's payload (the counters also hold headers and any other traffic of the machine), or
None where the counters did not see the round's traffic (loopback, a machine without /proc).
"""
from __future__ import annotations

import asyncio
import time

from swarm.averaging.balancing import sustained_rate

PROC_NET_DEV = "/proc/net/dev"
SAMPLE_PERIOD = 0.02
# interfaces whose bytes are not this machine's traffic: loopback, and ifb (the mirror that ingress shaping uses)
_SKIP = ("lo", "ifb")


def read_counters(path: str = PROC_NET_DEV) -> tuple[int, int] | None:
    """(received, transmitted) bytes over this namespace's interfaces other than loopback; None if unreadable."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return None
    rx = tx = 0
    try:
        for line in lines:
            name, _, rest = line.partition(":")
            if name.strip().startswith(_SKIP):
                continue
            fields = rest.split()
            rx += int(fields[0])
            tx += int(fields[8])
    except (IndexError, ValueError):
        return None
    return rx, tx


class LinkMeter:
    """Samples the interface counters every SAMPLE_PERIOD seconds between start() and stop()."""

    def __init__(self, period: float = SAMPLE_PERIOD, path: str = PROC_NET_DEV):
        self.period, self.path = period, path
        self.tx_log: list[tuple[float, int]] = []  # (seconds since start, bytes since the previous sample)
        self.rx_log: list[tuple[float, int]] = []
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._sample())

    async def stop(self) -> None:
        """End the sampling task (cancelled and awaited)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _sample(self) -> None:
        start = time.monotonic()
        last = read_counters(self.path)
        if last is None:
            return
        while True:
            await asyncio.sleep(self.period)
            now = read_counters(self.path)
            if now is None:
                return
            t = time.monotonic() - start
            self.rx_log.append((t, now[0] - last[0]))
            self.tx_log.append((t, now[1] - last[1]))
            last = now

    def rates(self, payload_sent: int, payload_received: int) -> tuple[float | None, float | None]:
        """Upload and download rates (payload bytes/s) the links sustained, or None where they did not carry the
        round: less than half the payload went through the counted interfaces (loopback traffic, say)."""
        return _rate(self.tx_log, payload_sent), _rate(self.rx_log, payload_received)


def _rate(log: list[tuple[float, int]], payload: int) -> float | None:
    carried = sum(n for _, n in log)
    if payload <= 0 or carried < payload / 2:
        return None
    best = sustained_rate(log)
    return best * min(1.0, payload / carried) if best else None
