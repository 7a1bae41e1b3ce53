"""The swarm's wall clock: what the DHT's absolute expiration times are measured against.

hivemind's DHT stamps every record with an absolute expiration time (`get_dht_time()`, the host's
`time.time`), and every node judges it with its own clock. Measured with hosts 5 min apart
(tests/chaos/test_process_faults.py): hivemind's bootstrap refuses a peer more than 3 s off its initial
peers, so a volunteer whose laptop clock is off cannot join, and a bootstrap peer whose clock is off
locks everyone else out. Were such a peer let in as is, one 5 min ahead would see every other record
as expired (blind), one 5 min behind would store records that have expired on arrival (invisible),
and a dead peer that ran ahead would linger in everyone's view for 5 min.

The fix. Every node answers `swarm.net.clock` with its swarm time. A joining node asks its initial peers
before it joins the DHT, NTP-style: each sample is the peer's time minus the midpoint of our request,
and the median over the peers wins (one skewed or lying peer among several does not move it). When
the offset exceeds TOLERANCE, this process's DHT runs on `time.time() + offset` from then on. The swarm
thus keeps the clock of the peers it grew from, whatever each host's clock says, and a skewed peer
trains as a full member. Nothing else in the engine depends on wall time: deadlines, timeouts and
progress extrapolation use time.monotonic().

The offset is per process (one host, one clock): `install` points hivemind's `get_dht_time` at `now`.
"""
from __future__ import annotations

import asyncio
import logging
import statistics
import sys
import time
from typing import Iterable, Sequence

from hivemind.p2p import P2P, P2PContext, PeerID
from hivemind.proto import dht_pb2
from hivemind.utils import timed_storage

from swarm.errors import describe

logger = logging.getLogger(__name__)

CLOCK_HANDLER = "swarm.net.clock"
TOLERANCE = 1.0   # seconds; hivemind's bootstrap refuses more than 3
_HIVEMIND_CLOCK = timed_storage.get_dht_time   # what hivemind's modules bound at import (time.time)
_offset = 0.0


def now() -> float:
    """The swarm's time: this host's wall clock corrected by the measured offset."""
    return time.time() + _offset


def offset() -> float:
    return _offset


def install(new_offset: float) -> None:
    """Run this process's DHT (and everything else that asks `now()`) `new_offset` seconds off the host's clock."""
    global _offset
    _offset = float(new_offset)
    for name, module in list(sys.modules.items()):
        if (name == "hivemind" or name.startswith("hivemind.")) and getattr(module, "get_dht_time", None) is _HIVEMIND_CLOCK:
            module.get_dht_time = now  # type: ignore[attr-defined]


def sample_offset(sent: float, remote: float, round_trip: float) -> float:
    """One NTP-style sample: the remote's time minus our time at the midpoint of the exchange."""
    return remote - (sent + round_trip / 2)


def median_offset(samples: Iterable[float | None]) -> float | None:
    values = [s for s in samples if s is not None]
    return statistics.median(values) if values else None


async def serve(p2p: P2P) -> None:
    """Answer `swarm.net.clock` requests with this node's swarm time."""

    async def answer(_: dht_pb2.PingRequest, context: P2PContext) -> dht_pb2.PingResponse:
        return dht_pb2.PingResponse(dht_time=now())

    await p2p.add_protobuf_handler(CLOCK_HANDLER, answer, dht_pb2.PingRequest)


async def measure(p2p: P2P, peers: Sequence[PeerID], timeout: float = 5.0) -> list[float | None]:
    """One offset sample per peer (None for a peer that did not answer in time)."""

    async def one(peer: PeerID) -> float | None:
        sent, started = now(), time.monotonic()
        try:
            reply = await asyncio.wait_for(p2p.call_protobuf_handler(peer, CLOCK_HANDLER, dht_pb2.PingRequest(), dht_pb2.PingResponse), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            logger.debug("no clock sample from %s: %s", str(peer)[-8:], describe(e))
            return None
        if not reply.dht_time:
            return None
        return sample_offset(sent, reply.dht_time, time.monotonic() - started)

    return list(await asyncio.gather(*(one(p) for p in peers)))


async def synchronize(p2p: P2P, peers: Sequence[PeerID], timeout: float = 5.0) -> float | None:
    """Measure this node's offset to `peers` and, beyond TOLERANCE, adopt their clock. Returns the measured offset."""
    measured = median_offset(await measure(p2p, peers, timeout))
    if measured is None:
        return None
    if abs(measured) > TOLERANCE:
        logger.warning("this host's clock is %+.1fs off the swarm's: this peer runs on the swarm's clock", -measured)
        install(_offset + measured)
    return measured
