"""PhaseStats: a member's upload estimate from when the transport took its messages.

The transport takes about TRANSPORT_BUFFER_BYTES per stream at once; a reducer answering many senders has that
much buffered on every stream, and counting those instants as link time once made an auxiliary peer of the
emulated dedloc-albert look 10x faster than its link (the next round's LP then gave it a part it needed 20 s
to serve).
"""
from __future__ import annotations

from swarm.averaging.balancing import sustained_rate
from swarm.averaging.phase_stats import TRANSPORT_BUFFER_BYTES, PhaseStats

CHUNK = 256 * 1024
RATE = 2.5e6  # bytes/s: 20 Mbit/s


def _reducer_answering(streams: int, per_stream: int) -> tuple[PhaseStats, list[tuple[float, int]]]:
    """Each stream's first megabyte is taken at once; then the link drains the streams in turn at RATE."""
    stats = PhaseStats(t0=0.0)
    everything: list[tuple[float, int]] = []
    carried = [0] * streams
    chunks = per_stream // CHUNK
    t = 0.0
    for k in range(chunks):
        for s in range(streams):
            if carried[s] < TRANSPORT_BUFFER_BYTES:
                t += 1e-4            # swallowed by the buffers
            else:
                t += CHUNK / RATE    # waits for the link
            stats.taken(stats.output_log, carried[s], CHUNK, at=t)
            everything.append((t, CHUNK))
            carried[s] += CHUNK
            stats.bytes_sent += CHUNK
    return stats, everything


def test_per_stream_buffers_do_not_inflate_a_reducer_s_upload_estimate():
    stats, everything = _reducer_answering(streams=16, per_stream=13 * CHUNK)
    counted_all = sustained_rate(sorted(everything))
    assert counted_all > 3 * RATE, "the scenario must be one where counting the buffered messages misleads"
    stats.finish(seconds=30.0)
    estimate = stats.bytes_sent / stats.send_seconds
    assert 0.8 * RATE < estimate < 1.25 * RATE, f"{estimate / 1e6:.2f} MB/s for a {RATE / 1e6:.2f} MB/s link"


def test_streams_within_their_buffers_tell_nothing_and_the_round_time_stands():
    stats, _ = _reducer_answering(streams=16, per_stream=3 * CHUNK)  # every message fits the buffers
    assert stats.output_log == []
    stats.finish(seconds=7.0)
    assert stats.send_seconds == 7.0
